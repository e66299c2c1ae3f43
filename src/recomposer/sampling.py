"""The one denoising loop, and the ways a run starts (noise, img2img, inpainting).

Every method runs through ``sample``: it owns batching, guidance (via the guided denoiser),
step hooks, callbacks and cancellation; the update rule is the diffusers scheduler's.
Randomness is per sample: sample k uses its own ``torch.Generator`` (seed + k) for its initial
noise, its VAE posterior draw and any ancestral noise, so a batch of N equals N single runs.
"""

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .errors import Cancelled, FlatResult, NonFiniteResult
from .guidance import GuidedDenoiser


@dataclass(frozen=True)
class Step:
    """Where the loop is: ``index`` of ``count`` steps in this run; ``position`` of ``schedule_length``
    in the whole schedule (img2img starts part-way); ``timestep`` the scheduler's t."""

    index: int
    count: int
    position: int
    schedule_length: int
    timestep: torch.Tensor


StepHook = Callable[[torch.Tensor, Step], torch.Tensor]  # x_{t-1} -> x_{t-1}, after each scheduler step
StepCallback = Callable[[Step, torch.Tensor], None]  # sees x_{t-1}; for progress bars and previews


def sample(denoise: GuidedDenoiser, scheduler: SchedulerMixin, x: torch.Tensor, generators: Sequence[torch.Generator],
           *, first: int = 0, hooks: Sequence[StepHook] = (), callback: StepCallback | None = None,
           cancel: Callable[[], bool] | None = None) -> torch.Tensor:
    """Run the scheduler's timesteps from position ``first`` on x (B, C, h, w); return the final latents."""
    timesteps = scheduler.timesteps[first:]
    step_kwargs = _step_kwargs(scheduler, list(generators))
    for index, t in enumerate(timesteps):
        if cancel is not None and cancel():
            raise Cancelled(f"cancelled before step {index + 1} of {len(timesteps)}")
        step = Step(index, len(timesteps), first + index, len(scheduler.timesteps), t)
        prediction = denoise(scheduler.scale_model_input(x, t), t, step.position, step.schedule_length)
        x = scheduler.step(prediction, t, x, **step_kwargs, return_dict=False)[0]
        for hook in hooks:
            x = hook(x, step)
        if callback is not None:
            callback(step, x)
    return x


def _step_kwargs(scheduler: SchedulerMixin, generators: list[torch.Generator]) -> dict:
    """Ancestral and stochastic schedulers draw noise in ``step``: give them the per-sample generators."""
    accepted = inspect.signature(scheduler.step).parameters
    return {"generator": generators} if "generator" in accepted else {}


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

    def hook(x: torch.Tensor, step: Step) -> torch.Tensor:
        source = known
        if step.position + 1 < step.schedule_length:
            t_next = scheduler.timesteps[step.position + 1: step.position + 2]
            source = scheduler.add_noise(known, eps, t_next)
        return (1 - mask) * source + mask * x

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
            raise FlatResult("output", f"image {k} of the batch is one flat colour (RGB {colour}): the model drew nothing; "
                                      "nothing was saved (--allow-flat keeps such images)")
    return pixels
