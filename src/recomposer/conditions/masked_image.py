"""Masked image: an RGB image plus a binary mask of the region to (re)generate.

This is Composer's 4-channel masking representation (masked RGB + mask) and what 9-channel
inpainting UNets take as extra input channels. Convention: mask 1 = generate here, 0 = keep.
"""

import hashlib
from dataclasses import dataclass

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

    def describe(self) -> dict:
        digest = hashlib.sha256(self.image.float().numpy().tobytes() + self.mask.float().numpy().tobytes())
        return {"size": [int(self.image.shape[3]), int(self.image.shape[2])],
                "masked_fraction": float(self.mask.mean()), "sha256": digest.hexdigest()}
