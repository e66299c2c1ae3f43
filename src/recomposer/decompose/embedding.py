"""Semantics and style: one image-encoder interface, ``ImageEncoder``, and its backends.

- ``ClipImageEncoder``: CLIP ViT image embeddings (``CLIPVisionModelWithProjection``) from a local
  directory, for real use; Composer (like unCLIP) uses CLIP ViT-L/14's projected image embedding.
- the bundled small encoder (models/image_encoder.py), trained on the shapes world: the default.
"""

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from ..conditions.image_embedding import ImageEmbedding
from ..errors import ModelError, NonFiniteResult
from ..models.local import (check_model_dir, load_image_processor, load_pretrained, read_model_type,
                            weights_sha256)
from .depth import check_rgb

PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's pixel statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@runtime_checkable
class ImageEncoder(Protocol):
    dim: int  # length of the vectors it makes
    identity: str  # who it is; stored in every ImageEmbedding it makes

    def __call__(self, image: Image.Image) -> ImageEmbedding:
        ...


def bundled_image_encoder(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ImageEncoder:
    """The small shapes-world encoder shipped in the package (models/bundled.py)."""
    from ..models.bundled import load_bundled_image_encoder

    return load_bundled_image_encoder(device, dtype)


def load_image_encoder(path: str | Path | None = None, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> ImageEncoder:
    """``--image-encoder DIR`` if given, else the bundled encoder."""
    if path is not None:
        return ClipImageEncoder(path, device, dtype)
    return bundled_image_encoder(device, dtype)


class ClipImageEncoder:
    """CLIP's projected image embedding (``image_embeds``, not normalised), shape (projection_dim,).

    The directory may hold a whole CLIP model (``CLIPModel``: the text half is ignored) or only its
    vision half with the projection (``CLIPVisionModelWithProjection``, e.g. an ``image_encoder/``
    folder). A vision model without the projection is refused (its weights would be missing). With
    no image processor config in the folder (common for ``image_encoder/`` folders), OpenAI CLIP's
    preprocessing at the model's own ``image_size`` is used: resize the shortest side, centre crop,
    normalise with CLIP's mean and std.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import CLIPVisionModelWithProjection

        field = "image-encoder"
        self.root = check_model_dir(path, field)
        model_type = read_model_type(self.root, field)
        if model_type not in ("clip", "clip_vision_model"):
            raise ModelError(field, f"{self.root} is a {model_type!r} model, not CLIP (clip or clip_vision_model)")
        model = load_pretrained(CLIPVisionModelWithProjection, self.root, field, device, torch.float32)
        self.identity = f"clip:{self.root.name}@{weights_sha256(model)[:12]}"  # of the weights as stored, any dtype
        self.model = model.to(dtype=dtype)
        self.dim = int(model.config.projection_dim)
        self.processor = clip_processor(self.root, int(model.config.image_size), field)

    def describe(self) -> dict:
        return {"backend": "transformers-clip", "path": str(self.root), "identity": self.identity, "dim": self.dim}

    @torch.inference_mode()
    def __call__(self, image: Image.Image) -> ImageEmbedding:
        check_rgb(image)
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"]  # (1, 3, S, S)
        embeds = self.model(pixel_values=pixels.to(self.model.device, self.model.dtype)).image_embeds  # (1, D)
        vector = embeds[0].float().cpu().numpy().astype(np.float32)
        if not bool(np.isfinite(vector).all()):
            raise NonFiniteResult("image-encoder", "the image encoder produced NaN or inf "
                                                   "(fp16 overflow? try --dtype fp32)")
        return ImageEmbedding(vector, self.identity)


def clip_processor(root: Path, side: int, field: str):
    """The folder's image processor, or OpenAI CLIP's preprocessing at ``side`` pixels where it has none."""
    if any((root / name).is_file() for name in PROCESSOR_FILES):
        return load_image_processor(root, field)
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                 image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def load_clip(path: str | Path, field: str = "clip"):
    """A whole local CLIP model (both towers, ``CLIPModel``) and its image processor, through the library door."""
    from transformers import CLIPModel

    root = check_model_dir(path, field)
    if read_model_type(root, field) != "clip":
        raise ModelError(field, f"{root} is not a whole CLIP model (model_type clip: both towers and projections)")
    model = load_pretrained(CLIPModel, root, field, "cpu", torch.float32).eval()
    return model, clip_processor(root, int(model.config.vision_config.image_size), field)
