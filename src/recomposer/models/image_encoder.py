"""The bundled "semantics and style" image encoder: a small CNN aligned with caption embeddings, CLIP-style.

Architecture (``WorldImageEncoder``): the image, resized so its shorter side is 64 px and centre-
cropped to 64 × 64, in [-1, 1] ->
    4 × [3×3 conv stride 2, GroupNorm, SiLU, 3×3 conv, GroupNorm, SiLU]   64 -> 4 px, widths 32..256
    global mean pool -> linear -> e ∈ R^256,  e / |e|                    (the embedding, unit length)
Trained (training/encoder.py) with CLIP's symmetric InfoNCE loss (Radford et al. 2021) against the
frozen all-MiniLM-L6-v2 sentence embedding of the scene's caption through a trained linear head, so
the embedding carries what captions say: shapes, colours, styles, counts, relations, background.
"""

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..conditions.image_embedding import ImageEmbedding
from ..errors import NonFiniteResult

SIZE = 64  # input side in pixels
DIM = 256  # embedding width
WIDTHS = (32, 64, 128, 256)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU())


class WorldImageEncoder(nn.Module):
    """Images (B, 3, 64, 64) in [-1, 1] -> unit embeddings (B, 256); ``encode`` takes a PIL image."""

    def __init__(self):
        super().__init__()
        widths = (3, *WIDTHS)
        self.blocks = nn.Sequential(*(_block(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.head = nn.Linear(WIDTHS[-1], DIM)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.blocks(images).mean(dim=(2, 3))  # (B, 256)
        return nn.functional.normalize(self.head(features), dim=1)


def to_input(image: Image.Image) -> torch.Tensor:
    """A PIL image -> (1, 3, 64, 64) in [-1, 1]: shorter side resized to 64 (bicubic), centre crop."""
    image = image.convert("RGB")
    w, h = image.size
    scale = SIZE / min(w, h)
    image = image.resize((max(SIZE, round(w * scale)), max(SIZE, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = image.size
    left, top = (w - SIZE) // 2, (h - SIZE) // 2
    pixels = np.asarray(image.crop((left, top, left + SIZE, top + SIZE)), np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1)[None] / 127.5 - 1.0


class BundledImageEncoder:
    """The ImageEncoder interface (decompose/embedding.py) around a trained WorldImageEncoder."""

    def __init__(self, model: WorldImageEncoder, identity: str):
        self.model, self.identity, self.dim = model.eval(), identity, DIM

    def describe(self) -> dict:
        return {"backend": "bundled", "identity": self.identity, "dim": self.dim}

    @torch.inference_mode()
    def __call__(self, image: Image.Image) -> ImageEmbedding:
        p = next(self.model.parameters())
        vector = self.model(to_input(image).to(p))[0].float().cpu().numpy()
        if not bool(np.isfinite(vector).all()):
            raise NonFiniteResult("image-encoder", "the image encoder produced NaN or inf")
        return ImageEmbedding(vector.astype(np.float32), self.identity)
