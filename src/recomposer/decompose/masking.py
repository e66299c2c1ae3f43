"""Masking (Composer representation 8): the image with a region blanked, plus the binary mask.

Masks come from a user's mask image (white = region to generate), a box or an ellipse; all of
them at the image's exact size. Convention everywhere: 1 = generate here, 0 = keep.
"""

import numpy as np
import torch
from PIL import Image

from ..conditions.masked_image import MaskedImage
from ..errors import InvalidParameter
from ..io.images import open_mask, to_tensor
from ..ellipse import Ellipse, ellipse_mask


def box_mask(width: int, height: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """Pixels whose centres lie in [x0, x1) x [y0, y1) (pixels, x right, y down)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise InvalidParameter("box", f"x0 < x1 within [0, {width}] and y0 < y1 within [0, {height}]", box)
    xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
    return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]


def masked_image(image: Image.Image, mask: np.ndarray) -> MaskedImage:
    """image (RGB PIL) + mask (H, W) bool/0-1 of the same size -> MaskedImage."""
    mask = np.asarray(mask)
    if mask.shape != (image.height, image.width):
        raise InvalidParameter("mask", f"shape ({image.height}, {image.width}) like the image", mask.shape)
    if not mask.any():
        raise InvalidParameter("mask", "at least one pixel to generate", "an empty mask")
    return MaskedImage(to_tensor(image), torch.from_numpy(mask.astype(np.float32))[None, None])


def from_mask_file(image: Image.Image, path) -> MaskedImage:
    return masked_image(image, open_mask(path, image.size)[0, 0].numpy() > 0.5)


def from_box(image: Image.Image, box) -> MaskedImage:
    return masked_image(image, box_mask(image.width, image.height, box))


def from_ellipse(image: Image.Image, ellipse: Ellipse) -> MaskedImage:
    return masked_image(image, ellipse_mask(ellipse, image.height, image.width))
