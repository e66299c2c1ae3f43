"""Depth from an image: one interface, ``DepthEstimator``, and the backends behind it.

- ``TransformersDepth``: a transformers depth-estimation model saved in a local directory
  (DPT / MiDaS-style, Depth Anything relative or metric, GLPN).
- the bundled shapes-world depth predictor, once the bundled-model issue ships it
  (``bundled_depth_estimator`` is the seam; it returns None until then).
With neither, ``load_depth_estimator`` raises ``no_depth_backend()``: a message saying how to provide
one. A depth map is never made up.

This module also holds the checked loading of local transformers directories that the three
learned decomposition backends (depth, image embedding, caption) share.
"""

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from ..conditions.depth import Depth
from ..errors import InvalidParameter, ModelError, NonFiniteResult, RecomposerError
from ..io.weights import check_finite, check_safetensors, refuse_pickles_in


@runtime_checkable
class DepthEstimator(Protocol):
    def __call__(self, image: Image.Image) -> Depth:
        """An RGB image -> its Depth, the same size (0 = nearest, 1 = farthest)."""
        ...


def no_depth_backend() -> RecomposerError:
    """The error for "depth was asked for but nothing can estimate it" (raise it)."""
    return RecomposerError("depth", "no depth backend: pass --depth-model DIR (a transformers depth-estimation "
                                    "model, e.g. DPT or Depth Anything, saved locally) or provide a depth map "
                                    "with --depth FILE")


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


# --- loading local transformers directories (shared by depth, embedding and captioner) ---------
# Belongs beside models/loading.py's diffusers loader; kept here because this issue owns only these files.

def check_model_dir(path: str | Path, field: str) -> Path:
    """A local transformers directory: config.json present, weights in safetensors (each checked by
    its bytes), pickle-only folders refused (RELIABILITY R1)."""
    root = Path(path)
    if not root.is_dir():
        raise ModelError(field, f"no such model directory: {path}")
    if not (root / "config.json").is_file():
        raise ModelError(field, f"{root} is not a transformers model directory (no config.json)")
    refuse_pickles_in(root)
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ModelError(field, f"{root} holds no .safetensors weights")
    for f in files:
        check_safetensors(f)
    return root


def read_model_type(root: Path, field: str) -> str:
    try:
        config = json.loads((root / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(field, f"{root / 'config.json'} is not valid JSON") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelError(field, f"{root / 'config.json'} names no model_type")
    return config["model_type"]


def load_pretrained(auto_class, root: Path, field: str, device: str | torch.device, dtype: torch.dtype):
    """``auto_class.from_pretrained`` offline, safetensors only, no remote code; missing or mis-shaped
    weights and NaN/inf weights are errors, never silently random. Unexpected weights (a full CLIP
    checkpoint read as its vision half) are fine."""
    from transformers.utils import logging

    common = dict(local_files_only=True, use_safetensors=True, trust_remote_code=False,
                  output_loading_info=True, ignore_mismatched_sizes=True)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the load report lists expected unexpected keys; we check what matters
    try:
        model, info = auto_class.from_pretrained(root, dtype=dtype, **common)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as e:
        raise ModelError(field, f"{root} could not be loaded: {first_line(e)}") from None
    finally:
        logging.set_verbosity(verbosity)
    missing = sorted(k for k in info.get("missing_keys", []) if not k.endswith("position_ids"))
    mismatched = sorted(k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys", []))
    if missing:
        raise ModelError(field, f"{root} lacks {len(missing)} weights, e.g. {missing[0]!r}")
    if mismatched:
        raise ModelError(field, f"{root} has weights of the wrong shape, e.g. {mismatched[0]!r}")
    check_finite(dict(model.state_dict()), str(root))
    return model.to(torch.device(device)).eval()


def load_image_processor(root: Path, field: str):
    """The directory's image processor, PIL backend (no torchvision; the same pixels on every machine)."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(root, local_files_only=True, trust_remote_code=False, backend="pil")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(field, f"{root} has no usable image processor config: {first_line(e)}") from None


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over every weight (names, dtypes, shapes, bytes), as Backbone.identity hashes its own."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else e.__class__.__name__
