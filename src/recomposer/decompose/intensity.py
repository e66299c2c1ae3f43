"""Intensity (Composer §3.1, representation 7): grayscale with RGB weights drawn from a predefined set.

The set (ours; the paper does not list it): the two broadcast luma standards, equal weights, and
one set leaning on each channel. Training samples from it uniformly (seeded); inference uses
BT.601 luminance unless told otherwise.
"""

import numpy as np

from ..conditions.intensity import Intensity
from ..errors import InvalidParameter

WEIGHT_SET = (
    (0.299, 0.587, 0.114),  # ITU-R BT.601 luma
    (0.2126, 0.7152, 0.0722),  # ITU-R BT.709 luma
    (1 / 3, 1 / 3, 1 / 3),  # plain average
    (0.6, 0.3, 0.1),  # red-leaning
    (0.2, 0.7, 0.1),  # green-leaning
    (0.1, 0.3, 0.6),  # blue-leaning
)


def intensity(image: np.ndarray, weights: tuple[float, float, float] | None = None,
              rng: np.random.Generator | None = None) -> Intensity:
    """image (H, W, 3) uint8 RGB -> Intensity. ``rng`` given: weights drawn uniformly from WEIGHT_SET."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidParameter("image", "an RGB uint8 array (H, W, 3)", f"{image.dtype} {image.shape}")
    if weights is None:
        weights = WEIGHT_SET[int(rng.integers(len(WEIGHT_SET)))] if rng is not None else WEIGHT_SET[0]
    w = np.asarray(weights, np.float32)
    values = (image.astype(np.float32) @ w) / 255.0  # (H, W)
    return Intensity(np.clip(values, 0, 1).astype(np.float32), tuple(float(x) for x in weights))
