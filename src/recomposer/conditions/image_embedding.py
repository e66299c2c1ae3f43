"""Image embedding: Composer's "semantics and style" representation, one vector per image.

In the paper it is the CLIP ViT-L/14 image embedding (as in unCLIP): the *projected* embedding,
not normalised. A vector only means something to a model trained with the same encoder, so the
value carries ``encoder``: who made it (e.g. ``clip:clip-vit-large-patch14@1a2b3c4d5e6f``, the
model directory's name and a prefix of the sha256 of its weights). Consumers compare it with
their own encoder's identity and refuse a mismatch.
"""

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidParameter
from .base import Condition

CELL = 8  # side of one entry's square in the picture, pixels
COLUMNS = 32  # entries per row in the picture


@dataclass(frozen=True, eq=False)
class ImageEmbedding(Condition):
    kind = "image_embedding"
    vector: np.ndarray  # (D,) float32, finite
    encoder: str  # identity of the encoder that made it

    def __post_init__(self) -> None:
        v = self.vector
        if not isinstance(v, np.ndarray) or v.dtype != np.float32:
            raise InvalidParameter("image_embedding.vector", "a float32 numpy array",
                                   getattr(v, "dtype", type(v).__name__))
        if v.ndim != 1 or v.shape[0] < 1:
            raise InvalidParameter("image_embedding.vector", "shape (D,) with D >= 1", v.shape)
        if not bool(np.isfinite(v).all()):
            raise InvalidParameter("image_embedding.vector", "finite values", "NaN or inf")
        if not isinstance(self.encoder, str) or not self.encoder.strip():
            raise InvalidParameter("image_embedding.encoder", "a non-empty string naming the encoder", self.encoder)
        v = v.copy()  # our own, read-only
        v.setflags(write=False)
        object.__setattr__(self, "vector", v)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ImageEmbedding) and self.encoder == other.encoder
                and np.array_equal(self.vector, other.vector))

    __hash__ = None

    @property
    def dim(self) -> int:
        return int(self.vector.shape[0])

    def meta(self) -> dict:
        return {"encoder": self.encoder, "dim": self.dim}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"vector": self.vector}

    @classmethod
    def from_saved(cls, meta: dict, arrays: dict) -> "ImageEmbedding":
        vector = np.array(arrays["vector"])
        if vector.ndim != 1 or meta["dim"] != vector.shape[0]:
            raise InvalidParameter("image_embedding.dim", f"the saved vector's shape {vector.shape}", meta["dim"])
        return cls(vector, meta["encoder"])

    def picture(self):
        """A heat strip: one CELL-square per entry, COLUMNS to a row; blue < 0 < red, white = 0,
        scaled by the largest magnitude; cells past the end are gray."""
        from PIL import Image

        rows = -(-self.dim // COLUMNS)
        scale = float(np.abs(self.vector).max()) or 1.0
        t = np.full(rows * COLUMNS, np.nan)
        t[: self.dim] = self.vector / scale  # in [-1, 1]
        pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
        rgb = np.stack([1 - neg, 1 - pos - neg, 1 - pos], axis=-1)  # white -> red (pos) or blue (neg)
        rgb[np.isnan(t)] = 0.5
        grid = np.rint(rgb.reshape(rows, COLUMNS, 3) * 255).astype(np.uint8)
        return Image.fromarray(grid).resize((COLUMNS * CELL, rows * CELL), Image.Resampling.NEAREST)
