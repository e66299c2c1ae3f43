"""Guidance rules: a denoiser and a plan over condition sets become a guided denoiser, itself a denoiser.

One rule covers classifier-free guidance, Composer's two-set guidance, per-condition terms and
InstructPix2Pix's dual guidance:

    ε̂ = ε(x, c_base) + Σ_k  a_k(i) · s_k · (ε(x, c_k) − ε(x, r_k))

where a_k(i) is 1 while step i lies inside term k's [start, end] window of the schedule, s_k is a signed
scale and r_k the term's reference set (the base unless the term names its own).
- CFG (Ho & Salimans 2022): c_base = ∅ (or the negative prompt), one term c_1 = the prompt, s = w.
- Composer (Huang et al. 2023, §3.2): ε̂ = ε(x, c2) + w·(ε(x, c1) − ε(x, c2)): c_base = c2, one term c1.
  With c2 ⊂ c1 only the conditions in c1 \\ c2 are strengthened; those in c2 \\ c1 are pushed away.
- Per-condition weights: several terms, each adding one condition (or group) on top of the base.
- InstructPix2Pix (Brooks et al. 2023, eq. 3): c_base = (∅, ∅), term (c_I, ∅) with s_I, term (c_I, c_T) with s_T
  and reference (c_I, ∅); s_I below 1 works as the formula says.
The sum is evaluated in this form (as diffusers' pipelines do); with one active term of scale 1 against the
base, the base cancels and is not evaluated (ε̂ = ε(x, c_1)). Every sample of a batch may follow its own plan
(Prompt-to-Prompt's source and edited rows); all the rows a step needs run in ONE batched forward, in
the order (set, sample) with set 0 the base, and each row's ``RowRole`` tells attention processors what
it computes.

A plan may rescale its guided prediction (Lin et al. 2024, §3.4, Algorithm 2; diffusers' ``guidance_rescale``):
a strong guidance inflates the prediction's spread, which on a zero-terminal-SNR model over-exposes the image,
so ε̂ is pulled towards the spread of the fullest conditional prediction ε_c (the active term with the most
conditions, the last of equals: the prompt, Composer's c1, InstructPix2Pix's (c_I, c_T)), per sample over all
its other axes, in the model's own parameterisation (ε or v, as diffusers):

    ε̂ ← φ · ε̂ · std(ε_c) / std(ε̂) + (1 − φ) · ε̂           φ = 0: no rescale (the default); 0.7 in the paper

Guidance may also hold only inside an interval of the schedule (Kynkäänniemi et al. 2024): ε̂ = ε(x, c) outside,
the full rule inside. ``guided_terms`` writes it as two terms, c with scale 1 always and c with w − 1 inside the
window, so that outside it the base cancels and is not evaluated (one row a sample instead of two).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .conditions import ConditionSet
from .denoiser import Denoiser, ModelInputs, RowRole, Step
from .errors import InvalidParameter
from .validation import fraction_window, real

GUIDANCE_MAX = 100.0


@dataclass(frozen=True)
class Term:
    """One guidance term: push towards ``conds`` and away from ``reference`` (None: the plan's base) with the
    signed ``scale`` inside [start, end] of the schedule."""

    conds: ConditionSet
    scale: float
    start: float = 0.0  # fraction of the schedule where the term switches on (0 = the noisiest step)
    end: float = 1.0  # fraction where it switches off
    reference: ConditionSet | None = None

    def __post_init__(self) -> None:
        real("guidance", self.scale, -GUIDANCE_MAX, GUIDANCE_MAX)
        fraction_window("guidance", self.start, self.end)

    def active(self, index: int, count: int) -> bool:
        """Step ``index`` of ``count`` (schedule positions) lies inside the window (ControlNet's convention)."""
        return self.start <= index / count and (index + 1) / count <= self.end


@dataclass(frozen=True)
class GuidancePlan:
    base: ConditionSet  # c_base: the null set, a negative prompt, or Composer's c2
    terms: tuple[Term, ...] = ()
    per_step: dict = field(default_factory=dict, compare=False)  # {(set index, position): ConditionSet} overrides
    rescale: float = 0.0  # φ of Lin et al. 2024's guidance rescale (module docstring), in [0, 1]

    def __post_init__(self) -> None:
        real("guidance-rescale", self.rescale, 0.0, 1.0)

    def sets(self) -> list[ConditionSet]:
        """The distinct condition sets the plan needs, the base first (identity decides what is distinct)."""
        found: list[ConditionSet] = [self.base]
        for term in self.terms:
            for conds in (term.conds, term.reference):
                if conds is not None and not any(conds is s for s in found):
                    found.append(conds)
        return found

    def active(self, position: int, count: int) -> list[Term]:
        return [term for term in self.terms if term.active(position, count)]

    def needed(self, position: int, count: int) -> list[int]:
        """Indices into ``sets()`` of the sets the step at ``position`` of ``count`` evaluates."""
        sets, active = self.sets(), self.active(position, count)
        if _base_cancels(active):
            return [_index(sets, active[0].conds)]
        needed = {0}
        for term in active:
            needed.add(_index(sets, term.conds))
            needed.add(_index(sets, term.reference if term.reference is not None else self.base))
        return sorted(needed)

    def combine(self, e: dict[int, torch.Tensor], position: int, count: int) -> torch.Tensor:
        """ε̂ from the predictions ``e`` (set index -> tensor) of the sets ``needed`` returned."""
        sets, active = self.sets(), self.active(position, count)
        if _base_cancels(active):
            return e[_index(sets, active[0].conds)]
        prediction = e[0]
        for term in active:
            reference = term.reference if term.reference is not None else self.base
            prediction = prediction + term.scale * (e[_index(sets, term.conds)] - e[_index(sets, reference)])
        if self.rescale and active:
            fullest = max(reversed(active), key=lambda term: len(term.conds))  # the last of equals
            prediction = rescaled(prediction, e[_index(sets, fullest.conds)], self.rescale)
        return prediction


def rescaled(guided: torch.Tensor, conditional: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2024, Algorithm 2): ``guided`` given ``conditional``'s spread per sample, mixed
    with itself by φ. Both (B, C, h, w)."""
    axes = tuple(range(1, guided.ndim))
    factor = conditional.std(dim=axes, keepdim=True) / guided.std(dim=axes, keepdim=True)  # (B, 1, 1, 1)
    return phi * (guided * factor) + (1 - phi) * guided


def _base_cancels(active: list[Term]) -> bool:
    return len(active) == 1 and active[0].scale == 1.0 and active[0].reference is None


def _index(sets: list[ConditionSet], conds: ConditionSet) -> int:
    return next(j for j, s in enumerate(sets) if s is conds)


def guided_terms(conds: ConditionSet, scale: float, start: float = 0.0, end: float = 1.0) -> tuple[Term, ...]:
    """The terms of guidance by ``scale`` towards ``conds`` inside [start, end] and none outside (ε̂ = ε(conds)
    there: Kynkäänniemi et al. 2024's guidance interval); the whole schedule, or a scale of 1: one term."""
    if (start, end) == (0.0, 1.0) or scale == 1.0:
        return (Term(conds, scale),)
    return Term(conds, 1.0), Term(conds, scale - 1.0, start, end)


def cfg(conds: ConditionSet, scale: float, negative: ConditionSet = ConditionSet(), rescale: float = 0.0,
        interval: tuple[float, float] = (0.0, 1.0)) -> GuidancePlan:
    """Classifier-free guidance: ε(neg) + scale·(ε(conds) − ε(neg)) inside ``interval`` of the schedule (ε(conds)
    outside), rescaled by φ = ``rescale``."""
    return GuidancePlan(base=negative, terms=guided_terms(conds, scale, *interval), rescale=rescale)


def composer(c1: ConditionSet, c2: ConditionSet, w: float) -> GuidancePlan:
    """Composer's bidirectional guidance ε(c2) + w·(ε(c1) − ε(c2)) (Huang et al. 2023, Eq. 2)."""
    return GuidancePlan(base=c2, terms=(Term(c1, w),))


def dual(image: ConditionSet, both: ConditionSet, image_scale: float, text_scale: float,
         null: ConditionSet = ConditionSet(), rescale: float = 0.0) -> GuidancePlan:
    """InstructPix2Pix: ε(∅,∅) + s_I·[ε(c_I,∅) − ε(∅,∅)] + s_T·[ε(c_I,c_T) − ε(c_I,∅)] (Brooks et al. 2023, eq. 3),
    rescaled by φ = ``rescale`` towards ε(c_I, c_T)'s spread."""
    return GuidancePlan(base=null, terms=(Term(image, image_scale), Term(both, text_scale, reference=image)),
                        rescale=rescale)


@dataclass(frozen=True)
class GuidedInputs:
    """A batch's plans encoded: per sample, its plan and the ModelInputs (one row) of each of its sets."""

    plans: tuple[GuidancePlan, ...]  # one per sample
    encoded: tuple[tuple[ModelInputs, ...], ...]  # [sample][set] one row each
    per_step: dict = field(default_factory=dict)  # {(sample, set, position): ModelInputs} overrides (inversion)
    layouts: dict = field(default_factory=dict, init=False, compare=False, repr=False)  # Layout per step shape
    # (built once per run; init=False: a replace()d copy, e.g. with other encodings, starts its own)

    @property
    def batch(self) -> int:
        return len(self.plans)

    def at(self, sample: int, j: int, position: int) -> ModelInputs:
        return self.per_step.get((sample, j, position), self.encoded[sample][j])

    def layout(self, needed: tuple[tuple[int, ...], ...], position: int, device: torch.device) -> "Layout":
        """The rows of a step that evaluates ``needed`` (built once per distinct step shape, then reused)."""
        key = (needed, position if self.per_step else None, device)
        if key not in self.layouts:
            self.layouts[key] = _layout(self, needed, position, device)
        return self.layouts[key]


class Guided:
    """A denoiser that applies each sample's guidance plan (module docstring): ``encode(plans)`` once per run,
    then ``guided(x, step, inputs)`` per step, like any denoiser."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser = denoiser
        self.prediction_type = denoiser.prediction_type

    def encode(self, plans: GuidancePlan | Sequence[GuidancePlan], batch: int | None = None) -> GuidedInputs:
        """Encode every distinct set once. ``plans``: one plan for all ``batch`` samples, or one per sample."""
        if isinstance(plans, GuidancePlan):
            if batch is None:
                raise InvalidParameter("batch", "given with a single plan", None)
            plans = (plans,) * batch
        plans = tuple(plans)
        cache: dict[int, ModelInputs] = {}

        def encode(conds: ConditionSet) -> ModelInputs:
            if id(conds) not in cache:
                cache[id(conds)] = self.denoiser.encode(conds)
            return cache[id(conds)]

        encoded = tuple(tuple(encode(c) for c in plan.sets()) for plan in plans)
        per_step = {(k, j, position): encode(conds) for k, plan in enumerate(plans)
                    for (j, position), conds in plan.per_step.items()}
        return GuidedInputs(plans, encoded, per_step)

    def __call__(self, x: torch.Tensor, step: Step, inputs: GuidedInputs) -> torch.Tensor:
        position, count = step.position, step.schedule_length
        needed = tuple(tuple(plan.needed(position, count)) for plan in inputs.plans)  # [sample] -> set indices
        layout = inputs.layout(needed, position, x.device)
        out = self.denoiser(x.index_select(0, layout.take), step, layout.inputs)  # (R, C, h, w): one forward
        if len(layout.groups) == 1:  # one plan for the whole batch
            plan, _, rows = layout.groups[0]
            return plan.combine({j: out[r] for j, r in rows.items()}, position, count)
        prediction = torch.empty_like(out[:len(x)])
        for plan, samples, rows in layout.groups:  # samples that share a plan are combined together
            prediction[samples] = plan.combine({j: out[r] for j, r in rows.items()}, position, count)
        return prediction


class Layout(NamedTuple):
    """One step's rows: in the order (set, sample), the batched inputs, the sample each row denoises (``take``),
    and per group of samples sharing a plan, its samples and each needed set's rows (slices where consecutive)."""

    inputs: ModelInputs
    take: torch.Tensor
    groups: tuple[tuple["GuidancePlan", list[int], dict[int, "slice | torch.Tensor"]], ...]


def _layout(inputs: GuidedInputs, needed: tuple[tuple[int, ...], ...], position: int,
            device: torch.device) -> Layout:
    rows = sorted((j, k) for k, sets in enumerate(needed) for j in sets)  # (set, sample): the base rows first
    model_inputs = ModelInputs.cat([inputs.at(k, j, position) for j, k in rows])
    model_inputs = model_inputs.with_rows([RowRole(k, j) for j, k in rows])
    take = torch.tensor([k for _, k in rows], device=device)
    row_of = {jk: r for r, jk in enumerate(rows)}
    groups = tuple((plan, samples, {j: _rows([row_of[j, k] for k in samples], device) for j in needed[samples[0]]})
                   for plan, samples in _groups(inputs.plans))
    return Layout(model_inputs, take, groups)


def _rows(indices: list[int], device: torch.device) -> "slice | torch.Tensor":
    first = indices[0]
    if indices == list(range(first, first + len(indices))):
        return slice(first, first + len(indices))
    return torch.tensor(indices, device=device)


def _groups(plans: tuple[GuidancePlan, ...]) -> list[tuple[GuidancePlan, list[int]]]:
    groups: dict[int, tuple[GuidancePlan, list[int]]] = {}
    for k, plan in enumerate(plans):
        groups.setdefault(id(plan), (plan, []))[1].append(k)
    return list(groups.values())


def guided(denoiser: Denoiser, plan: GuidancePlan | Sequence[GuidancePlan], batch: int | None = None):
    """A guided denoiser and its encoded inputs in one go: (Guided(denoiser), inputs)."""
    g = Guided(denoiser)
    return g, g.encode(plan, batch)
