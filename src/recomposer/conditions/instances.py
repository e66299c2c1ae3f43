"""Instances: non-overlapping object masks, each with an optional category label (Composer's instance
segmentation representation: which things are where, and their shapes).

Saved exactly as a label map (0 background, k + 1 for mask k) plus the count, so that masks that
happen to be empty survive the round trip too.
"""

import colorsys
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidParameter
from .base import Condition
from ..io.sheets import label_font


@dataclass(frozen=True, eq=False)
class Instances(Condition):
    kind = "instances"
    masks: np.ndarray  # (N, H, W) bool, no pixel in two masks; N may be 0
    labels: tuple[str | None, ...] | None = None  # one category per mask (None: unlabelled); None: all unlabelled

    def __post_init__(self) -> None:
        m = self.masks
        if not isinstance(m, np.ndarray) or m.ndim != 3 or m.dtype != bool or 0 in m.shape[1:]:
            raise InvalidParameter("instances.masks", "a bool array of shape (N, H, W) with H, W >= 1",
                                   (getattr(m, "dtype", type(m).__name__), getattr(m, "shape", None)))
        if len(m) and int(m.sum(axis=0, dtype=np.int32).max()) > 1:
            raise InvalidParameter("instances.masks", "non-overlapping (each pixel in at most one mask)",
                                   "overlapping masks")
        labels = (None,) * len(m) if self.labels is None else self.labels
        if not isinstance(labels, tuple) or len(labels) != len(m):
            raise InvalidParameter("instances.labels", f"a tuple of {len(m)} labels (one per mask)",
                                   labels if not isinstance(labels, tuple) else f"{len(labels)} labels")
        for i, label in enumerate(labels):
            if label is not None and not isinstance(label, str):
                raise InvalidParameter(f"instances.labels[{i}]", "a string or None", label)
        object.__setattr__(self, "labels", labels)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.masks.shape[2]), int(self.masks.shape[1])

    def __len__(self) -> int:
        return len(self.masks)

    def label_map(self) -> np.ndarray:
        """(H, W) int32: 0 background, k + 1 where masks[k] is set."""
        out = np.zeros(self.masks.shape[1:], np.int32)
        for k, m in enumerate(self.masks):
            out[m] = k + 1
        return out

    @classmethod
    def from_label_map(cls, label_map, labels: tuple[str | None, ...] | None = None) -> "Instances":
        """Masks from an (H, W) integer map, 0 background: one mask per distinct positive value, in
        increasing order of value (so values need not be consecutive)."""
        a = np.asarray(label_map)
        if a.ndim != 2 or 0 in a.shape or not np.issubdtype(a.dtype, np.integer):
            raise InvalidParameter("label_map", "an integer array of shape (H, W)", (a.dtype, a.shape))
        if a.min() < 0:
            raise InvalidParameter("label_map", "values >= 0 (0 is background)", int(a.min()))
        values = np.unique(a)
        values = values[values > 0]
        return cls(a[None] == values[:, None, None], labels)

    def meta(self) -> dict:
        return {"size": list(self.size), "count": len(self), "labels": list(self.labels)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"label_map": self.label_map()}

    @classmethod
    def from_saved(cls, meta: dict, arrays: dict) -> "Instances":
        count, labels, label_map = meta["count"], meta["labels"], arrays["label_map"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidParameter("instances.count", "an integer >= 0", count)
        if not isinstance(labels, list):
            raise InvalidParameter("instances.labels", "a list", labels)
        if label_map.ndim != 2 or label_map.dtype != np.int32 or (label_map.size and not
                                                                   0 <= label_map.min() <= label_map.max() <= count):
            raise InvalidParameter("instances.label_map", f"an int32 (H, W) map with values in [0, {count}]",
                                   (label_map.dtype, label_map.shape))
        masks = label_map[None] == np.arange(1, count + 1, dtype=np.int32)[:, None, None]
        return cls(masks, tuple(labels))

    def picture(self):
        """The label map in distinct colours on black, each labelled mask's category written at its centre."""
        from PIL import Image, ImageDraw

        image = Image.fromarray(label_colours(len(self))[self.label_map()])
        draw = ImageDraw.Draw(image)
        for mask, label in zip(self.masks, self.labels):
            if label and mask.any():
                ys, xs = np.nonzero(mask)
                left, top, right, bottom = draw.textbbox((0, 0), label)
                x, y = xs.mean() - (right - left) / 2, ys.mean() - (bottom - top) / 2
                for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):  # a black outline, then the white text
                    draw.text((x + dx, y + dy), label, fill="black", font=label_font())
                draw.text((x, y), label, fill="white", font=label_font())
        return image


def label_colours(n: int) -> np.ndarray:
    """(n + 1, 3) uint8: black for the background, then hues a golden angle apart."""
    hues = (np.arange(n) * 0.618034) % 1.0
    return np.array([(0, 0, 0)] + [tuple(round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.75, 0.95))
                                   for h in hues], np.uint8).reshape(n + 1, 3)
