"""Guidance rules: functions from a denoiser and a plan over condition sets to a guided denoiser.

One rule covers classifier-free guidance, Composer's two-set guidance and per-condition terms:

    ε̂ = ε(x, c_base) + Σ_k  a_k(i) · s_k · (ε(x, c_k) − ε(x, c_base))

where a_k(i) is 1 while step i lies inside term k's [start, end] window of the schedule.
- CFG (Ho & Salimans 2022): c_base = ∅ (or the negative prompt), one term c_1 = the prompt, s = w.
- Composer (Huang et al. 2023, §3.2): ε̂ = ε(x, c2) + w·(ε(x, c1) − ε(x, c2)): c_base = c2, one term c1.
  With c2 ⊂ c1 only the conditions in c1 \\ c2 are strengthened; those in c2 \\ c1 are pushed away.
- Per-condition weights: several terms, each adding one condition (or group) on top of the base.
All sets needed at a step are evaluated in ONE batched forward: rows [base, active terms...] × B.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .conditions import ConditionSet
from .denoiser import Denoiser, ModelInputs
from .validation import fraction_window, real

GUIDANCE_MAX = 100.0


@dataclass(frozen=True)
class Term:
    """One guidance term: push towards ``conds`` (away from the base) with ``scale`` inside [start, end]."""

    conds: ConditionSet
    scale: float
    start: float = 0.0  # fraction of the schedule where the term switches on (0 = the noisiest step)
    end: float = 1.0  # fraction where it switches off

    def __post_init__(self) -> None:
        real("guidance", self.scale, 0.0, GUIDANCE_MAX)
        fraction_window("guidance", self.start, self.end)

    def active(self, index: int, count: int) -> bool:
        """Step ``index`` of ``count`` (schedule positions) lies inside the window (ControlNet's convention)."""
        return self.start <= index / count and (index + 1) / count <= self.end


@dataclass(frozen=True)
class GuidancePlan:
    base: ConditionSet  # c_base: the null set, a negative prompt, or Composer's c2
    terms: tuple[Term, ...]


def cfg(conds: ConditionSet, scale: float, negative: ConditionSet = ConditionSet()) -> GuidancePlan:
    """Classifier-free guidance: ε(neg) + scale·(ε(conds) − ε(neg))."""
    return GuidancePlan(base=negative, terms=(Term(conds, scale),))


def composer(c1: ConditionSet, c2: ConditionSet, w: float) -> GuidancePlan:
    """Composer's bidirectional guidance ε(c2) + w·(ε(c1) − ε(c2)) (Huang et al. 2023, Eq. 2)."""
    return GuidancePlan(base=c2, terms=(Term(c1, w),))


GuidedDenoiser = Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]


def guided(denoiser: Denoiser, plan: GuidancePlan, batch: int) -> GuidedDenoiser:
    """Encode every set of the plan once; return D(x, t, index, count) applying the rule above."""
    base = denoiser.encode(plan.base).repeat(batch)
    terms = [denoiser.encode(term.conds).repeat(batch) for term in plan.terms]

    def denoise(x: torch.Tensor, t: torch.Tensor, index: int, count: int) -> torch.Tensor:
        active = [k for k, term in enumerate(plan.terms) if term.active(index, count)]
        scales = [plan.terms[k].scale for k in active]
        # With one active term of scale 1 the base cancels: ε̂ = ε(c_1). Skip its forward (as diffusers does).
        need_base = not (len(active) == 1 and scales[0] == 1.0)
        rows = ([base] if need_base else []) + [terms[k] for k in active]
        out = denoiser(x.repeat(len(rows), 1, 1, 1), t, ModelInputs.cat(rows)).chunk(len(rows))  # R × (B, C, h, w)
        if not need_base:
            return out[0]
        prediction = out[0]
        for scale, term_out in zip(scales, out[1:]):
            prediction = prediction + scale * (term_out - out[0])
        return prediction

    return denoise
