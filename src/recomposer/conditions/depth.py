"""Depth: a per-pixel map of how far the scene is, Composer's "rough layout" representation.

Convention (the whole project's, the shapes world's too): ``values`` is float32 (H, W) in [0, 1],
**0 = nearest, 1 = farthest**; the shapes world draws its empty background at 1.0 and its
front-most object with the smallest value. Values are relative, never metric.

Ways in:
- ``from_disparity``: inverse depth, as stereo matching and MiDaS-style estimators (DPT, Depth
  Anything) give it. Normalised robustly and flipped; the result is *linear in disparity*, the
  way MiDaS-style depth hints are drawn, not linear in distance.
- ``from_distance``: depth that grows with distance (metric estimators, z-buffers): turned into
  disparity (1 / distance) first, so every estimator lands in the same disparity-linear scale.
- ``from_image``: a depth map a person made or exported, read exactly (8- or 16-bit grayscale),
  **bright = near** as depth-map images usually are; values are kept as given, not stretched.
The picture (and ``image16``) draws near bright, so ``from_image(depth.image16())`` is exact.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadImage, InvalidParameter
from .base import Condition

ROBUST_PERCENTILES = (1.0, 99.0)  # disparity below / above these percentiles is clipped to them
GRAY_TOLERANCE = 8  # an RGB depth image whose channels differ by more (of 255) is not grayscale


@dataclass(frozen=True, eq=False)
class Depth(Condition):
    kind = "depth"
    values: np.ndarray  # (H, W) float32 in [0, 1]; 0 = nearest, 1 = farthest

    def __post_init__(self) -> None:
        v = self.values
        if not isinstance(v, np.ndarray) or v.dtype != np.float32:
            raise InvalidParameter("depth.values", "a float32 numpy array",
                                   getattr(v, "dtype", type(v).__name__))
        if v.ndim != 2 or min(v.shape) < 1:
            raise InvalidParameter("depth.values", "shape (H, W) with H, W >= 1", v.shape)
        if not bool(np.isfinite(v).all()) or v.min() < 0 or v.max() > 1:
            raise InvalidParameter("depth.values", "finite values in [0, 1] (0 = nearest)", "values outside")
        v = v.copy()  # our own, read-only: a condition is immutable, edits make new ones
        v.setflags(write=False)
        object.__setattr__(self, "values", v)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Depth) and np.array_equal(self.values, other.values)

    __hash__ = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL counts."""
        return self.values.shape[1], self.values.shape[0]

    # --- ways in --------------------------------------------------------------------------
    @classmethod
    def from_disparity(cls, disparity) -> "Depth":
        """Inverse depth (larger = nearer; any scale and shift) -> Depth.

        Rules, in order:
        1. Invalid pixels are the non-finite ones (NaN, +-inf: the motorcycle ground truth marks
           unmatched pixels with inf). Each takes the disparity of its nearest valid pixel
           (Euclidean distance; scipy's tie-breaking), so holes from occlusion are filled from
           their surroundings rather than drawn as a fake far or near surface. No valid pixel at
           all is an error.
        2. Robust range: the 1st and 99th percentiles of the valid disparity (``ROBUST_PERCENTILES``);
           values beyond are clipped. If that range is empty (a map more than 98 % flat) the
           min and max are used instead.
        3. values = (high - disparity) / (high - low): the largest disparity (nearest) -> 0.
        4. A flat map (no range at all) has no relief: every pixel is 1.0, the far plane, as the
           shapes world draws an empty scene.
        """
        d = _as_map(disparity, "depth.disparity")
        valid = np.isfinite(d)
        d = _fill_invalid(d, valid, "depth.disparity")
        low, high = np.percentile(d[valid], ROBUST_PERCENTILES)
        if not high > low:
            low, high = d.min(), d.max()
        if not high > low:
            return cls(np.ones(d.shape, np.float32))
        values = (high - np.clip(d, low, high)) / (high - low)
        return cls(np.clip(values, 0.0, 1.0).astype(np.float32))

    @classmethod
    def from_distance(cls, distance) -> "Depth":
        """Depth that grows with distance (metres or any positive unit) -> Depth, via disparity 1 / distance.

        Pixels that are not finite or not > 0 are invalid and filled as in ``from_disparity``.
        """
        d = _as_map(distance, "depth.distance")
        valid = np.isfinite(d) & (d > 0)
        disparity = np.full(d.shape, np.nan)
        disparity[valid] = 1.0 / d[valid]
        if not valid.any():
            raise InvalidParameter("depth.distance", "at least one finite value > 0", "none")
        return cls.from_disparity(disparity)

    @classmethod
    def from_image(cls, source: str | Path | bytes, field: str = "depth") -> "Depth":
        """A depth-map image a person provides: **bright = near**, dark = far; values kept as given.

        Read exactly: 8-bit grayscale as v / 255, 16-bit grayscale (PNG, TIFF) as v / 65535. An
        RGB(A) image is accepted only when it is gray (channels within ``GRAY_TOLERANCE`` of each
        other; a colour-mapped visualisation is not a depth map) and read as its channels' mean.
        Alpha is ignored. Float and 32-bit images beyond 16-bit range are refused. The same
        format allow-list, byte and pixel caps, EXIF orientation and first-frame rules as every
        other image (io.images).
        """
        gray = _read_gray(source, field)  # (H, W) float64 in [0, 1], bright = high
        return cls((1.0 - gray).astype(np.float32))

    # --- edits ------------------------------------------------------------------------------
    def resized(self, width: int, height: int) -> "Depth":
        """A new Depth of another size (bilinear; values stay in [0, 1])."""
        from PIL import Image

        if not (isinstance(width, int) and isinstance(height, int) and width >= 1 and height >= 1):
            raise InvalidParameter("depth.size", "integers width, height >= 1", (width, height))
        im = Image.fromarray(self.values, "F").resize((width, height), Image.Resampling.BILINEAR)
        return Depth(np.clip(np.asarray(im, np.float32), 0.0, 1.0))

    # --- files and pictures ---------------------------------------------------------------------
    def meta(self) -> dict:
        return {"size": list(self.size), "convention": "0 nearest, 1 farthest"}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"values": self.values}

    @classmethod
    def from_saved(cls, meta: dict, arrays: dict) -> "Depth":
        values = np.array(arrays["values"])  # a writable copy we own
        if list(values.shape[::-1]) != list(meta["size"]):
            raise InvalidParameter("depth.size", f"the saved array's size {list(values.shape[::-1])}", meta["size"])
        return cls(values)

    def picture(self):
        """Grayscale, near bright (as depth hints are usually drawn)."""
        from .pictures import gray

        return gray(1.0 - self.values)

    def image16(self):
        """A 16-bit grayscale PIL image, near bright: what ``from_image`` reads back exactly."""
        from PIL import Image

        return Image.fromarray(np.rint((1.0 - self.values.astype(np.float64)) * 65535).astype(np.uint16))


def _as_map(a, field: str) -> np.ndarray:
    try:
        d = np.array(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidParameter(field, "a 2-D array of numbers", type(a).__name__) from None
    if d.ndim != 2 or min(d.shape) < 1:
        raise InvalidParameter(field, "shape (H, W) with H, W >= 1", d.shape)
    return d


def _fill_invalid(d: np.ndarray, valid: np.ndarray, field: str) -> np.ndarray:
    """Give each invalid pixel the value of its nearest valid pixel."""
    if valid.all():
        return d
    if not valid.any():
        raise InvalidParameter(field, "at least one finite value", "none")
    from scipy.ndimage import distance_transform_edt

    rows, cols = distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return d[rows, cols]


def _read_gray(source: str | Path | bytes, field: str) -> np.ndarray:
    """Decode a depth-map image to (H, W) float64 in [0, 1] without losing 16-bit precision."""
    from ..io.images import decode_image

    im = decode_image(source, field)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        if a.min() < 0 or a.max() > 65535:
            raise BadImage(field, "is a 32-bit integer image with values outside 0..65535; save it as 8- or 16-bit")
        return a / 65535.0
    if im.mode == "F":
        raise BadImage(field, "is a floating-point image; save the depth map as 8- or 16-bit grayscale")
    if im.mode in ("L", "LA", "1"):
        return np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    rgb = np.asarray(im.convert("RGB"), dtype=np.float64)  # (H, W, 3); alpha, if any, dropped
    if (rgb.max(axis=2) - rgb.min(axis=2)).max() > GRAY_TOLERANCE:
        raise BadImage(field, "is a colour image; a depth map must be grayscale (bright = near), "
                              "not a colour-mapped visualisation")
    return rgb.mean(axis=2) / 255.0
