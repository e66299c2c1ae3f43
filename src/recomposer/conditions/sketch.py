"""Sketch: binary line art, True on a line (Composer's sketch representation: local detail, little semantics).

Made from a photo by ``recomposer.decompose.sketch.sketch`` (edges, then thinning), or from a person's
drawing by ``Sketch.from_image``: dark lines on light paper or light lines on dark, told apart by which
Otsu class is the minority, then thinned to 1-pixel lines like the extracted ones.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidParameter
from .base import Condition


@dataclass(frozen=True, eq=False)
class Sketch(Condition):
    kind = "sketch"
    lines: np.ndarray  # (H, W) bool, True on a line

    def __post_init__(self) -> None:
        a = self.lines
        if not isinstance(a, np.ndarray) or a.ndim != 2 or a.dtype != bool or 0 in a.shape:
            raise InvalidParameter("sketch.lines", "a non-empty bool array of shape (H, W)",
                                   (getattr(a, "dtype", type(a).__name__), getattr(a, "shape", None)))

    @classmethod
    def from_image(cls, source, min_length: int = 3) -> "Sketch":
        """A drawing (file path, bytes, PIL image or array) as a sketch.

        The gray image is split in two by Otsu's threshold; the smaller class is the lines (so dark on
        light and light on dark both work); lines are thinned to 1 pixel and specks shorter than
        ``min_length`` pixels dropped. A blank page gives an empty sketch.
        """
        from skimage.filters import threshold_otsu

        gray = _gray(source)
        if gray.min() == gray.max():
            return cls(np.zeros(gray.shape, bool))
        high = gray > threshold_otsu(gray)
        lines = high if high.sum() <= high.size / 2 else ~high
        return cls(finish(lines, min_length))

    def meta(self) -> dict:
        return {"size": [int(self.lines.shape[1]), int(self.lines.shape[0])],
                "line_fraction": float(self.lines.mean())}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"lines": self.lines}

    @classmethod
    def from_saved(cls, meta: dict, arrays: dict) -> "Sketch":
        return cls(arrays["lines"])

    def picture(self):
        """Black lines on white paper."""
        from PIL import Image

        return Image.fromarray(np.where(self.lines, 0, 255).astype(np.uint8), "L").convert("RGB")


def _gray(source) -> np.ndarray:
    """(H, W) float gray values of a drawing given as a path, bytes, PIL image or array."""
    from PIL import Image

    if isinstance(source, (str, Path, bytes)):
        from ..io.images import open_image

        source = open_image(source, field="sketch")
    if isinstance(source, Image.Image):
        return np.asarray(source.convert("L"), np.float32)
    a = np.asarray(source)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if a.ndim != 2 or 0 in a.shape:
        raise InvalidParameter("sketch", "a gray (H, W) or RGB (H, W, 3) image", a.shape)
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or not np.isfinite(a).all():
        raise InvalidParameter("sketch", "finite numeric pixel values", a.dtype)
    return a.astype(np.float32)


def finish(edges: np.ndarray, min_length: int) -> np.ndarray:
    """Thin to 1-pixel lines, then drop 8-connected pieces shorter than ``min_length`` pixels (what a sketch's
    lines are: decompose/sketch.py finishes its edges with it, ``Sketch.from_image`` a drawing)."""
    import cv2
    from skimage.morphology import thin

    lines = _break_blocks(thin(edges))
    if min_length > 1 and lines.any():
        _, labels, stats, _ = cv2.connectedComponentsWithStats(lines.view(np.uint8), connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_length
        keep[0] = False
        lines = keep[labels]
    return lines


def _break_blocks(lines: np.ndarray) -> np.ndarray:
    """Remove one pixel from each 2x2 block of line pixels. Thinning keeps such a block where every
    deletion would change topology (it encloses a tiny hole); we prefer a pixel whose line neighbours
    stay 8-connected without it, so lines are not cut."""
    from scipy import ndimage

    block = lines[:-1, :-1] & lines[1:, :-1] & lines[:-1, 1:] & lines[1:, 1:]
    if not block.any():
        return lines
    lines = np.pad(lines, 1)  # so every 3x3 window exists

    def pieces_without(y: int, x: int) -> int:
        window = lines[y - 1:y + 2, x - 1:x + 2].copy()
        window[1, 1] = False
        return ndimage.label(window, structure=np.ones((3, 3)))[1]

    for y, x in zip(*np.nonzero(block)):
        y, x = y + 1, x + 1  # padded coordinates of the block's top-left pixel
        if lines[y:y + 2, x:x + 2].all():
            corners = [(y, x), (y, x + 1), (y + 1, x), (y + 1, x + 1)]
            lines[min(corners, key=lambda p: (pieces_without(*p) != 1, p))] = False
    return lines[1:-1, 1:-1]
