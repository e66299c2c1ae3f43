"""The extra input channels of an InstructPix2Pix UNet (Brooks et al. 2023, §3.4), as an adapter (models/adapter.py).

An instruction model's UNet takes 2C channels: x_t (C) + the source image's latents (C). The latents are the VAE
posterior's mode, **not** multiplied by the VAE's scaling factor (the reference weights were trained so; diffusers'
pipeline does the same). The null, a set without a source image, is zeros: the reference's unconditional image.
The model declares these channels (its model_index.json names StableDiffusionInstructPix2PixPipeline); they are
never guessed from the UNet's channel count. ``widen`` makes one from a plain UNet (training/instruct.py).
"""

import torch
from torch import nn

from .. import validation as v
from ..conditions import ConditionSet
from ..errors import InvalidParameter
from .adapter import CONCAT


class InstructChannels:
    """The source image's latents (C) appended to x_t: what an instruction UNet hears of the image it edits."""

    consumes = frozenset({"source_image"})
    doors = frozenset({CONCAT})

    def __init__(self, latent_channels: int = 4):
        self.channels = latent_channels
        self._last = None  # (image, its version, model, latents): the sets of one run share their source image

    def encode(self, backbone, conds: ConditionSet, size: tuple[int, int]) -> dict:
        width, height = size
        f = backbone.vae_factor
        if "source_image" not in conds:  # the null: zeros
            return {CONCAT: torch.zeros(1, self.channels, height // f, width // f, device=backbone.device,
                                        dtype=backbone.dtype)}
        image = conds["source_image"].image
        if tuple(image.shape[-2:]) != (height, width):
            raise InvalidParameter("image", f"{width}x{height} pixels (the generation size)",
                                   f"{image.shape[-1]}x{image.shape[-2]}")
        last = self._last
        if last is None or last[0] is not image or last[1] != image._version or last[2] is not backbone.vae:
            latents = backbone.encode_image(image).mode().to(backbone.dtype)  # (1, C, h, w), unscaled
            self._last = last = (image, image._version, backbone.vae, latents)
        return {CONCAT: last[3]}


def widen(unet: nn.Module, channels: int) -> nn.Module:
    """Give ``unet`` (a diffusers UNet2DConditionModel, in place) ``channels`` more input channels: conv_in's old
    input weights copied, the new ones zero, so the output does not change whatever the new channels hold. Its
    config says the new width (``in_channels``), as a saved instruction UNet must."""
    v.integer("channels", channels, 1, 64)
    conv = unet.conv_in
    wide = type(conv)(conv.in_channels + channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, bias=conv.bias is not None).to(conv.weight)  # (a door's class kept)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[:, :conv.in_channels] = conv.weight
        if conv.bias is not None:
            wide.bias.copy_(conv.bias)
    wide.train(conv.training)
    unet.conv_in = wide
    unet.register_to_config(in_channels=conv.in_channels + channels)
    return unet
