"""Text-to-image training of a latent UNet (Rombach et al. 2022, eq. 2; Ho et al. 2020, "simple" loss).

One step (``BaseTraining.step``), every random draw from the step's generator, in this order:
    1. caption dropout: each caption replaced by "" with probability 0.1 (classifier-free guidance's
       unconditional model, Ho & Salimans 2022)
    2. x_0 = a sample of the VAE posterior × the VAE's scaling factor
    3. ε ~ N(0, I), t ~ U{0, …, T − 1}; x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε   (``noised``)
    4. loss = mean((ε_θ(x_t, t, c) − target)²), target ε, v or x_0 as the backbone predicts (``training_target``)
The Composer step (training/composer.py) is this step with its adapter's doors added.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .. import validation as v
from ..denoiser import ModelInputs, forward_unet
from ..errors import InvalidParameter
from ..models.backbone import Backbone
from ..schedulers import make_scheduler

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
CAPTION_DROP = 0.1


@torch.no_grad()
def clean_latents(backbone: Backbone, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x_0: a sample of the VAE posterior of images (B, 3, H, W) in [-1, 1], scaled, float32 (B, C, h, w)."""
    latents = backbone.vae.encode(image.to(backbone.vae.dtype)).latent_dist.sample(generator)
    return latents.float() * backbone.vae.config.scaling_factor


def noised(scheduler, latents: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(ε, t, x_t): noise and timesteps drawn in that order, x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε."""
    noise = torch.randn(latents.shape, generator=generator, device=generator.device).to(latents.device)
    count = scheduler.config.num_train_timesteps
    t = torch.randint(0, count, (len(latents),), generator=generator, device=generator.device).to(latents.device)
    return noise, t, scheduler.add_noise(latents, noise, t)


def training_target(scheduler, prediction_type: str, latents: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    """What the model should predict: ε, v = √ᾱ_t·ε − √(1 − ᾱ_t)·x_0 (Salimans & Ho 2022), or x_0."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return latents
    raise InvalidParameter("prediction_type", "one of " + ", ".join(PREDICTION_TYPES), prediction_type)


class BaseTraining(nn.Module):
    """A backbone's UNet trained on captioned images; VAE and text encoder frozen. ``model(batch, generator)``
    is the step's loss; batches hold "image" (B, 3, H, W) in [-1, 1] and "caption" (B strings)."""

    def __init__(self, backbone: Backbone, caption_drop: float = CAPTION_DROP):
        super().__init__()
        self.prediction_type = v.choice("prediction_type", backbone.prediction_type, PREDICTION_TYPES)
        self.caption_drop = v.real("caption_drop", caption_drop, 0.0, 1.0)
        self.backbone, self.unet = backbone, backbone.unet
        self.vae, self.text_encoder = backbone.vae, backbone.text_encoder
        self.noise_scheduler = make_scheduler("ddpm", backbone.scheduler_config)
        for module in (self.vae, self.text_encoder):
            module.requires_grad_(False).eval()
        self.unet.requires_grad_(True).train()

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        b, image = self.backbone, batch["image"]
        drop = torch.rand(len(image), generator=generator, device=generator.device) < self.caption_drop
        captions = ["" if dropped else text for text, dropped in zip(batch["caption"], drop.tolist())]
        prompts = b.encode_prompts(captions)
        latents = clean_latents(b, image, generator)
        noise, t, noisy = noised(self.noise_scheduler, latents, generator)
        inputs = ModelInputs(context=prompts.tokens, context_mask=prompts.mask)
        prediction = forward_unet(self.unet, noisy.to(b.dtype), t, inputs)
        target = training_target(self.noise_scheduler, self.prediction_type, latents, noise, t)
        return F.mse_loss(prediction.float(), target.float())


def base_step(model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
    return model(batch, generator)
