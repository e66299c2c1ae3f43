"""The extra input channels of a Stable Diffusion inpainting UNet, as an adapter (models/adapter.py).

SD-inpainting UNets take 9 channels: x_t (4) + the mask (1) + the masked image's latents (4), the mask
at latent size (nearest) and the latents the VAE posterior's mean (diffusers' pipeline samples it; the
mean is what a deterministic re-run needs, and the two agree to the posterior's small std). The model
declares these channels (its model_index.json names StableDiffusionInpaintPipeline); they are never
guessed from the UNet's channel count.
"""

import torch

from ..conditions import ConditionSet, MaskedImage
from ..errors import InvalidParameter
from .adapter import CONCAT


class InpaintingChannels:
    """mask (1) + masked-image latents (C) appended to x_t: what an inpainting UNet hears of the masked image."""

    consumes = frozenset({"masked_image"})
    doors = frozenset({CONCAT})

    def __init__(self, latent_channels: int = 4):
        self.channels = latent_channels + 1

    def encode(self, backbone, conds: ConditionSet, size: tuple[int, int]) -> dict:
        if "masked_image" not in conds:
            raise InvalidParameter("mask", "given: this is an inpainting model (it hears a masked image)", None)
        return {CONCAT: inpainting_channels(backbone, conds["masked_image"])}


def inpainting_channels(backbone, masked: MaskedImage) -> torch.Tensor:
    """mask (1) + masked-image latents (C) at latent size, (1, 1 + C, h, w) in the backbone's dtype."""
    b = backbone
    latents = b.encode_image(masked.masked).mode() * b.vae.config.scaling_factor  # (1, C, h, w)
    mask = torch.nn.functional.interpolate(masked.mask, size=latents.shape[-2:])  # (1, 1, h, w), nearest
    return torch.cat([mask.to(latents), latents], dim=1).to(b.dtype)
