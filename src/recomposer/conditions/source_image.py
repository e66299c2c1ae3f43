"""Source image: the picture an instruction edits (InstructPix2Pix, Brooks et al. 2023).

Its destination is declared by the adapter that hears it (models/instruct.py: the VAE latents of the image as
extra input channels). Its null is no image at all: that adapter's zeros, the reference's unconditional image.
"""

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidParameter
from .base import Condition


@dataclass(frozen=True, eq=False)
class SourceImage(Condition):
    kind = "source_image"
    image: torch.Tensor  # (1, 3, H, W) in [-1, 1]

    def __post_init__(self) -> None:
        if not isinstance(self.image, torch.Tensor) or self.image.ndim != 4 or self.image.shape[:2] != (1, 3):
            raise InvalidParameter("source_image.image", "a tensor of shape (1, 3, H, W)",
                                   tuple(getattr(self.image, "shape", ())))
        if not bool(torch.isfinite(self.image).all()) or self.image.abs().max() > 1:
            raise InvalidParameter("source_image.image", "finite values in [-1, 1]", "others")

    def meta(self) -> dict:
        return {"size": [int(self.image.shape[3]), int(self.image.shape[2])]}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"image": self.image.float().numpy()}

    @classmethod
    def from_saved(cls, meta: dict, arrays: dict) -> "SourceImage":
        return cls(torch.from_numpy(arrays["image"]))

    def picture(self):
        from PIL import Image

        pixels = (self.image[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()
        return Image.fromarray((pixels * 255).round().astype(np.uint8))
