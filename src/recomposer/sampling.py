"""The one denoising loop, and the ways a run starts (noise, img2img, inpainting).

Every method runs through ``sample``: it owns batching, guidance (via the guided denoiser), step hooks,
callbacks, cancellation, resampling and gradients; the update rule is the diffusers scheduler's.
Randomness is per sample: sample k uses its own ``torch.Generator`` (seed + k) for its initial noise, its
VAE posterior draw and any ancestral noise, so a batch of N equals N single runs.

Hooks act on the loop's state: a ``before`` hook sees x_t before the model does and may replace it (RePaint
merges the known region here); an ``after`` hook sees the whole ``StepState`` (x_t, the prediction, x̂₀,
the scheduler's x_{t−1} and the next timestep) and returns the x_{t−1} the loop continues from (the
inpainting blend, masked ILVR, Prompt-to-Prompt's local blend). Inversion runs the same loop with an
inverse scheduler (inversion.py). Resampling (RePaint, Lugmayr et al. 2022) is a schedule of positions
that may step back: going back from position i to j < i re-noises x with q(x_{t_j} | x_{t_i}).
"""

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .denoiser import Step
from .errors import Cancelled, FlatResult, InvalidParameter, NonFiniteResult


@dataclass(frozen=True)
class StepState:
    """What an after-hook sees: the step, x_t, the (guided) prediction, x̂₀, the scheduler's x_{t−1}."""

    step: Step
    x: torch.Tensor  # (B, C, h, w) x_t entering the step
    prediction: torch.Tensor  # (B, C, h, w) ε or v, as the model predicts
    x0: torch.Tensor  # (B, C, h, w) the predicted clean latents x̂₀
    x_next: torch.Tensor  # (B, C, h, w) x_{t−1} after the update (what the hook returns, possibly changed)
    scheduler: SchedulerMixin
    t_next: torch.Tensor | None  # the next step's timestep (None after the last)


BeforeHook = Callable[[torch.Tensor, Step], torch.Tensor]  # x_t -> x_t, before the model sees it
StepHook = Callable[[StepState], torch.Tensor]  # -> x_{t−1}, after the scheduler's update
StepCallback = Callable[[StepState], None]  # sees the step's state (x_{t−1}, x̂₀); progress and previews


def sample(denoise, inputs, scheduler: SchedulerMixin, x: torch.Tensor, generators: Sequence[torch.Generator], *,
           first: int = 0, before: Sequence[BeforeHook] = (), hooks: Sequence[StepHook] = (),
           callback: StepCallback | None = None, cancel: Callable[[], bool] | None = None,
           positions: Sequence[int] | None = None, grad: bool = False) -> torch.Tensor:
    """Run the scheduler's timesteps from position ``first`` on x (B, C, h, w); return the final latents.

    ``denoise(x, step, inputs)`` is any denoiser (a guided one takes its GuidedInputs). ``positions``: the
    order to visit schedule positions in (default first, first + 1, …; see ``resampling_positions``).
    ``grad``: keep autograd on (null-text inversion optimises through the loop's steps); off by default.
    """
    schedule = list(scheduler.timesteps)
    positions = list(range(first, len(schedule))) if positions is None else list(positions)
    step_kwargs = _step_kwargs(scheduler, list(generators))
    count = len(positions)
    with torch.set_grad_enabled(grad):
        previous = None
        for index, position in enumerate(positions):
            if cancel is not None and cancel():
                raise Cancelled(f"cancelled before step {index + 1} of {count}")
            if previous is not None and position <= previous:  # a step back: re-noise to the earlier level
                x = renoise(scheduler, x, previous + 1, position, generators)
            t = schedule[position]
            step = Step(index, count, position, len(schedule), t)
            for hook in before:
                x = hook(x, step)
            _set_step_index(scheduler, position)
            prediction = denoise(scheduler.scale_model_input(x, t), step, inputs)
            out = scheduler.step(prediction, t, x, **step_kwargs, return_dict=True)
            t_next = schedule[position + 1] if position + 1 < len(schedule) else None
            state = StepState(step, x, prediction, _x0(scheduler, out, x, t, prediction), out.prev_sample, scheduler,
                              t_next)
            for hook in hooks:
                state = StepState(step, x, prediction, state.x0, hook(state), scheduler, t_next)
            x, previous = state.x_next, position
            if callback is not None:
                callback(state)
    return x


def _step_kwargs(scheduler: SchedulerMixin, generators: list[torch.Generator]) -> dict:
    """Ancestral and stochastic schedulers draw noise in ``step``: give them the per-sample generators."""
    accepted = inspect.signature(scheduler.step).parameters
    return {"generator": generators} if "generator" in accepted else {}


def _set_step_index(scheduler: SchedulerMixin, position: int) -> None:
    """Schedulers that count their steps (Euler, Heun, DPM-Solver, UniPC) start from the timestep they are given,
    then add one per step; the loop keeps that count at its own position (the same number, unless it resampled)."""
    if getattr(scheduler, "_step_index", None) is not None:
        scheduler._step_index = position


def _x0(scheduler: SchedulerMixin, out, x: torch.Tensor, t: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """x̂₀: the scheduler's own where it reports one, else from ᾱ_t in the variance-preserving form."""
    x0 = getattr(out, "pred_original_sample", None)
    if x0 is not None:
        return x0
    alpha = scheduler.alphas_cumprod.to(x.device)[int(t)].to(x.dtype)  # ᾱ_t
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (x - (1 - alpha).sqrt() * prediction) / alpha.sqrt()
    if kind == "v_prediction":
        return alpha.sqrt() * x - (1 - alpha).sqrt() * prediction
    return prediction


def renoise(scheduler: SchedulerMixin, x: torch.Tensor, level: int, to: int,
            generators: Sequence[torch.Generator]) -> torch.Tensor:
    """x at the noise level of schedule position ``level`` (len(timesteps): clean) taken back up to position ``to``
    < level: q(x_to | x_level). Variance-preserving schedulers (DDIM, DDPM): x·√(ᾱ_to/ᾱ_level) +
    √(1 − ᾱ_to/ᾱ_level)·ε; sigma-scaled ones (Euler, Euler a), whose x is x̂₀ + σ·ε: x + √(σ_to² − σ_level²)·ε."""
    eps = noise(x.shape, generators, x.device, x.dtype)
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and scheduler.init_noise_sigma != 1.0:
        s_level = sigmas[level] if level < len(sigmas) else torch.tensor(0.0)
        return x + (sigmas[to] ** 2 - s_level ** 2).clamp(min=0).sqrt().to(x) * eps
    a = scheduler.alphas_cumprod.to(x.device)
    t = scheduler.timesteps
    a_level = a[int(t[level])] if level < len(t) else torch.tensor(1.0, device=x.device)
    ratio = (a[int(t[to])] / a_level).to(x.dtype)
    return ratio.sqrt() * x + (1 - ratio).clamp(min=0).sqrt() * eps


def resampling_positions(count: int, start: int, jump: int, resamples: int) -> list[int]:
    """RePaint's schedule over positions 0 … count − 1: plain steps until ``start``, then every ``jump`` steps go
    back ``jump`` positions ``resamples`` times before moving on (Lugmayr et al. 2022, Alg. 1). ``resamples`` 0
    is the plain schedule. The loop costs len(positions) UNet evaluations instead of count."""
    for name, value, low in (("start", start, 0), ("jump", jump, 1), ("resamples", resamples, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidParameter(name, f"an integer >= {low}", value)
    positions, i = list(range(min(start, count))), min(start, count)
    while i < count:
        block = list(range(i, min(i + jump, count)))
        positions += block
        for _ in range(resamples if block[-1] + 1 < count else 0):  # no resampling after the very last step
            positions += block
        i += jump
    return positions


def noise(shape: tuple[int, ...], generators: Sequence[torch.Generator], device: torch.device,
          dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise (B, ...), row k drawn from generators[k] on that generator's device."""
    rows = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generators]
    return torch.cat(rows).to(device)


def strength_start(scheduler: SchedulerMixin, steps: int, strength: float) -> int:
    """img2img: skip the first (1 − strength) of the schedule; return the first position to run."""
    skipped = steps - min(int(steps * strength), steps)
    first = skipped * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(first)
    return first


def inpaint_blend(scheduler: SchedulerMixin, known: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor) -> StepHook:
    """Keep the known region (mask 0) from the source latents, noised to the next step's level.

    x ← (1 − m)·q(x_known at t_next) + m·x, after each step; at the last step the clean latents
    are used. This merges after the step, as diffusers does (RePaint merges before it).
    """

    def hook(state: StepState) -> torch.Tensor:
        source = known if state.t_next is None else scheduler.add_noise(known, eps, state.t_next.reshape(1))
        return (1 - mask) * source + mask * state.x_next

    return hook


def check_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """NaN/inf are reported as an error, never passed on (and never saved as a black image)."""
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteResult(what, "became NaN or inf (try fp32, or a lower guidance scale); nothing was saved")
    return x


def decode_checked(backbone, x: torch.Tensor, allow_flat: bool = False) -> torch.Tensor:
    """Latents (B, C, h, w) -> pixels (B, 3, H, W) in about [-1, 1]. NaN or inf anywhere is an error, and so
    is an image of one flat colour in 8 bits unless ``allow_flat`` (RELIABILITY R5: never a black picture)."""
    pixels = check_finite(backbone.decode(check_finite(x, "latents")), "decoded image")
    if not allow_flat:
        levels = ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round()  # (B, 3, H, W) as to_pil stores them
        flat = (levels.amax(dim=(2, 3)) == levels.amin(dim=(2, 3))).all(dim=1)  # (B,)
        if bool(flat.any()):
            k = int(flat.nonzero()[0])
            colour = tuple(int(c) for c in levels[k, :, 0, 0])
            raise FlatResult("output", f"image {k} of the batch is one flat colour (RGB {colour}): the model drew "
                                       "nothing; nothing was saved (--allow-flat keeps such images)")
    return pixels
