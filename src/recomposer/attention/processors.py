"""Attention processors installed by module name for one run, handing each call its layer, the step and the rows.

``installed(unet, control)`` replaces the processor of every attention layer of a diffusers UNet with a
``Processor`` that knows its ``Layer`` (module name, self- or cross-attention, and its query grid) and,
at every forward, receives a ``Call`` (the step, the row roles of the batch, per-layer inputs) through
diffusers' ``cross_attention_kwargs`` (denoiser.forward_unet passes it). Nothing is found by counting
calls. The originals are put back when the block ends, however it ends.

A ``Control`` decides per call what it needs (``wants``): nothing (the processor runs the same
scaled-dot-product attention as diffusers' AttnProcessor2_0, so an installed control that asks for nothing
changes nothing); READ (the probabilities softmax(q·kᵀ/√d + mask) (B, heads, Q, K) are computed and shown to
``control.edit``, and the layer's output stays the SDPA one: reading never changes an image); or EDIT (the
output is probs·v with the probabilities ``edit`` returns).
"""

import math
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F


class Layer(NamedTuple):
    name: str  # the attention module's name in the UNet, e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
    cross: bool  # cross-attention (keys from the context) or self-attention


@dataclass(frozen=True)
class Call:
    """What a processor is told at a forward: the step (or a bare timestep), what each row computes
    (denoiser.RowRole, or None when no guidance set them) and the per-layer inputs of the model's doors."""

    step: object
    rows: tuple | None
    inputs: Mapping[str, torch.Tensor]


READ, EDIT = "read", "edit"


class Control(Protocol):
    def wants(self, layer: Layer, call: Call, queries: int) -> str | None:
        """None, READ or EDIT for this call (``queries`` = Q, the layer's pixels)."""
        ...

    def edit(self, layer: Layer, call: Call, probs: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The probabilities to use (B, heads, Q, K); ``grid`` (h, w) is the query grid, Q = h·w."""
        ...


class Processor:
    """A diffusers attention processor that hands its layer and each call to a Control."""

    def __init__(self, layer: Layer, control: Control, aspect: float):
        self.layer, self.control, self.aspect = layer, control, aspect  # aspect = latent width / height

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 call: Call | None = None) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        four_d = hidden_states.ndim == 4
        if four_d:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, queries = hidden_states.shape[0], hidden_states.shape[1]
        keys_from = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, keys_from.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head = key.shape[-1] // attn.heads
        q, k, v = (t.view(batch, -1, attn.heads, head).transpose(1, 2) for t in (query, key, value))  # (B, H, N, d)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)

        wanted = self.control.wants(self.layer, call, queries) if call is not None else None
        if wanted != EDIT:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        if wanted is not None:
            scores = (q @ k.transpose(-1, -2)).float() * attn.scale  # (B, H, Q, K)
            if attention_mask is not None:
                scores = scores + attention_mask.float()
            probs = self.control.edit(self.layer, call, scores.softmax(dim=-1).to(q.dtype), self.grid(queries))
            if wanted == EDIT:
                out = probs.to(v.dtype) @ v  # (B, H, Q, d)

        hidden_states = out.transpose(1, 2).reshape(batch, -1, attn.heads * head).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if four_d:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def grid(self, queries: int) -> tuple[int, int]:
        """(h, w) of the query grid: Q pixels at the latent's aspect ratio."""
        h = max(1, round(math.sqrt(queries / self.aspect)))
        return h, queries // h


@contextmanager
def installed(unet: torch.nn.Module, control: Control, latent_size: tuple[int, int]):
    """``control`` on every attention layer of ``unet`` for the duration (latent_size: (h, w) of the run's latents);
    the original processors are restored afterwards."""
    originals = unet.attn_processors
    modules = dict(unet.named_modules())
    h, w = latent_size
    ours = {}
    for key in originals:
        name = key.removesuffix(".processor")
        ours[key] = Processor(Layer(name, bool(getattr(modules[name], "is_cross_attention", False))), control, w / h)
    unet.set_attn_processor(ours)
    unet.recomposer_processors = True
    try:
        yield
    finally:
        unet.set_attn_processor(dict(originals))
        unet.recomposer_processors = False
