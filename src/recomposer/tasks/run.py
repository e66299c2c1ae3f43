"""The run around the loop, written once: schedule and per-sample generators, the starting latents (noise,
img2img, inpainting), the loop, decoding and the checks. Every task, the training sample grids and the
benchmarks use it.

Starting latents, sample k from its own generator (seed + k), in diffusers' order of draws:
- no image: ε·σ_init over the whole schedule;
- an image: the VAE posterior (a sample, as diffusers' img2img; or its mode, ``posterior="mode"``), then ε,
  then x = q(x_t | x_0) at the first step of the last ``strength`` of the schedule; an inpainting run
  (``inpainting``) at strength 1 starts from pure noise ε·σ_init and draws no posterior sample unless the
  blend needs the known latents (diffusers' inpainting, for 4- and 9-channel UNets alike);
- ``keep``: a mask (1, 1, H, W), 1 = generate: the known latents are blended back outside it after every
  step (``sampling.inpaint_blend``), for models that do not hear the masked image themselves. At latent
  size a cell is regenerated where its nearest pixel is (diffusers' rule) or where any of its pixels is
  (``cells="any"``: the blend never pins a cell an edit needs).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models.backbone import Backbone
from ..progress import stage
from ..sampling import BeforeHook, StepCallback, StepHook, decode_checked, inpaint_blend, noise, sample, strength_start
from ..schedulers import make_scheduler


@dataclass(frozen=True)
class Sampling:
    """How a run samples: what every task's request shares."""

    scheduler: str  # schedulers.NAMES
    steps: int  # steps over the whole schedule
    seed: int  # sample k uses seed + k
    batch: int
    strength: float | None = None  # with an image: the share of the schedule that is run
    allow_flat: bool = False  # keep an image of one flat colour (otherwise an error)
    seeds: tuple[int, ...] | None = None  # each sample's own seed (default seed + k); P2P's rows share one

    def generators(self) -> list[torch.Generator]:
        seeds = self.seeds if self.seeds is not None else [self.seed + k for k in range(self.batch)]
        return [torch.Generator("cpu").manual_seed(s) for s in seeds]


@dataclass(frozen=True)
class Run:
    latents: torch.Tensor  # (B, C, h, w) the final latents
    pixels: torch.Tensor  # (B, 3, H, W) decoded, in about [-1, 1], checked
    evaluations: int  # UNet forwards the loop made (batched forwards, not rows)


def run(denoise, inputs, backbone: Backbone, sampling: Sampling, size: tuple[int, int], *,
        image: torch.Tensor | None = None, inpainting: bool = False, keep: torch.Tensor | None = None,
        cells: str = "nearest", posterior: str = "sample",
        before: Sequence[BeforeHook] = (), hooks: Sequence[StepHook] = (), callback: StepCallback | None = None,
        cancel=None, positions: Sequence[int] | None = None, start: torch.Tensor | None = None,
        start_position: int = 0) -> Run:
    """Sample ``sampling.batch`` images of ``size`` (width, height) with ``denoise(x, step, inputs)``.

    image (1, 3, H, W) in [-1, 1]: start from it (img2img; with ``keep`` or a mask-hearing model, inpainting).
    start (B, C, h, w): start from these latents instead (an inversion's), at schedule position ``start_position``
    (0: x_T, the whole schedule).
    """
    b = backbone
    width, height = size
    off_native(b, size)
    scheduler = make_scheduler(sampling.scheduler, b.scheduler_config)
    scheduler.set_timesteps(sampling.steps, device=b.device)
    generators = sampling.generators()
    shape = (sampling.batch, b.latent_channels, height // b.vae_factor, width // b.vae_factor)
    first, hooks = 0, list(hooks)
    if start is not None:
        x, first = start.to(b.device, b.dtype), start_position
    elif image is None:
        x = noise(shape, generators, b.device, b.dtype) * scheduler.init_noise_sigma
    else:
        strength = 1.0 if sampling.strength is None else sampling.strength
        first = strength_start(scheduler, sampling.steps, strength)
        full_noise = strength == 1.0 and inpainting
        known = None
        if not full_noise or keep is not None:  # the source latents: a start point, or what the blend keeps
            dist = b.encode_image(image)
            known = torch.cat([dist.sample(g) for g in generators]) if posterior == "sample" else \
                dist.mode().repeat(sampling.batch, 1, 1, 1)
            known = known * b.vae.config.scaling_factor  # (B, C, h, w)
        eps = noise(shape, generators, b.device, b.dtype)
        if full_noise:
            x = eps * scheduler.init_noise_sigma  # pure noise, as diffusers' inpainting at full strength
        else:
            x = scheduler.add_noise(known, eps, scheduler.timesteps[first:first + 1].repeat(sampling.batch))
        if keep is not None:
            latent_mask = keep_at_latent_size(keep, shape[-2:], cells).to(b.device, b.dtype)
            hooks.append(inpaint_blend(scheduler, known, eps, latent_mask))
    evaluations = []
    total = len(positions) if positions is not None else len(scheduler.timesteps) - first
    with stage("sampling", total=total) as advance:
        x = sample(denoise, inputs, scheduler, x, generators, first=first, before=before, hooks=hooks,
                   callback=_counting(callback, evaluations, advance), cancel=cancel, positions=positions)
    return Run(x, decode_checked(b, x, sampling.allow_flat), len(evaluations))


def off_native(backbone: Backbone, size: tuple[int, int]) -> None:
    """One notice (printed once per run of the CLI) when a backbone samples at another size than it was made for:
    a model trained at 64 px draws worse at 256 px, and a user should not have to guess why."""
    import warnings

    from ..errors import Notice

    native = backbone.native_size
    if tuple(size) != (native, native):
        warnings.warn(Notice(f"size: the model was trained at {native}x{native} px; {size[0]}x{size[1]} is off its "
                             "native size (expect weaker images)"), stacklevel=3)


def keep_at_latent_size(mask: torch.Tensor, size: tuple[int, int], cells: str = "nearest") -> torch.Tensor:
    """A pixel mask (1, 1, H, W), 1 = generate, at latent size: each cell takes its nearest pixel's value, or
    (``cells="any"``) 1 if any of its pixels is 1 (max-pool)."""
    if cells == "any":
        return torch.nn.functional.adaptive_max_pool2d(mask.float(), size)
    return torch.nn.functional.interpolate(mask.float(), size=size)


def _counting(callback: StepCallback | None, seen: list, advance) -> StepCallback:
    def counted(state):
        seen.append(state.step.index)
        advance(len(seen))
        if callback is not None:
            callback(state)

    return counted
