"""Condition dropout for joint training: a pure function of (kinds, batch size, rates, generator).

Composer (Huang et al. 2023, §3.3): "each condition dropped independently with probability 0.5;
all dropped with 0.1; all kept with 0.1; intensity dropped with 0.7". The paper does not say how
the three rules combine; we follow the closest public code from the same group (VideoComposer),
and say exactly how:

    1. each sample first draws its mode from one uniform u ~ U[0, 1):
         u < all_dropped                          -> every condition dropped
         all_dropped <= u < all_dropped + all_kept -> every condition kept      (the sets are disjoint)
         … <= u < all_dropped + all_kept + caption_alone -> the caption kept, every other condition dropped
         otherwise                                -> step 2
       ``caption_alone`` is ours, not the paper's (default 0: the paper's rule): the Composer paper starts
       from a text-to-image base, and a UNet trained jointly from scratch rarely meets a sample where the
       caption is the only clue to the layout (with the defaults, under 1% of samples), so it barely learns to hear it.
    2. each condition k is dropped independently with its own rate p_k (``drop``, or ``per_kind[k]``:
       intensity 0.7), from its own uniform draw.
    No rescaling: the per-condition rates apply only inside the remaining r = 1 − all_dropped − all_kept −
    caption_alone, so (a = caption_alone)
        P(k kept)        = all_kept + r · (1 − p_k)            (+ a for the caption)
        P(all dropped)   = all_dropped + r · Π_k p_k
        P(all kept)      = all_kept + r · Π_k (1 − p_k)
    With the defaults: a condition at 0.5 is kept with 0.1 + 0.8·0.5 = 0.5, intensity with 0.1 + 0.8·0.3 = 0.34.

Draws (always all of them, whatever the outcome, so that the generator advances the same way every
time): one (B,) uniform for the modes, then one (B, K) uniform for the K kinds taken in sorted order.
The masks therefore depend on the set of kinds, not on the order they are listed in. Unlike sgm's
embedders, nothing is stateful: the unconditional pass at sampling time is simply the empty set.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from .. import validation as v
from ..errors import InvalidParameter


@dataclass(frozen=True)
class DropoutRates:
    """Condition-dropout rates for joint training (Composer §3.3 defaults)."""

    drop: float = 0.5  # each condition dropped independently with this, unless per_kind says otherwise
    all_dropped: float = 0.1  # share of samples with every condition dropped (unconditional: learns ε(x_t, ∅))
    all_kept: float = 0.1  # share of samples with every condition kept (disjoint from all_dropped)
    caption_alone: float = 0.0  # share of samples with the caption kept and every other condition dropped
    per_kind: Mapping[str, float] = field(  # kind -> its own independent drop rate
        default_factory=lambda: {"intensity": 0.7})  # intensity carries most of the image: dropped more often

    def __post_init__(self) -> None:
        for name in ("drop", "all_dropped", "all_kept", "caption_alone"):
            v.real(f"dropout.{name}", getattr(self, name), 0.0, 1.0)
        if self.all_dropped + self.all_kept > 1.0:
            raise InvalidParameter("dropout.all_kept", f"at most 1 − all_dropped = {1 - self.all_dropped:g}",
                                   self.all_kept)
        if self.all_dropped + self.all_kept + self.caption_alone > 1.0:
            raise InvalidParameter("dropout.caption_alone",
                                   f"at most 1 − all_dropped − all_kept = {1 - self.all_dropped - self.all_kept:g}",
                                   self.caption_alone)
        if not isinstance(self.per_kind, Mapping):
            raise InvalidParameter("dropout.per_kind", "a mapping kind -> rate", self.per_kind)
        for kind, rate in self.per_kind.items():
            if not isinstance(kind, str):
                raise InvalidParameter("dropout.per_kind", "condition kinds (strings) as keys", kind)
            v.real(f"dropout.per_kind.{kind}", rate, 0.0, 1.0)
        object.__setattr__(self, "per_kind", MappingProxyType(dict(self.per_kind)))  # read-only copy

    def rate(self, kind: str) -> float:
        """The independent drop rate of ``kind`` (step 2 of the module docstring)."""
        return float(self.per_kind.get(kind, self.drop))


def condition_keep(kinds: Sequence[str], batch: int, rates: DropoutRates,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Keep masks for one batch: kind -> (B,) bool on the generator's device, True = the condition is kept.

    See the module docstring for the rule and the order of the draws.
    """
    if isinstance(kinds, str) or not all(isinstance(k, str) for k in kinds) or len(set(kinds)) != len(kinds):
        raise InvalidParameter("kinds", "distinct condition kinds (a sequence of strings)", kinds)
    v.integer("batch", batch, 1)
    if not isinstance(rates, DropoutRates):
        raise InvalidParameter("rates", "a DropoutRates", type(rates).__name__)
    order = sorted(kinds)
    device = generator.device
    mode = torch.rand(batch, generator=generator, device=device)  # (B,)
    each = torch.rand(batch, len(order), generator=generator, device=device)  # (B, K)
    all_dropped = mode < rates.all_dropped  # (B,)
    all_kept = (mode >= rates.all_dropped) & (mode < rates.all_dropped + rates.all_kept)  # (B,)
    first = rates.all_dropped + rates.all_kept
    alone = (mode >= first) & (mode < first + rates.caption_alone)  # (B,)
    p = torch.tensor([rates.rate(k) for k in order], device=device)  # (K,)
    caption = torch.tensor([k == "caption" for k in order], device=device)  # (K,)
    kept = ((each >= p) | all_kept[:, None]) & ~all_dropped[:, None]  # (B, K)
    kept = torch.where(alone[:, None], caption[None].expand_as(kept), kept)
    return {kind: kept[:, order.index(kind)] for kind in kinds}
