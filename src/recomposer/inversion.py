"""Real-image inversion through the one loop: find the noise (and null embeddings) a backbone turns into an image.

- DDIM inversion (Song et al. 2021; Dhariwal & Nichol 2021): the loop run with diffusers' DDIM inverse
  scheduler from the image's latents (the VAE posterior's mode) up to x_T, guidance 1 on the prompt: the
  deterministic DDIM path, walked backwards, recorded at every level.
- Null-text inversion (Mokady et al. 2023): the generation loop (DDIM, guidance w) from that x_T, where before
  each step a hook optimises the unconditional embedding ∅_i so that the guided step lands on the DDIM path's
  next latent: Adam, lr 1e-2·(1 − i/100), at most ``inner`` iterations, stopping once the loss is below
  1e-5 + i·2e-5, in fp32 whatever the model's dtype; ∅_i carries over to step i + 1 as its start.
- Negative-prompt inversion (Miyake et al. 2023): no optimisation; the unconditional embedding at every step is
  the prompt's own (ε̂ = ε(c) at the source), so the guided DDIM run retraces the DDIM path. Far faster.
- Direct inversion (Ju et al. 2024, "PnP inversion"): no optimisation either; the DDIM path is kept, and an edit puts
  its source row back on it after every step (``direct_hook``): the source branch is the image exactly (up to the
  VAE), while the edited row follows its own prompt with the source's attention. As fast as DDIM inversion.

On a schedule with zero terminal SNR (ᾱ_T = 0, Lin et al. 2024: the bundled model's) the last inverse step keeps
nothing of the image (x_T = ε̂ exactly), and sampling from it has to guess the image back from pure noise. There
the path stops one level lower, at the sampling schedule's second timestep, and an edit starts sampling there
(``InversionInfo.first`` = 1): every level the path keeps still holds √ᾱ_t·x₀.

An ``Inversion`` (x_T, the per-step null embeddings when optimised, what it was made from) is saved as
inversion.safetensors + inversion.json and loads back bit-identically, so every later edit of the image
(Prompt-to-Prompt) costs one sampling run.
"""

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMInverseScheduler

from . import validation as v
from .conditions import Caption, ConditionSet
from .denoiser import BackboneDenoiser, ModelInputs
from .errors import ModelError, RecomposerError
from .guidance import Guided, cfg
from .io.files import write_folder
from .io.weights import load_safetensors
from .models.backbone import Backbone
from .progress import stage
from .requests import INVERSION_METHODS
from .sampling import StepState, sample
from .schedulers import make_scheduler

METHODS = INVERSION_METHODS
FORMAT = 1


@dataclass(frozen=True)
class InversionInfo:
    """What an inversion was made from (inversion.json): an edit refuses an inversion of another model or size."""

    method: str
    prompt: str
    steps: int
    guidance: float  # the guidance the null embeddings were optimised for (and edits should use)
    width: int
    height: int
    model: str  # the backbone's identity (sha256 of its weights)
    image_sha256: str
    format: int = FORMAT
    first: int = 0  # the sampling position its latents sit at (1 on a zero-terminal-SNR schedule; module docstring)


@dataclass(frozen=True)
class Inversion:
    info: InversionInfo
    latents: torch.Tensor  # (1, C, h, w) x_T
    nulls: torch.Tensor | None = None  # (steps, T, D) the optimised unconditional token states, step by step
    null_masks: torch.Tensor | None = None  # (steps, T) their attention mask (backbones that mask padding)
    path: torch.Tensor | None = None  # (steps − first, C, h, w) direct: the DDIM path after each sampled step

    def null_inputs(self, index: int) -> ModelInputs | None:
        """The unconditional ModelInputs of step ``index`` (None: the method keeps the plain null)."""
        if self.nulls is None:
            return None
        mask = None if self.null_masks is None else self.null_masks[index:index + 1]
        return ModelInputs(context=self.nulls[index:index + 1], context_mask=mask)

    def files(self) -> dict:
        """inversion.json and inversion.safetensors, as io/files.write_folder takes them."""
        from safetensors.torch import save

        tensors = {"latents": self.latents.detach().float().cpu().contiguous()}
        if self.nulls is not None:
            tensors["nulls"] = self.nulls.detach().float().cpu().contiguous()
        if self.null_masks is not None:
            tensors["null_masks"] = self.null_masks.detach().float().cpu().contiguous()
        if self.path is not None:
            tensors["path"] = self.path.detach().float().cpu().contiguous()
        data = save(tensors)
        return {"inversion.json": json.dumps(asdict(self.info), indent=2) + "\n",
                "inversion.safetensors": lambda tmp: (tmp / "inversion.safetensors").write_bytes(data)}

    def save(self, folder: str | Path) -> Path:
        return write_folder(folder, self.files())

    @classmethod
    def load(cls, folder: str | Path, backbone: Backbone | None = None) -> "Inversion":
        """An inversion saved by ``save``; with ``backbone``, refused unless it was made with that very model."""
        folder = Path(folder)
        try:
            info = InversionInfo(**json.loads((folder / "inversion.json").read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise RecomposerError("inversion", f"{folder} holds no inversion.json (`recomposer invert` writes one)") \
                from None
        except (ValueError, TypeError):
            raise RecomposerError("inversion", f"{folder / 'inversion.json'} is not an inversion record") from None
        if info.format != FORMAT or info.method not in METHODS:
            raise RecomposerError("inversion", f"{folder} is an inversion of format {info.format!r}, method "
                                               f"{info.method!r}; this recomposer reads format {FORMAT}")
        tensors = load_safetensors(folder / "inversion.safetensors")
        if backbone is not None and info.model != backbone.identity():
            raise ModelError("inversion", f"{folder} was made with another model (sha256 {info.model[:12]}…, this "
                                          f"one {backbone.identity()[:12]}…); invert the image with this model")
        return cls(info, tensors["latents"], tensors.get("nulls"), tensors.get("null_masks"), tensors.get("path"))


def image_sha256(pixels: torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels.detach().float().cpu().numpy()).tobytes()).hexdigest()


# ---------------------------------------------------------------- DDIM inversion

@torch.no_grad()
def ddim_path(backbone: Backbone, image: torch.Tensor, prompt: str, steps: int, cancel=None) -> list[torch.Tensor]:
    """[x_0, x_{t_1}, …, x_T]: the image's latents walked up the DDIM schedule of ``steps`` steps (guidance 1)."""
    b = backbone
    size = (image.shape[-1], image.shape[-2])
    scheduler = DDIMInverseScheduler.from_config(b.scheduler_config)
    scheduler.set_timesteps(steps, device=b.device)
    denoiser = BackboneDenoiser(b, size)
    inputs = denoiser.encode(ConditionSet.of(Caption(prompt)))
    x0 = b.encode_image(image).mode() * b.vae.config.scaling_factor  # (1, C, h, w)
    path = [x0]

    def record(state: StepState) -> torch.Tensor:
        path.append(state.x_next)
        return state.x_next

    with stage("inverting (DDIM)", total=steps) as advance:
        sample(denoiser, inputs, scheduler, x0, [torch.Generator("cpu").manual_seed(0)], hooks=[record],
               callback=lambda state: advance(state.step.index + 1), cancel=cancel)
    return path


def invert(backbone: Backbone, image: torch.Tensor, prompt: str, method: str = "null-text", steps: int = 50,
           guidance: float = 7.5, inner: int = 10, cancel=None) -> Inversion:
    """Invert ``image`` (1, 3, H, W) in [-1, 1] under ``prompt`` with ``method`` (module docstring). ``cancel``:
    asked before every step (the loop's rule)."""
    v.choice("method", method, METHODS)
    v.integer("steps", steps, 1, 1000)
    v.real("guidance", guidance, 0.0, 100.0)
    v.integer("inner", inner, 0, 1000)
    b = backbone
    path = ddim_path(b, image, prompt, steps, cancel)
    first = 1 if steps > 1 and zero_terminal_snr(b) else 0
    info = InversionInfo(method, prompt, steps, 1.0 if method == "ddim" else guidance, image.shape[-1],
                         image.shape[-2], b.identity(), image_sha256(image), first=first)
    start = path[len(path) - 1 - first]  # the latents at sampling position ``first``
    if method == "direct":  # after the step at position p the path is at path[N − 1 − p]
        return Inversion(info, start, path=torch.cat(path[len(path) - 2 - first::-1]))
    if method != "null-text":
        return Inversion(info, start)
    nulls, masks = null_text(b, path, prompt, steps, guidance, inner, (image.shape[-1], image.shape[-2]), first,
                             cancel)
    return Inversion(info, start, nulls, masks)


def zero_terminal_snr(backbone: Backbone) -> bool:
    """Whether the backbone's schedule ends at ᾱ_T ≈ 0 (Lin et al. 2024), where x_T keeps nothing of x₀."""
    scheduler = make_scheduler("ddim", backbone.scheduler_config)
    return bool(scheduler.alphas_cumprod[-1] < 1e-4)


def null_text(backbone: Backbone, path: list[torch.Tensor], prompt: str, steps: int, guidance: float, inner: int,
              size: tuple[int, int], first: int = 0, cancel=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The per-step null embeddings (steps − first, T, D) (and masks) for the DDIM ``path``, optimised through the
    loop from sampling position ``first``."""
    b = backbone
    denoiser = BackboneDenoiser(b, size)
    guided = Guided(denoiser)
    inputs = guided.encode(cfg(ConditionSet.of(Caption(prompt)), guidance), 1)
    scheduler = make_scheduler("ddim", b.scheduler_config)
    scheduler.set_timesteps(steps, device=b.device)
    null = inputs.encoded[0][0]  # ∅: the empty caption's inputs, the optimisation's start
    cond = inputs.encoded[0][1]
    current = null.context.detach().float().clone()
    found: list[torch.Tensor] = []

    def optimise(x: torch.Tensor, step) -> torch.Tensor:
        nonlocal current
        target = path[len(path) - 2 - step.position]  # where the DDIM path is after this step
        t = step.timestep
        x_in = scheduler.scale_model_input(x, t)
        with torch.no_grad():
            eps_cond = denoiser(x_in, step, cond)
        embedding = current.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([embedding], lr=1e-2 * (1 - step.index / 100))
        with torch.enable_grad():
            for _ in range(inner):
                eps_null = denoiser(x_in, step, ModelInputs(embedding.to(b.dtype), null.context_mask))
                eps = eps_null + guidance * (eps_cond - eps_null)
                x_prev = scheduler.step(eps, t, x).prev_sample
                loss = F.mse_loss(x_prev.float(), target.float())
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                if loss.item() < 1e-5 + step.index * 2e-5:
                    break
        current = embedding.detach()
        found.append(current[0])
        inputs.per_step[(0, 0, step.position)] = ModelInputs(current.to(b.dtype), null.context_mask)
        return x

    with stage("null-text optimisation", total=steps - first) as advance:
        sample(guided, inputs, scheduler, path[len(path) - 1 - first], [torch.Generator("cpu").manual_seed(0)],
               first=first, before=[optimise], callback=lambda state: advance(state.step.index + 1), cancel=cancel)
    masks = None if null.context_mask is None else null.context_mask.float().repeat(steps - first, 1)
    return torch.stack(found), masks


def direct_hook(inversion: Inversion, row: int = 0):
    """Direct inversion's step hook: after the step at sampling position p, row ``row`` (the source) is put back on
    the DDIM path (Ju et al. 2024); the other rows are left to their own prompts."""
    def hook(state: StepState) -> torch.Tensor:
        x = state.x_next.clone()
        x[row] = inversion.path[state.step.position - inversion.info.first].to(x)
        return x

    return hook


def inversion_plan_overrides(inversion: Inversion, inputs, samples: range, positions: range) -> None:
    """Put an inversion's per-step null embeddings into encoded guided inputs (set 0 of each of ``samples``), the
    k-th at the k-th of ``positions`` (those the edit samples: from ``inversion.info.first``)."""
    for index, position in enumerate(positions):
        null = inversion.null_inputs(index)
        if null is None:
            return
        for sample_index in samples:
            inputs.per_step[(sample_index, 0, position)] = null


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] on the 8-bit scale (as the VAE's figures are measured)."""
    a8, b8 = ((a.float().clamp(-1, 1) + 1) * 127.5).round(), ((b.float().clamp(-1, 1) + 1) * 127.5).round()
    return float(10 * torch.log10(255.0**2 / (a8 - b8).square().mean().clamp(min=1e-10)))
