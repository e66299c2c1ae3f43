"""The denoiser contract: ``prediction = denoiser(x_t, step, inputs)``, one call per batched UNet forward.

A denoiser first ``encode``s a ConditionSet into ``ModelInputs``: the tensors that enter the model at its
doors (models/adapter.py): the caption's tokens at cross-attention, and whatever the backbone's adapter
stack adds (extra tokens, input channels, additions to the timestep embedding, to conv_in's output and to
the skip connections, per-layer attention inputs). Encoding happens once per sampling run; the per-step
call stacks, runs the step-aware adapters (a ControlNet sees x_t and the step) and the UNet.

The call sees the ``Step`` (index, count, timestep, where in the schedule), so adapters and attention
processors can follow schedules; it computes gradients whenever the caller has them enabled (inversion,
Visii), and none under the loop's ``torch.no_grad``. The prediction is in the model's own
parameterisation (epsilon or v): every guidance rule is an affine combination whose weights sum to one,
and such combinations commute with the affine map between epsilon and v at fixed x_t, so guiding in
either space gives the same step.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F

from . import validation as v
from .conditions import Caption, ConditionSet
from .errors import InvalidParameter
from .models import doors
from .models.adapter import ATTENTION, CONCAT, CONTEXT, INPUT, RESIDUALS, TIME, StepAdapter
from .models.backbone import Backbone


@dataclass(frozen=True)
class Step:
    """Where a sampling run is: ``index`` of ``count`` steps in this run; ``position`` of ``schedule_length``
    in the whole schedule (img2img starts part-way); ``timestep`` the scheduler's t."""

    index: int
    count: int
    position: int
    schedule_length: int
    timestep: torch.Tensor

    @property
    def fraction(self) -> float:
        """How far into the whole schedule the step starts: 0 at the noisiest step."""
        return self.position / self.schedule_length


class RowRole(NamedTuple):
    """What one row of a batched forward computes: image ``sample`` of the batch under condition set ``set`` of
    that sample's guidance plan (0: the plan's base, the unconditional or negative set)."""

    sample: int
    set: int

    @property
    def conditional(self) -> bool:
        return self.set > 0


@dataclass(frozen=True)
class ModelInputs:
    """What condition sets become at the model's doors, batch-first. A door is None when no row uses it;
    rows that lack a door batch with rows that have it (``cat``: absent additions are zeros, absent extra
    tokens are masked out, absent channels are zeros)."""

    context: torch.Tensor  # (B, T, D) cross-attention tokens: the caption's, then the adapters'
    context_mask: torch.Tensor | None = None  # (B, T) 1 = attend to the token, 0 = ignore it; None: attend to all
    concat: torch.Tensor | None = None  # (B, C, h, w) declared extra input channels, appended to x_t
    time_addition: torch.Tensor | None = None  # (B, D_time) added to the UNet's timestep embedding
    input_addition: torch.Tensor | None = None  # (B, C_in, h, w) added to the output of the UNet's conv_in
    down_residuals: tuple[torch.Tensor, ...] | None = None  # added to each skip connection (ControlNet)
    mid_residual: torch.Tensor | None = None  # added to the middle block's output
    attention: Mapping[str, torch.Tensor] | None = None  # per-layer inputs for attention processors, batch-first
    rows: tuple[RowRole, ...] | None = None  # what each row computes (set by guidance; attention processors read it)

    @property
    def batch(self) -> int:
        return self.context.shape[0]

    @staticmethod
    def cat(parts: Sequence["ModelInputs"]) -> "ModelInputs":
        """Stack several inputs along the batch for one forward (see the class docstring for absent doors)."""
        if len(parts) == 1:
            return parts[0]
        width = max(p.context.shape[1] for p in parts)
        masked = any(p.context_mask is not None for p in parts) or len({p.context.shape[1] for p in parts}) > 1
        context = torch.cat([_pad_tokens(p.context, width) for p in parts])
        mask = torch.cat([_pad_mask(p, width) for p in parts]) if masked else None
        out = {"context": context, "context_mask": mask}
        for name in ("concat", "time_addition", "input_addition", "mid_residual"):
            out[name] = _cat_or_zeros([getattr(p, name) for p in parts], [p.batch for p in parts])
        residuals = [p.down_residuals for p in parts]
        if any(r is not None for r in residuals):
            like = next(r for r in residuals if r is not None)
            out["down_residuals"] = tuple(
                _cat_or_zeros([None if r is None else r[k] for r in residuals], [p.batch for p in parts])
                for k in range(len(like)))
        layers = sorted({name for p in parts for name in (p.attention or {})})
        if layers:
            out["attention"] = {name: _cat_or_zeros([(p.attention or {}).get(name) for p in parts],
                                                    [p.batch for p in parts]) for name in layers}
        if all(p.rows is not None for p in parts):
            out["rows"] = tuple(role for p in parts for role in p.rows)
        return ModelInputs(**out)

    def repeat(self, n: int) -> "ModelInputs":
        """The same inputs for n samples (each row repeated n times, in place)."""
        def rep(x):
            if x is None:
                return None
            if isinstance(x, tuple):
                return tuple(t.repeat_interleave(n, 0) for t in x)
            if isinstance(x, Mapping):
                return {k: t.repeat_interleave(n, 0) for k, t in x.items()}
            return x.repeat_interleave(n, 0)

        return replace(self, **{f.name: rep(getattr(self, f.name)) for f in fields(self) if f.name != "rows"},
                       rows=None if self.rows is None else tuple(r for r in self.rows for _ in range(n)))

    def with_rows(self, rows: Sequence[RowRole]) -> "ModelInputs":
        if len(rows) != self.batch:
            raise ValueError(f"{len(rows)} row roles for a batch of {self.batch}")
        return replace(self, rows=tuple(rows))


def _pad_tokens(tokens: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(tokens, (0, 0, 0, width - tokens.shape[1])) if tokens.shape[1] < width else tokens


def _pad_mask(inputs: ModelInputs, width: int) -> torch.Tensor:
    c = inputs.context
    mask = inputs.context_mask if inputs.context_mask is not None else torch.ones(c.shape[:2], device=c.device,
                                                                                   dtype=c.dtype)
    return F.pad(mask, (0, width - mask.shape[1])) if mask.shape[1] < width else mask


def _cat_or_zeros(values: list, batches: list[int]) -> torch.Tensor | None:
    """Concatenate along the batch; parts without the tensor contribute zeros (absent = adds nothing)."""
    if all(x is None for x in values):
        return None
    like = next(x for x in values if x is not None)
    return torch.cat([x if x is not None else like.new_zeros((n, *like.shape[1:])) for x, n in zip(values, batches)])


def forward_unet(unet: torch.nn.Module, x: torch.Tensor, step: Step | torch.Tensor, inputs: ModelInputs) -> torch.Tensor:
    """One UNet forward with every door of ``inputs``: x_t (B, C, h, w) -> the prediction (B, C, h, w).

    The input is [x_t | concat | input_addition] along channels (an INPUT door's conv_in adds the last part
    to its output); ``time_addition`` goes in as ``class_labels`` (the TIME door), residuals as diffusers'
    additional residuals. Attention processors installed by recomposer.attention get the step, the row
    roles and the per-layer inputs through ``cross_attention_kwargs``. ``step`` may be a bare timestep
    (training, where no schedule is followed).
    """
    parts = [x] + [a for a in (inputs.concat, inputs.input_addition) if a is not None]
    for part in parts[1:]:
        if part.shape[-2:] != x.shape[-2:]:
            raise InvalidParameter("size", f"latents of the size the conditions were encoded for "
                                   f"({part.shape[-1]}x{part.shape[-2]})", f"{x.shape[-1]}x{x.shape[-2]}")
    sample = torch.cat(parts, dim=1) if len(parts) > 1 else x
    t = step.timestep if isinstance(step, Step) else step
    time = inputs.time_addition
    if time is None and doors.installed(unet):  # diffusers wants class_labels once the slot is set: add nothing
        time = x.new_zeros(x.shape[0], unet.time_embedding.linear_2.out_features)
    extra = {}
    if inputs.down_residuals is not None:
        extra["down_block_additional_residuals"] = inputs.down_residuals
    if inputs.mid_residual is not None:
        extra["mid_block_additional_residual"] = inputs.mid_residual
    if getattr(unet, "recomposer_processors", False):
        from .attention.processors import Call

        extra["cross_attention_kwargs"] = {"call": Call(step, inputs.rows, inputs.attention or {})}
    return unet(sample, t, encoder_hidden_states=inputs.context, encoder_attention_mask=inputs.context_mask,
                class_labels=time, return_dict=False, **extra)[0]


class Denoiser(Protocol):
    prediction_type: str

    def encode(self, conds: ConditionSet) -> ModelInputs: ...

    def __call__(self, x: torch.Tensor, step: Step, inputs: ModelInputs) -> torch.Tensor: ...


class BackboneDenoiser:
    """A backbone and its adapter stack: it hears the caption (cross-attention; null = the empty string) and
    every kind some adapter consumes, each through the doors that adapter declares.

    ``size`` (width, height in pixels) is the generation size adapters encode local conditions for (default
    the backbone's native square). A kind no part of the model hears is refused by name.
    """

    def __init__(self, backbone: Backbone, size: tuple[int, int] | None = None):
        self.backbone = backbone
        self.prediction_type = backbone.prediction_type
        width, height = size or (backbone.native_size, backbone.native_size)
        f = backbone.vae_factor
        self.size = (v.multiple_of("width", width, f), v.multiple_of("height", height, f))  # pixels
        self.consumes = frozenset({"caption"}).union(*(a.consumes for a in backbone.adapters))
        self._prompts = {}  # caption -> its encoding: the sets of one run share captions (the empty one above all)
        self._step_adapters = [a for a in backbone.adapters if isinstance(a, StepAdapter)]

    @torch.no_grad()
    def encode(self, conds: ConditionSet) -> ModelInputs:
        unknown = set(conds) - self.consumes
        if unknown:
            allowed = "kinds this model has adapters for: " + ", ".join(sorted(self.consumes))
            raise InvalidParameter("conditions", allowed, sorted(unknown))
        b = self.backbone
        caption = conds.get("caption", Caption(""))
        if caption not in self._prompts:
            self._prompts[caption] = caption.prompts(b)  # tokens (1, T, D), mask (1, T) or None
        prompt = self._prompts[caption]
        tokens, masks, channels = [prompt.tokens], [prompt.mask], []
        additions: dict[str, torch.Tensor] = {}
        down, mid, attention = None, None, {}
        for adapter in b.adapters:
            part = adapter.encode(b, conds, self.size)
            if CONTEXT in part:
                extra, extra_mask = part[CONTEXT]  # (1, K, D), (1, K)
                tokens.append(extra.to(prompt.tokens))
                masks.append(extra_mask)
            if CONCAT in part:
                channels.append(part[CONCAT].to(b.dtype))
            for door, name in ((TIME, "time_addition"), (INPUT, "input_addition")):
                if door in part:
                    additions[name] = additions.get(name, 0) + part[door].to(b.dtype)
            if RESIDUALS in part:
                down, mid = _add_residuals((down, mid), part[RESIDUALS])
            attention.update(part.get(ATTENTION, {}))
        return ModelInputs(context=torch.cat(tokens, dim=1), context_mask=_join_masks(tokens, masks),
                           concat=torch.cat(channels, dim=1) if channels else None, down_residuals=down,
                           mid_residual=mid, attention=attention or None, **additions)

    def __call__(self, x: torch.Tensor, step: Step, inputs: ModelInputs) -> torch.Tensor:
        for adapter in self._step_adapters:  # doors that depend on x_t and the step (a ControlNet's residuals)
            part = adapter.at_step(self.backbone.unet, x, step, inputs)
            if RESIDUALS in part:
                down, mid = _add_residuals((inputs.down_residuals, inputs.mid_residual), part[RESIDUALS])
                inputs = replace(inputs, down_residuals=down, mid_residual=mid)
        return forward_unet(self.backbone.unet, x, step, inputs)


def _join_masks(tokens: list[torch.Tensor], masks: list[torch.Tensor | None]) -> torch.Tensor | None:
    """The context mask of tokens joined along T: None when every part attends to all of its tokens."""
    if all(m is None for m in masks):
        return None
    like = {"device": tokens[0].device, "dtype": tokens[0].dtype}
    return torch.cat([torch.ones(t.shape[:2], **like) if m is None else m.to(**like) for t, m in zip(tokens, masks)],
                     dim=1)


def _add_residuals(total: tuple, part: tuple) -> tuple:
    """Sum ControlNet-style residuals: (down tuple, mid) + (down tuple, mid)."""
    (down, mid), (more_down, more_mid) = total, part
    if down is None:
        return tuple(more_down), more_mid
    return tuple(a + b for a, b in zip(down, more_down)), mid + more_mid
