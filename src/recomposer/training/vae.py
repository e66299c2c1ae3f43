"""Training the bundled model's VAE on shapes-world renders (Kingma & Welling 2014; Rombach et al. 2022, §3).

One step (``VAETraining.step``), every random draw from the step's generator:
    z ~ q(z | x) = N(μ(x), σ(x)²)                    the posterior sample (reparameterised)
    x̂ = D(z)
    loss = |x − x̂|₁ + (x − x̂)² + β·KL(q(z | x) ‖ N(0, I))      means over pixels / latent cells

With ``latent_noise`` > 0 (decoder-only training), the decoder reads z + σᵢ·s·ε′ instead, σᵢ ~ U(0, latent_noise)
per image, s = 1 / scaling_factor the spread of the latents, ε′ ~ N(0, I): latents that miss the encoder's by a
fraction of their spread, as a sampler's do, decoded to the clean render (a decoder robust where the UNet draws;
``perturbed_psnr`` measures it, docs/recipes.md).

L1 keeps edges sharp, the squared error is what PSNR measures; β is small (1e-6, as in LDM's
KL-regularised autoencoders): the latent space only has to stay near a standard normal in scale.
No adversarial or perceptual term: flat-shaded scenes need neither, and both would need networks we
cannot download. After training, ``scaling_factor`` = 1 / std of the latents over held-out scenes,
so the diffusion model sees unit-variance latents (LDM's rescaling).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image
from torch import nn

from .. import validation as v
from ..errors import InvalidParameter
from ..world.dataset import EVAL_SEED_BASE, eval_seeds, make_sample
from ..world.scene import WorldConfig

KL_WEIGHT = 1e-6


class VAETraining(nn.Module):
    """The VAE as one module for ``training.train``: ``model(batch, generator)`` is the step's loss.

    decoder_only: the encoder (and quant_conv) stay frozen, so the latent space, and every diffusion model
    trained on it, stays valid while the decoder keeps improving (Stable Diffusion's ft-MSE decoders).
    latent_noise: the largest σ of the perturbation above, a fraction of the latents' spread (decoder-only: an
    encoder that trains would grow its latents past the noise instead).
    """

    def __init__(self, vae: AutoencoderKL, kl_weight: float = KL_WEIGHT, decoder_only: bool = False,
                 latent_noise: float = 0.0):
        super().__init__()
        self.vae, self.kl_weight = vae, v.real("kl_weight", kl_weight, 0.0)
        self.latent_noise = checked_latent_noise(latent_noise, decoder_only)
        vae.requires_grad_(True).train()
        if decoder_only:
            for module in (vae.encoder, vae.quant_conv):
                module.requires_grad_(False).eval()

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        x = batch["image"]  # (B, 3, H, W) in [-1, 1]
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator,
                                                         device=generator.device).to(x.device)
        if self.latent_noise:
            b = z.shape[0]
            sigma = self.latent_noise * torch.rand(b, generator=generator, device=generator.device)  # (B,)
            noise = torch.randn(z.shape, generator=generator, device=generator.device)
            z = z + (sigma.view(b, 1, 1, 1) * noise).to(z) / self.vae.config.scaling_factor
        x_hat = self.vae.decode(z).sample  # (B, 3, H, W)
        kl = 0.5 * (posterior.mean.square() + posterior.var - 1.0 - posterior.logvar).mean()
        return F.l1_loss(x_hat, x) + F.mse_loss(x_hat, x) + self.kl_weight * kl


def checked_latent_noise(value: object, decoder_only: bool, field: str = "latent_noise") -> float:
    """``latent_noise`` in [0, 4], and 0 unless the decoder trains alone (an encoder that trains would grow its latents
    past the noise)."""
    value = v.real(field, value, 0.0, 4.0)
    if value and not decoder_only:
        raise InvalidParameter(field, "0 unless the decoder trains alone (decoder-only)", value)
    return value


def vae_step(model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
    return model(batch, generator)


def world_images(batch_size: int, size: int, world: WorldConfig = WorldConfig()):
    """``batches(index)``: world seeds index·B … index·B + B − 1 as renders "image" (B, 3, S, S) in [-1, 1]
    and their "caption"s."""
    v.integer("batch_size", batch_size, 1)
    v.integer("size", size, 16, 4096)
    world = world.check()

    def batches(index: int) -> dict:
        first = v.integer("index", index, 0) * batch_size
        if first + batch_size > EVAL_SEED_BASE:
            raise InvalidParameter("index", f"below {EVAL_SEED_BASE // batch_size}", index)
        samples = [make_sample(s, world, size) for s in range(first, first + batch_size)]
        return {"image": torch.stack([s.tensors()["image"] for s in samples]), "caption": [s.caption for s in samples]}

    return batches


def held_out(count: int, size: int, world: WorldConfig = WorldConfig()) -> torch.Tensor:
    """Renders of the first ``count`` evaluation scenes (seeds the training stream never draws), (N, 3, S, S)."""
    return torch.stack([make_sample(s, world.check(), size).tensors()["image"] for s in eval_seeds(count)])


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """x -> D(μ(x)), clamped to [-1, 1], in chunks."""
    p = next(vae.parameters())
    out = [vae.decode(vae.encode(chunk.to(p)).latent_dist.mode()).sample.clamp(-1, 1).float().cpu()
           for chunk in images.split(batch)]
    return torch.cat(out)


def round_trip(vae: AutoencoderKL, images: list) -> list[np.ndarray]:
    """8-bit RGB images (PIL or (H, W, 3) arrays) through ``reconstruct``, as 8-bit arrays: the best any model
    that draws in this VAE's latents can show (the benchmarks' "vae" rows)."""
    from ..io.images import to_pil, to_tensor

    if not images:
        return []
    x = torch.cat([to_tensor(Image.fromarray(np.asarray(im)).convert("RGB")) for im in images])
    return [np.asarray(im) for im in to_pil(reconstruct(vae, x))]


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] measured on the 8-bit scale [0, 255] (peak 255)."""
    a8 = ((a.clamp(-1, 1) + 1) * 127.5).round()
    b8 = ((b.clamp(-1, 1) + 1) * 127.5).round()
    mse = (a8 - b8).square().flatten(1).mean(1).clamp(min=1e-10)  # (N,)
    return 10 * torch.log10(255.0**2 / mse)


@torch.no_grad()
def perturbed_psnr(vae: AutoencoderKL, images: torch.Tensor, sigmas=(0.0, 0.05, 0.1, 0.2, 0.4), seed: int = 0) -> dict:
    """{σ: mean PSNR (dB) of D(μ(x) + σ·s·ε) against x}, s the standard deviation of the posterior means over
    ``images``, ε ~ N(0, I) drawn from ``seed``: how a decoder draws latents that miss the encoder's by a fraction of
    their spread, as a sampler's do (a decoder better at σ = 0 may be worse beyond it; docs/recipes.md)."""
    sigmas = [v.real("sigma", sigma, 0.0) for sigma in sigmas]
    p = next(vae.parameters())
    means = posterior_means(vae, images)
    spread = means.std()
    noise = torch.randn(means.shape, generator=torch.Generator().manual_seed(seed))  # one draw, scaled per σ
    out = {}
    for sigma in sigmas:
        z = means + sigma * spread * noise
        decoded = torch.cat([vae.decode(chunk.to(p)).sample.float().cpu() for chunk in z.split(32)])
        out[sigma] = round(float(psnr(decoded, images).mean()), 3)
    return out


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """LDM's scaling factor: 1 / the standard deviation of the posterior means over ``images``."""
    return float(1.0 / posterior_means(vae, images).std())


@torch.no_grad()
def posterior_means(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """μ(x) for ``images`` (N, 3, S, S) in [-1, 1], in chunks, as float32 on the CPU."""
    p = next(vae.parameters())
    return torch.cat([vae.encode(chunk.to(p)).latent_dist.mode().float().cpu() for chunk in images.split(32)])


def vae_sampler(size: int, count: int = 8):
    """A trainer ``sample_fn``: held-out scenes (top row) above their reconstructions, with the mean PSNR."""
    from ..io.images import to_pil
    from .trainer import image_grid

    images = held_out(count, size)

    def sample_fn(model: VAETraining, step: int):
        recon = reconstruct(model.vae, images)
        tiles = to_pil(images) + to_pil(recon)
        return image_grid(tiles, columns=count)

    return sample_fn


def summary(vae: AutoencoderKL, count: int = 256, size: int = 64) -> dict:
    """Held-out figures: mean and worst PSNR (dB) over ``count`` evaluation scenes, and the latent scale."""
    images = held_out(count, size)
    scores = psnr(reconstruct(vae, images), images)
    return {"psnr_mean": round(float(scores.mean()), 3), "psnr_min": round(float(scores.min()), 3),
            "psnr_median": round(float(scores.median()), 3), "scenes": count,
            "scaling_factor": latent_scale(vae, images) if math.isfinite(float(scores.mean())) else None}
