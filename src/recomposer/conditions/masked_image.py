"""Masked image: an RGB image plus a binary mask of the region to (re)generate.

This is Composer's 4-channel masking representation (masked RGB + mask) and what 9-channel
inpainting UNets take as extra input channels. Convention: mask 1 = generate here, 0 = keep.
"""

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidParameter
from .base import Condition


@dataclass(frozen=True, eq=False)
class MaskedImage(Condition):
    kind = "masked_image"
    image: torch.Tensor  # (1, 3, H, W) in [-1, 1]
    mask: torch.Tensor  # (1, 1, H, W) in {0, 1}; 1 marks the region to generate

    def __post_init__(self) -> None:
        if self.image.ndim != 4 or self.image.shape[:2] != (1, 3):
            raise InvalidParameter("masked_image.image", "a tensor of shape (1, 3, H, W)", tuple(self.image.shape))
        if self.mask.shape != (1, 1, *self.image.shape[2:]):
            raise InvalidParameter("masked_image.mask", f"shape (1, 1, {self.image.shape[2]}, {self.image.shape[3]})",
                                   tuple(self.mask.shape))
        if not bool(((self.mask == 0) | (self.mask == 1)).all()):
            raise InvalidParameter("masked_image.mask", "binary (only 0 and 1)", "other values")

    @property
    def masked(self) -> torch.Tensor:
        """The image with the region to generate blanked out (diffusers: image * (mask < 0.5))."""
        return self.image * (self.mask < 0.5)

    def meta(self) -> dict:
        return {"size": [int(self.image.shape[3]), int(self.image.shape[2])],
                "masked_fraction": float(self.mask.float().mean())}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"image": self.image.float().numpy(), "mask": self.mask.float().numpy()}

    @classmethod
    def from_saved(cls, meta: dict, arrays: dict) -> "MaskedImage":
        return cls(torch.from_numpy(arrays["image"]), torch.from_numpy(arrays["mask"]))

    def picture(self):
        """The kept image with the region to generate shown in mid-gray."""
        from PIL import Image

        keep = (self.image[0] / 2 + 0.5).clamp(0, 1) * (1 - self.mask[0]) + 0.5 * self.mask[0]
        return Image.fromarray((keep.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
