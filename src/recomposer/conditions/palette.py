"""Palette: Composer's colour condition, a smoothed CIELab histogram over 180 palette colours.

The histogram and how it is computed live in colour.py (METHODS.md §1a); this is the
typed value that carries it. It is a global condition (Composer projects it into the timestep
embedding and into extra context tokens); its null is its absence from the set.
"""

from dataclasses import dataclass

import numpy as np

from .. import colour
from ..errors import InvalidParameter
from .base import Condition


@dataclass(frozen=True, eq=False, repr=False)
class Palette(Condition):
    """A colour histogram over the 180-colour palette, with the settings that made it.

    ``histogram`` is stored as a read-only float32 copy; it need not sum to 1 (the strict-smoothed
    method does not, and a hand-written palette may be unnormalised) but must have some mass.
    ``sigma`` and ``method`` record how it was computed (kept so a histogram can be recomputed
    the same way from another image). Equal when the three fields are equal, values exactly.
    """

    kind = "palette"
    histogram: np.ndarray  # (180,) float32 >= 0
    sigma: float = 10.0  # Lab smoothing scale the histogram was made with
    method: str = "direct"  # "direct" or "strict-smoothed"

    def __post_init__(self) -> None:
        h = self.histogram
        if not isinstance(h, np.ndarray) or h.shape != (colour.SIZE,) or not (
                np.issubdtype(h.dtype, np.floating) or np.issubdtype(h.dtype, np.integer)):
            got = f"{h.dtype} array of shape {h.shape}" if isinstance(h, np.ndarray) else type(h).__name__
            raise InvalidParameter("palette.histogram", f"a real ({colour.SIZE},) array", got)
        if not np.isfinite(h).all():
            raise InvalidParameter("palette.histogram", "finite", "NaN or inf")
        if (h < 0).any():
            raise InvalidParameter("palette.histogram", "non-negative", float(h.min()))
        if not (h > 0).any():
            raise InvalidParameter("palette.histogram", "some positive mass", "all zeros")
        stored = np.array(h, dtype=np.float32)  # a copy: the caller's array may change later
        stored.flags.writeable = False
        object.__setattr__(self, "histogram", stored)
        object.__setattr__(self, "sigma", colour.check_sigma(self.sigma, "palette.sigma"))
        if self.method not in colour.METHODS:
            raise InvalidParameter("palette.method", "one of " + ", ".join(map(repr, colour.METHODS)), self.method)

    @classmethod
    def from_image(cls, image, sigma: float = 10.0, method: str = "direct") -> "Palette":
        """The colour condition of an image (a (H, W, 3) uint8 array or an RGB PIL image)."""
        return cls(colour.colour_histogram(image, sigma=sigma, method=method), sigma, method)

    def meta(self) -> dict:
        return {"sigma": self.sigma, "method": self.method, "colours": colour.SIZE}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"histogram": self.histogram}

    @classmethod
    def from_saved(cls, meta: dict, arrays: dict) -> "Palette":
        if "histogram" not in arrays:
            raise InvalidParameter("palette.histogram", "a saved array", "missing")
        return cls(arrays["histogram"], meta["sigma"], meta["method"])

    def picture(self):
        """The palette colours present, sized by weight, above the histogram's bar chart."""
        return colour.palette_picture(self.histogram)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Palette) and self.sigma == other.sigma and self.method == other.method
                and np.array_equal(self.histogram, other.histogram))

    def __hash__(self) -> int:
        return hash((self.kind, self.sigma, self.method, self.histogram.tobytes()))

    def __repr__(self) -> str:
        top = np.argsort(-self.histogram, kind="stable")[:3]
        peaks = ", ".join(f"#{i}: {self.histogram[i]:.3f}" for i in top)
        return f"Palette(histogram=<{colour.SIZE} bins, sum {self.histogram.sum():.4f}, top {peaks}>, " \
               f"sigma={self.sigma}, method={self.method!r})"
