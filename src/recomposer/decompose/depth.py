"""Depth from an image: one interface, ``DepthEstimator``, and the backends behind it.

- ``TransformersDepth``: a transformers depth-estimation model saved in a local directory
  (DPT / MiDaS-style, Depth Anything relative or metric, GLPN).
- the bundled shapes-world depth predictor, once the bundled-model issue ships it
  (``bundled_depth_estimator`` is the seam; it returns None until then).
With neither, ``load_depth_estimator`` raises ``no_depth_backend()``: a message saying how to provide
one. A depth map is never made up.
"""

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from ..conditions.depth import Depth
from ..errors import InvalidParameter, ModelError, NonFiniteResult, RecomposerError
from ..models.local import check_model_dir, load_image_processor, load_pretrained, read_model_type


@runtime_checkable
class DepthEstimator(Protocol):
    def __call__(self, image: Image.Image) -> Depth:
        """An RGB image -> its Depth, the same size (0 = nearest, 1 = farthest)."""
        ...


def no_depth_backend() -> RecomposerError:
    """The error for "depth was asked for but nothing can estimate it" (raise it); decompose's own options."""
    return RecomposerError("depth", "no depth backend: pass --depth-model DIR (a transformers depth-estimation "
                                    "model, e.g. DPT or Depth Anything, saved locally) or --depth FILE (a depth map)")


def bundled_depth_estimator() -> DepthEstimator | None:
    """The shapes-world depth predictor shipped in the package; None until the bundled-model issue trains it."""
    return None


def load_depth_estimator(path: str | Path | None = None, device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32) -> DepthEstimator:
    """``--depth-model DIR`` if given, else the bundled predictor if present, else ``no_depth_backend()``."""
    if path is not None:
        return TransformersDepth(path, device, dtype)
    bundled = bundled_depth_estimator()
    if bundled is None:
        raise no_depth_backend()
    return bundled


# model_type -> what its predicted_depth holds (see ``predicted_quantity``). Others are refused:
# ZoeDepth (reflect padding to undo) and Depth Pro (field-of-view post-processing) need steps we do
# not reproduce; Prompt Depth Anything needs a lidar prompt.
SUPPORTED = ("dpt", "depth_anything", "glpn")
QUANTITIES = ("disparity", "distance")


def predicted_quantity(model_type: str, config) -> str:
    """What a supported model's ``predicted_depth`` holds: 'disparity' or 'distance'.

    - DPT: MiDaS-trained DPT (ViT, hybrid, BEiT, Swin backbones) predicts relative inverse depth;
      facebook's DPT heads on a DINOv2 backbone (the *-nyu / *-kitti checkpoints) predict metres.
    - Depth Anything: relative inverse depth, or metres when config.depth_estimation_type is 'metric'.
    - GLPN: metres.
    """
    if model_type == "glpn":
        return "distance"
    if model_type == "depth_anything":
        return "distance" if getattr(config, "depth_estimation_type", "relative") == "metric" else "disparity"
    backbone = getattr(config, "backbone_config", None)
    return "distance" if getattr(backbone, "model_type", None) == "dinov2" else "disparity"


class TransformersDepth:
    """A transformers depth-estimation model from a local directory (``AutoModelForDepthEstimation``
    + its image processor, PIL backend). Output is resized to the input (bicubic, as transformers'
    own post-processing does) and normalised by ``Depth.from_disparity`` / ``from_distance``.
    ``predicts`` overrides ``predicted_quantity``'s guess for checkpoints it gets wrong."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 predicts: str | None = None):
        from transformers import AutoModelForDepthEstimation

        field = "depth-model"
        if predicts is not None and predicts not in QUANTITIES:
            raise InvalidParameter("predicts", "None (guess from the config), 'disparity' or 'distance'", predicts)
        self.root = check_model_dir(path, field)
        self.model_type = read_model_type(self.root, field)
        if self.model_type not in SUPPORTED:
            raise ModelError(field, f"{self.root} is a {self.model_type!r} model; supported depth models: "
                                    + ", ".join(SUPPORTED))
        self.processor = load_image_processor(self.root, field)
        if getattr(self.processor, "do_pad", False):
            raise ModelError(field, f"{self.root}: image processors that pad (do_pad) are not supported; "
                                    "set do_pad to false in its preprocessor config")
        self.model = load_pretrained(AutoModelForDepthEstimation, self.root, field, device, dtype)
        self.predicts = predicts or predicted_quantity(self.model_type, self.model.config)

    def describe(self) -> dict:
        return {"backend": "transformers", "path": str(self.root), "model_type": self.model_type,
                "predicts": self.predicts}

    @torch.inference_mode()
    def __call__(self, image: Image.Image) -> Depth:
        check_rgb(image)
        inputs = self.processor(images=image, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.model.device, self.model.dtype)  # (1, 3, h', w')
        predicted = self.model(pixel_values=pixels).predicted_depth.float()  # (1, h, w)
        if not bool(torch.isfinite(predicted).all()):
            raise NonFiniteResult("depth", "the depth model produced NaN or inf (fp16 overflow? try --dtype fp32)")
        full = torch.nn.functional.interpolate(predicted[:, None], size=(image.height, image.width),
                                               mode="bicubic", align_corners=False)[0, 0]  # (H, W)
        values = full.cpu().numpy()
        return Depth.from_distance(values) if self.predicts == "distance" else Depth.from_disparity(values)


def check_rgb(image: object) -> None:
    if not isinstance(image, Image.Image) or image.mode != "RGB":
        raise InvalidParameter("image", "an RGB PIL image (io.images.open_image makes one)",
                               getattr(image, "mode", type(image).__name__))
