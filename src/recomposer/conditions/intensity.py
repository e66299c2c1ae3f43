"""Intensity: a grayscale version of the image (Composer's 7th representation).

Composer makes it with RGB channel weights sampled from a predefined set, so that the model learns
to put colour back (colourisation) rather than copy it; at inference plain luminance is the default.
"""

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidParameter
from .base import Condition


@dataclass(frozen=True, eq=False)
class Intensity(Condition):
    kind = "intensity"
    values: np.ndarray  # (H, W) float32 in [0, 1]
    weights: tuple[float, float, float] = (0.299, 0.587, 0.114)  # the RGB weights that made it

    def __post_init__(self) -> None:
        v = self.values
        if not isinstance(v, np.ndarray) or v.ndim != 2 or v.dtype != np.float32:
            raise InvalidParameter("intensity.values", "a float32 array (H, W)", getattr(v, "shape", type(v)))
        if not np.isfinite(v).all() or v.min(initial=0) < 0 or v.max(initial=0) > 1:
            raise InvalidParameter("intensity.values", "finite values in [0, 1]", "other values")
        w = tuple(float(x) for x in self.weights)
        if len(w) != 3 or min(w) < 0 or abs(sum(w) - 1) > 1e-4:
            raise InvalidParameter("intensity.weights", "three non-negative weights summing to 1", self.weights)
        object.__setattr__(self, "weights", w)

    def meta(self) -> dict:
        return {"weights": list(self.weights), "size": [self.values.shape[1], self.values.shape[0]]}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"values": self.values}

    @classmethod
    def from_saved(cls, meta: dict, arrays: dict) -> "Intensity":
        return cls(arrays["values"], tuple(meta["weights"]))

    def picture(self):
        from .pictures import gray

        return gray(self.values)
