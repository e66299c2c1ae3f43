"""Adapters: trained weights that let a backbone hear conditions, each declaring what it hears and where.

A Backbone carries a stack of adapters (``Backbone.adapters``, outermost last). Each declares

    consumes   the condition kinds it hears (the denoiser refuses a kind no part of the model hears)
    doors      the places it writes into the model (DOORS); declared, never inferred from tensor shapes
    channels   how many input channels it appends to x_t (the ``concat`` door), also declared

and turns a condition set into door inputs once per sampling run (``encode``). An adapter whose doors
depend on x_t (a ControlNet: residuals computed from the noisy latents) also has ``at_step``, called by
the denoiser at every step with the step, so it can follow its own schedule (start/end windows) and
stay out of the computation where it is inactive.

Door inputs are a plain ``Doors`` mapping from door name to tensors; the denoiser merges those of every
adapter into one ModelInputs (denoiser.py): extra context tokens are appended after the text tokens,
channels are concatenated in stack order, additions (timestep embedding, conv_in output, residuals) sum.
"""

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch

from ..conditions import ConditionSet

CONTEXT = "context"  # extra cross-attention tokens (+ their mask), appended after the caption's
CONCAT = "concat"  # input channels appended to x_t after input scaling
TIME = "time"  # an addition to the UNet's timestep embedding
INPUT = "input"  # an addition to the output of the UNet's conv_in
RESIDUALS = "residuals"  # additions to the skip connections and the middle block's output (ControlNet)
ATTENTION = "attention"  # per-layer inputs for attention processors (masked cross-attention, P2P)
DOORS = (CONTEXT, CONCAT, TIME, INPUT, RESIDUALS, ATTENTION)

Doors = Mapping[str, object]  # door name -> tensor(s): context -> (tokens (B, K, D), mask (B, K)), concat ->
#                               (B, C, h, w), time -> (B, D_t), input -> (B, C_in, h, w), residuals ->
#                               (down residuals tuple, mid residual), attention -> {layer name: tensor}


@runtime_checkable
class Adapter(Protocol):
    consumes: frozenset[str]  # condition kinds
    doors: frozenset[str]  # a subset of DOORS
    channels: int  # input channels appended to x_t (0 unless CONCAT is among the doors)

    def encode(self, backbone, conds: ConditionSet, size: tuple[int, int]) -> Doors:
        """Door inputs for ``conds`` (one row; the kinds it consumes, others ignored) at generation ``size``
        (width, height in pixels). A kind it consumes that is absent adds nothing."""
        ...


@runtime_checkable
class StepAdapter(Adapter, Protocol):
    def at_step(self, unet: torch.nn.Module, x: torch.Tensor, step, inputs) -> Doors:
        """Door inputs that depend on the step's x_t (B, C, h, w) (already scaled by the scheduler) and on the
        step itself; ``inputs`` is the merged ModelInputs of this forward (context, rows, ...)."""
        ...


def check_stack(adapters: tuple, in_channels: int, latent_channels: int) -> None:
    """The UNet's input channels are x_t's plus what the adapters declare; any door named is a known one."""
    from ..errors import ModelError

    for adapter in adapters:
        if not isinstance(adapter, Adapter):
            raise ModelError("adapter", f"{type(adapter).__name__} is not an adapter (consumes, doors, channels, "
                                        "encode)")
        unknown = set(adapter.doors) - set(DOORS)
        if unknown:
            raise ModelError("adapter", f"{type(adapter).__name__} names unknown doors {sorted(unknown)}")
    declared = latent_channels + sum(a.channels for a in adapters)
    if declared != in_channels:
        names = ", ".join(f"{type(a).__name__} +{a.channels}" for a in adapters if a.channels) or "none"
        raise ModelError("model", f"the UNet takes {in_channels} input channels, but x_t has {latent_channels} and "
                                  f"its adapters declare {declared - latent_channels} more ({names}): declare the "
                                  "adapter that fills them (e.g. an inpainting model's model_index.json names "
                                  "StableDiffusionInpaintPipeline)")
