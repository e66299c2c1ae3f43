"""The denoising loss every trainer shares, and text-to-image training of a latent UNet on it
(Rombach et al. 2022, eq. 2; Ho et al. 2020, the "simple" loss).

A batch arrives **encoded** (``encode_batch``, or rows of a world cache, training/world_cache.py):
the VAE posterior's moments and the caption's token states, computed once per image, never per step.
One step (``BaseTraining``), every random draw from the step's generator, in this order:
    1. caption dropout: each caption replaced by the empty caption with probability 0.1 (classifier-free
       guidance's unconditional model, Ho & Salimans 2022)
    2. x_0 = (μ + σ·ε₀)·scaling_factor, a sample of the VAE posterior      (``sample_latents``)
    3. ε ~ N(0, I), t ~ U{0, …, T − 1}; x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε    (``noised``)
    4. loss = mean_b w(t_b)·mean(m·(D(x_t, t, c) − target)²)               (``denoising_loss``)
       target ε, v or x_0 as the backbone predicts (``training_target``); w = 1, or min-SNR-γ
       (Hang et al. 2023: w = min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v, min(SNR, γ) for x_0);
       m = 1 everywhere, or a per-position map (the Composer step's foreground weighting: 1 + λ·f, f the share
       of each latent position that objects cover)
The Composer step (training/composer.py) is this step with its adapter's doors added.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import validation as v
from ..denoiser import ModelInputs, forward_unet
from ..models.backbone import Backbone
from ..schedulers import make_scheduler, training_target

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
CAPTION_DROP = 0.1


# ---------------------------------------------------------------- the encoded batch

@torch.no_grad()
def encode_batch(backbone: Backbone, images: torch.Tensor, captions: list[str]) -> dict:
    """Images (B, 3, H, W) in [-1, 1] and their captions -> what the step needs of them, float32 on the CPU:

        latent_mean, latent_std  (B, C, h, w)  the VAE posterior N(μ, σ²), unscaled
        tokens                   (B, T, D)     caption token states (Backbone.encode_prompts)
        token_mask               (B, T)        1 = a real token (only for backbones that mask padding)
        sentence                 (B, D)        the caption's sentence embedding
    """
    posterior = backbone.vae.encode(images.to(backbone.device, backbone.vae.dtype)).latent_dist
    prompts = backbone.encode_prompts(list(captions))
    batch = {"latent_mean": posterior.mean.float().cpu(), "latent_std": posterior.std.float().cpu(),
             "tokens": prompts.tokens.float().cpu(), "sentence": prompts.sentence.float().cpu()}
    if prompts.mask is not None:
        batch["token_mask"] = prompts.mask.float().cpu()
    return batch


@dataclass(frozen=True)
class NullCaption:
    """The empty caption's encoding: what a dropped caption becomes (as at sampling: the null is "")."""

    tokens: torch.Tensor  # (1, T, D)
    mask: torch.Tensor | None  # (1, T)

    @classmethod
    def of(cls, backbone: Backbone) -> "NullCaption":
        prompts = backbone.encode_prompts([""])
        return cls(prompts.tokens.float(), None if prompts.mask is None else prompts.mask.float())


def caption_inputs(batch: dict, keep: torch.Tensor, null: NullCaption) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token states (B, T, D) and mask (B, T) (or None) with every caption not kept (keep (B,) bool) replaced
    by the empty caption's. Batches hold captions padded to their longest: the null is cut or padded to T."""
    tokens, mask = batch["tokens"], batch.get("token_mask")
    width = tokens.shape[1]
    null_tokens = _fit(null.tokens.to(tokens), width)  # (1, T, D)
    kept = keep.to(tokens.device)[:, None, None]
    tokens = torch.where(kept, tokens, null_tokens)
    if mask is not None:
        mask = torch.where(kept[..., 0], mask, _fit(null.mask.to(mask), width))
    return tokens, mask


def _fit(x: torch.Tensor, width: int) -> torch.Tensor:
    """Cut or zero-pad dimension 1 of x to ``width`` (the null caption's padding is zeros and masked)."""
    if x.shape[1] >= width:
        return x[:, :width]
    return F.pad(x, (0, 0, 0, width - x.shape[1]) if x.ndim == 3 else (0, width - x.shape[1]))


def sample_latents(batch: dict, generator: torch.Generator, scaling_factor: float) -> torch.Tensor:
    """x_0 = (μ + σ·ε₀)·scaling_factor, ε₀ ~ N(0, I) from the step's generator: a VAE posterior sample
    (the same draw as diffusers' DiagonalGaussianDistribution.sample(generator)), float32 (B, C, h, w)."""
    mean, std = batch["latent_mean"], batch["latent_std"]
    eps = torch.randn(mean.shape, generator=generator, device=generator.device).to(mean.device)
    return (mean + std * eps).float() * scaling_factor


# ---------------------------------------------------------------- the loss

def noised(scheduler, latents: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(ε, t, x_t): noise and timesteps drawn in that order, x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε."""
    noise = torch.randn(latents.shape, generator=generator, device=generator.device).to(latents.device)
    count = scheduler.config.num_train_timesteps
    t = torch.randint(0, count, (len(latents),), generator=generator, device=generator.device).to(latents.device)
    return noise, t, scheduler.add_noise(latents, noise, t)


def loss_weights(scheduler, prediction_type: str, timesteps: torch.Tensor, min_snr_gamma: float | None) -> torch.Tensor:
    """Per-sample loss weights (B,): 1, or min-SNR-γ (Hang et al. 2023, eq. 9 and its ε / v forms)."""
    if min_snr_gamma is None:
        return torch.ones(len(timesteps), device=timesteps.device)
    a = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()  # ᾱ_t
    snr = a / (1 - a).clamp(min=1e-12)  # SNR(t) = ᾱ_t / (1 − ᾱ_t)
    clipped = snr.clamp(max=min_snr_gamma)  # min(SNR, γ)
    if prediction_type == "epsilon":
        return torch.where(snr > min_snr_gamma, min_snr_gamma / snr.clamp(min=1e-12), torch.ones_like(snr))
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped


def denoising_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                   positions: torch.Tensor | None = None) -> torch.Tensor:
    """mean_b w_b · mean over (C, h, w) of m·(prediction − target)², in float32; m (B, 1, h, w) or 1 (None)."""
    error = (prediction.float() - target.float()).square()
    if positions is not None:
        error = error * positions.to(error)
    per_sample = error.flatten(1).mean(1)  # (B,)
    return (weights * per_sample).mean()


@dataclass(frozen=True)
class StepResult:
    """One step's loss and what made it (for tests and diagnostics)."""

    loss: torch.Tensor  # () weighted mean squared error
    prediction: torch.Tensor  # (B, C, h, w) the UNet's output
    target: torch.Tensor  # (B, C, h, w)
    clean: torch.Tensor  # (B, C, h, w) x_0, the scaled VAE latents
    noise: torch.Tensor  # (B, C, h, w) ε
    noisy: torch.Tensor  # (B, C, h, w) x_t
    timesteps: torch.Tensor  # (B,)
    keep: dict[str, torch.Tensor]  # kind -> (B,) bool: the kind reached the model for that sample


class Diffusion:
    """The forward process and loss of a backbone: its training betas (q(x_t | x_0)), its parameterisation and
    the loss weighting. ``step(batch, generator, keep, inputs)`` runs steps 2-4 of the module docstring."""

    def __init__(self, backbone: Backbone, min_snr_gamma: float | None = None):
        self.backbone = backbone
        self.prediction_type = v.choice("prediction_type", backbone.prediction_type, PREDICTION_TYPES)
        if min_snr_gamma is not None:
            v.real("min_snr_gamma", min_snr_gamma, 1e-3, 1e3)
        self.min_snr_gamma = min_snr_gamma
        self.scheduler = make_scheduler("ddpm", backbone.scheduler_config)  # q(x_t | x_0): the training betas

    def step(self, unet: nn.Module, batch: dict, generator: torch.Generator, inputs: ModelInputs,
             keep: dict[str, torch.Tensor], at_step: Callable[[torch.Tensor, torch.Tensor, ModelInputs],
                                                              ModelInputs] | None = None,
             positions: torch.Tensor | None = None) -> StepResult:
        """``at_step(x_t, t, inputs) -> inputs``: doors that depend on x_t, filled in before the forward (a
        ControlNet's residuals, as ``ControlNetAdapter.at_step`` fills them at sampling). ``positions``: the
        loss's per-position weights m (B, 1, h, w), or None (1)."""
        b = self.backbone
        latents = sample_latents(batch, generator, b.vae.config.scaling_factor)  # (B, C, h, w)
        noise, t, noisy = noised(self.scheduler, latents, generator)
        noisy = noisy.to(b.dtype)
        if at_step is not None:
            inputs = at_step(noisy, t, inputs)
        prediction = forward_unet(unet, noisy, t, inputs)  # (B, C, h, w)
        target = training_target(self.scheduler, self.prediction_type, latents, noise, t)
        loss = denoising_loss(prediction, target, loss_weights(self.scheduler, self.prediction_type, t,
                                                               self.min_snr_gamma), positions)
        return StepResult(loss, prediction, target, latents, noise, noisy, t, keep)


class BaseTraining(nn.Module):
    """A backbone's UNet trained on captioned images; VAE and text encoder frozen. ``model(batch, generator)``
    is the step's loss; batches are encoded (``encode_batch``, or a world cache's rows)."""

    def __init__(self, backbone: Backbone, caption_drop: float = CAPTION_DROP, min_snr_gamma: float | None = None):
        super().__init__()
        self.caption_drop = v.real("caption_drop", caption_drop, 0.0, 1.0)
        self.diffusion = Diffusion(backbone, min_snr_gamma)
        self.backbone, self.unet = backbone, backbone.unet
        self.vae, self.text_encoder = backbone.vae, backbone.text_encoder
        self.null = NullCaption.of(backbone)
        for module in (self.vae, self.text_encoder):
            module.requires_grad_(False).eval()
        self.unet.requires_grad_(True).train()

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        n = len(batch["latent_mean"])
        keep = torch.rand(n, generator=generator, device=generator.device) >= self.caption_drop  # (B,)
        tokens, mask = caption_inputs(batch, keep, self.null)
        inputs = ModelInputs(context=tokens.to(self.backbone.dtype), context_mask=mask)
        return self.diffusion.step(self.unet, batch, generator, inputs, {"caption": keep}).loss


def base_step(model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
    return model(batch, generator)
