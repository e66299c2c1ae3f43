"""The backbone's weightless doors for the TIME and INPUT door kinds (models/adapter.py), installed on a diffusers
UNet2DConditionModel when an adapter that writes through them joins the stack.

- TIME: the UNet's class-embedding slot becomes an identity, so ``class_labels`` *is* the addition to the
  timestep embedding (diffusers casts it to the UNet's dtype and adds it). Once installed diffusers asks
  for class_labels on every call; ``denoiser.forward_unet`` passes the addition, or zeros.
- INPUT: conv_in becomes a conv that takes [x (in_channels) | a (out_channels)] and returns conv(x) + a; a
  plain input runs as before. The same weight and bias Parameters: the state dict does not change.
Neither holds a weight, so the backbone's weights, config and identity are untouched; ``remove`` undoes both.
"""

import torch
from torch import nn

from ..errors import ModelError


class _TimeAddition(nn.Identity):
    """The class-embedding slot as a door: ``class_labels`` is the addition to the time embedding."""


class _InputAdditionConv(nn.Conv2d):
    """conv_in with a door: input [x (in_channels) | a (out_channels)] -> conv(x) + a; plain input -> conv(x).

    Holds the very same weight and bias Parameters as the conv it replaces (same names in the UNet).
    """

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        x, addition = sample[:, :self.in_channels], sample[:, self.in_channels:]
        out = super().forward(x)  # (B, out_channels, h, w)
        if addition.shape[1] == 0:
            return out
        if addition.shape[1] != self.out_channels:
            raise ModelError("input_addition", f"must have {self.out_channels} channels, got {addition.shape[1]}")
        return out + addition


def install(unet: nn.Module) -> None:
    """Give a diffusers UNet2DConditionModel the TIME and INPUT doors (no weights; idempotent)."""
    if installed(unet):
        return
    if unet.class_embedding is not None or unet.config.class_embeddings_concat:
        raise ModelError("unet", "already uses its class-embedding slot; the TIME door needs it free")
    unet.class_embedding = _TimeAddition()
    unet.conv_in = _swap_conv(unet.conv_in, _InputAdditionConv)


def remove(unet: nn.Module) -> None:
    """Remove the doors again: the UNet is the plain backbone (same Parameters throughout)."""
    if not installed(unet):
        return
    unet.class_embedding = None
    unet.conv_in = _swap_conv(unet.conv_in, nn.Conv2d)


def installed(unet: nn.Module) -> bool:
    return isinstance(unet.class_embedding, _TimeAddition) and isinstance(unet.conv_in, _InputAdditionConv)


def _swap_conv(conv: nn.Conv2d, cls: type[nn.Conv2d]) -> nn.Conv2d:
    """The same conv as class ``cls``, sharing its Parameters (built on the meta device, nothing allocated)."""
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
              dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
              device="meta")
    new.weight = conv.weight
    if conv.bias is not None:
        new.bias = conv.bias
    new.train(conv.training)
    return new
