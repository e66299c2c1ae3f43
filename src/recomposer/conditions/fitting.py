"""One resize mode for every input (issue 15, item 4): centre-crop to the target's aspect, then resize.

    crop      the largest centred box of the target's aspect (nothing is stretched)
    resize    pictures: Lanczos · label maps and masks: nearest (labels stay labels) ·
              depth and intensity: area average when shrinking, bilinear when enlarging ·
              sketches: a pixel is a line where any source pixel under it was (thin lines survive shrinking),
              then thinned to 1 pixel again like every sketch

Images are fitted by ``fit_image``; saved conditions (a ``decompose`` folder, a ``KIND.json``, a world layer) by
``fit_condition``, so that a 256 px decompose folder drives a 64 px model at 64 px like a 256 px photo does.
"""

from dataclasses import replace

import numpy as np
from PIL import Image

from .base import Condition, ConditionSet


def crop_box(width: int, height: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the largest box of ``size``'s aspect centred in a width x height image."""
    target_w, target_h = size
    scale = min(width / target_w, height / target_h)
    w, h = max(1, round(target_w * scale)), max(1, round(target_h * scale))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def fit_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The picture centre-cropped to the aspect of ``size`` (width, height) and resized to it (Lanczos)."""
    image = image.convert("RGB")
    if image.size == tuple(size):
        return image
    return image.crop(crop_box(*image.size, size)).resize(tuple(size), Image.Resampling.LANCZOS)


def _fit(array: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """One (H, W) array fitted: ``mode`` is "nearest", "smooth" (area down, bilinear up) or "any" (max-pool down)."""
    height, width = array.shape
    if (width, height) == tuple(size):
        return array
    left, top, right, bottom = crop_box(width, height, size)
    cropped = np.ascontiguousarray(array[top:bottom, left:right])
    if mode == "nearest":
        im = Image.fromarray(cropped.astype(np.int32), "I").resize(size, Image.Resampling.NEAREST)
        return np.asarray(im).astype(array.dtype)
    shrinking = size[0] < cropped.shape[1]
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    im = Image.fromarray(cropped.astype(np.float32), "F").resize(size, resample)
    out = np.asarray(im, np.float32)
    return out > 0 if mode == "any" else np.clip(out, 0.0, 1.0)


def fit_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool (H, W) mask fitted like the image it belongs to (nearest: a mask stays a mask)."""
    return _fit(np.asarray(mask).astype(np.int32), tuple(size), "nearest") > 0


def fit_condition(cond: Condition, size: tuple[int, int]) -> Condition:
    """The condition at ``size`` (width, height) by the module's rule; a global condition is returned as it is."""
    import torch

    from .depth import Depth
    from .instances import Instances
    from .intensity import Intensity
    from .masked_image import MaskedImage
    from .sketch import Sketch, finish

    size = (int(size[0]), int(size[1]))
    if isinstance(cond, Sketch):
        lines = _fit(cond.lines, size, "any")
        return cond if lines is cond.lines else Sketch(finish(lines, 1))
    if isinstance(cond, Instances):
        fitted = _fit(cond.label_map(), size, "nearest")
        if fitted.shape == cond.masks.shape[1:]:
            return cond
        masks = fitted[None] == np.arange(1, len(cond) + 1)[:, None, None]  # keeps every mask, even emptied ones
        return Instances(masks, cond.labels)
    if isinstance(cond, (Depth, Intensity)):
        values = _fit(cond.values, size, "smooth")
        return cond if values is cond.values else replace(cond, values=values)
    if isinstance(cond, MaskedImage):
        if tuple(cond.image.shape[2:]) == (size[1], size[0]):
            return cond
        pixels = ((cond.image[0].permute(1, 2, 0).float().numpy() + 1) * 127.5).clip(0, 255).round().astype(np.uint8)
        image = fit_image(Image.fromarray(pixels), size)
        mask = fit_mask(cond.mask[0, 0].numpy() > 0.5, size)
        tensor = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        return MaskedImage(tensor, torch.from_numpy(mask.astype(np.float32))[None, None])
    return cond


def fit_set(conds: ConditionSet, size: tuple[int, int]) -> ConditionSet:
    """Every condition of the set fitted to ``size``."""
    return ConditionSet(tuple(fit_condition(c, size) for c in conds.values()))
