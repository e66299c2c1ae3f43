"""Composer joint training on any backbone (Huang et al. 2023, §3.3): the step, the data, the sample grids.

What trains: the Composer adapter only. The backbone (VAE, text encoder, UNet) is frozen and in eval
mode; the paper trains its whole UNet instead, which ``ComposerTraining(train_unet=True)`` offers
(the UNet's weights then train too, and are checkpointed with the adapter).

One step (``ComposerTraining.step``), every random draw from the step's generator, in this order:
    1. keep masks: ``dropout.condition_keep`` over the kinds present in the batch (a kind that a
       sample lacks counts as dropped for it); a dropped caption is the empty string, as at sampling.
    2. x_0 = a sample of the VAE posterior × the VAE's scaling factor          (B, 4, h, w)
    3. ε ~ N(0, I), then t ~ U{0, …, T − 1}; x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε   (the training scheduler, DDPM)
    4. the prediction D(x_t, t; conditions) through the adapter's doors, as ``ComposerDenoiser`` runs it
    5. loss = mean((D − target)²), target = ε (epsilon), v = √ᾱ_t·ε − √(1 − ᾱ_t)·x_0 (v_prediction,
       the scheduler's ``get_velocity``), or x_0 (sample), as the backbone's prediction_type says.

Data (``world_batches``): batch ``index`` holds shapes-world seeds index·B … index·B + B − 1 with their
exact ground truth as conditions (``world_conditions``); any other images and condition sets become a
batch through ``composer_batch``. Conditions are encoded exactly as ``ComposerAdapter.features`` does at
sampling time, so training and sampling see the same numbers.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import validation as v
from ..conditions import Caption, ConditionSet, Depth, Instances, MaskedImage, Palette, Sketch
from ..decompose.intensity import intensity
from ..denoiser import ComposerDenoiser, composer_inputs, forward_unet
from ..errors import InvalidParameter
from ..models.backbone import Backbone
from ..models.composer import ComposerAdapter, ComposerConfig, generation_size
from ..schedulers import make_scheduler
from ..world.dataset import EVAL_SEED_BASE, WorldSample, eval_seeds, make_sample
from ..world.scene import WorldConfig
from .base import PREDICTION_TYPES, clean_latents, noised, training_target
from .dropout import DropoutRates, condition_keep

# The kinds the shapes world gives exactly (image_embedding too when an image encoder is given).
WORLD_KINDS = ("caption", "palette", "sketch", "instances", "depth", "intensity", "masked_image")


# ---------------------------------------------------------------- data

def world_conditions(sample: WorldSample, image_encoder=None) -> ConditionSet:
    """Every Composer condition of a shapes-world sample, from its exact ground truth.

    Caption, palette, sketch, instances (from the label map) and depth as rendered; intensity with RGB
    weights drawn from ``decompose.intensity.WEIGHT_SET``, and a masked image whose mask is a random
    box with sides in [S/4, 3S/4] (ours: the paper does not describe its masks), both from a generator
    seeded by the sample's seed alone. The image embedding only with an ``image_encoder``.
    """
    from PIL import Image

    rng = np.random.default_rng([sample.seed, 2])  # independent of the scene's and the caption's draws
    r = sample.rendered
    size = r.image.shape[0]
    grey = intensity(r.image, rng=rng)
    h, w = (int(rng.integers(size // 4, 3 * size // 4 + 1)) for _ in range(2))
    y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    mask = torch.zeros(1, 1, size, size)
    mask[..., y:y + h, x:x + w] = 1
    image = torch.from_numpy(r.image).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # (1, 3, S, S)
    conds = [Caption(sample.caption), Palette(sample.palette), Sketch(r.sketch), Instances(r.masks),
             Depth(r.depth), grey, MaskedImage(image, mask)]
    if image_encoder is not None:
        conds.append(image_encoder(Image.fromarray(r.image)))
    return ConditionSet(tuple(conds))


def composer_batch(images: torch.Tensor, sets: Sequence[ConditionSet], adapter: ComposerAdapter) -> dict:
    """Images (B, 3, H, W) in [-1, 1] and one condition set each -> a training batch:

        image     (B, 3, H, W)
        caption   B strings ("" where a set has none)
        features  kind -> (B, ...) the adapter's inputs (``ComposerAdapter.features``); zeros where absent
        present   kind -> (B,) bool, which samples have the kind (caption: a non-empty text)
    """
    if not sets:
        raise InvalidParameter("sets", "at least one condition set", sets)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3 or len(images) != len(sets):
        raise InvalidParameter("images", f"a tensor (B, 3, H, W) with B = {len(sets)} (one per condition set)",
                               tuple(getattr(images, "shape", ())))
    size = generation_size(*sets)
    if size is not None and size != (images.shape[3], images.shape[2]):
        raise InvalidParameter("images", f"{size[0]}x{size[1]} pixels like the local conditions",
                               f"{images.shape[3]}x{images.shape[2]}")
    captions = [conds["caption"].text if "caption" in conds else "" for conds in sets]
    features, present = {}, {"caption": torch.tensor([bool(c) for c in captions])}
    for kind in sorted(set().union(*sets) - {"caption"}):
        rows = [adapter.features(conds[kind]) if kind in conds else None for conds in sets]
        like = next(row for row in rows if row is not None)
        features[kind] = torch.cat([row if row is not None else torch.zeros_like(like) for row in rows])
        present[kind] = torch.tensor([row is not None for row in rows])
    return {"image": images.float(), "caption": captions, "features": features, "present": present}


def world_batches(adapter: ComposerAdapter, batch_size: int, size: int, world: WorldConfig = WorldConfig(),
                  image_encoder=None) -> Callable[[int], dict]:
    """``batches(index)`` for the trainer: batch ``index`` is world seeds index·B … index·B + B − 1."""
    v.integer("batch_size", batch_size, 1)
    v.integer("size", size, 16, 4096)
    world = world.check()

    def batches(index: int) -> dict:
        v.integer("index", index, 0)
        first = index * batch_size
        if first + batch_size > EVAL_SEED_BASE:
            raise InvalidParameter("index", f"below {EVAL_SEED_BASE // batch_size} (seeds from "
                                            f"{EVAL_SEED_BASE} on are the evaluation split)", index)
        samples = [make_sample(seed, world, size) for seed in range(first, first + batch_size)]
        images = torch.stack([s.tensors()["image"] for s in samples])  # (B, 3, S, S)
        return composer_batch(images, [world_conditions(s, image_encoder) for s in samples], adapter)

    return batches


# ---------------------------------------------------------------- the step

@dataclass(frozen=True)
class StepResult:
    """One step's loss and what made it (for tests and diagnostics)."""

    loss: torch.Tensor  # () mean squared error
    prediction: torch.Tensor  # (B, C, h, w) the UNet's output
    target: torch.Tensor  # (B, C, h, w)
    clean: torch.Tensor  # (B, C, h, w) x_0, the scaled VAE latents
    noise: torch.Tensor  # (B, C, h, w) ε
    noisy: torch.Tensor  # (B, C, h, w) x_t
    timesteps: torch.Tensor  # (B,)
    keep: dict[str, torch.Tensor]  # kind -> (B,) bool: the kind reached the model for that sample


class ComposerTraining(nn.Module):
    """The backbone and its Composer adapter as one module for ``training.train``: ``model(batch, generator)``
    is the loss of a step (see the module docstring). ``composer_step`` is the trainer's step_fn.

    backbone: any latent-diffusion Backbone; the adapter is attached to its UNet here.
    kinds: the condition kinds the data provides; adapter parameters that serve only other kinds are
        frozen (never used, they would get no gradient, which multi-GPU DDP refuses).
    rates: condition dropout (training/dropout.py). train_unet: the UNet trains too (the paper's setting).
    """

    def __init__(self, backbone: Backbone, adapter: ComposerAdapter, kinds: Sequence[str] = WORLD_KINDS,
                 rates: DropoutRates = DropoutRates(), train_unet: bool = False):
        super().__init__()
        unknown = set(kinds) - set(ComposerAdapter.DOORS)
        if unknown or not kinds:
            raise InvalidParameter("kinds", "kinds the Composer adapter hears: " + ", ".join(ComposerAdapter.DOORS),
                                   sorted(unknown) or kinds)
        if not isinstance(train_unet, bool):
            raise InvalidParameter("train_unet", "True or False", train_unet)
        prediction = v.choice("prediction_type", backbone.prediction_type, PREDICTION_TYPES)
        adapter.attach(backbone.unet)
        self.backbone, self.kinds, self.rates, self.prediction_type = backbone, frozenset(kinds), rates, prediction
        self.adapter, self.unet = adapter, backbone.unet
        self.vae, self.text_encoder = backbone.vae, backbone.text_encoder
        self.noise_scheduler = make_scheduler("ddpm", backbone.scheduler_config)  # q(x_t | x_0): the training betas
        for module in (self.vae, self.text_encoder, self.unet):
            module.requires_grad_(False).eval()
        self.unet.requires_grad_(train_unet).train(train_unet)
        adapter.requires_grad_(False).train()
        for kind in self.kinds:
            for module in _kind_modules(adapter, kind):
                module.requires_grad_(True)
        if self.kinds & set(ComposerAdapter.LOCAL_INPUTS):
            adapter.channels_in.requires_grad_(True)

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        return self.step(batch, generator).loss

    def step(self, batch: dict, generator: torch.Generator) -> StepResult:
        b, image = self.backbone, batch["image"]  # (B, 3, H, W)
        n, f = image.shape[0], b.vae_factor
        present = batch["present"]
        if extra := sorted(set(present) - self.kinds - {"caption"}):
            raise InvalidParameter("batch", "kinds this training was set up for: " + ", ".join(sorted(self.kinds)),
                                   extra)
        # 1. condition dropout (a kind absent from a sample stays absent)
        drawn = condition_keep(sorted(present), n, self.rates, generator)
        keep = {kind: drawn[kind] & present[kind].to(drawn[kind].device) for kind in present}  # kind -> (B,)
        captions = [text if kept else "" for text, kept in zip(batch["caption"], keep["caption"].tolist())]
        prompts = b.encode_prompts(captions)  # tokens (B, T, D), mask, sentence (B, D_s)
        features = {"caption": prompts.sentence, **batch["features"]}
        # 2. x_0 from the VAE posterior; 3. noise and timesteps
        latents = clean_latents(b, image, generator)  # (B, 4, h, w)
        noise, t, noisy = noised(self.noise_scheduler, latents, generator)
        # 4. the prediction through the adapter's doors
        outputs = self.adapter(features, n, (image.shape[2] // f, image.shape[3] // f), keep=keep)
        inputs = composer_inputs(prompts.tokens, outputs, text_mask=prompts.mask)
        prediction = forward_unet(self.unet, noisy.to(b.dtype), t, inputs)  # (B, 4, h, w)
        # 5. the loss in the backbone's parameterisation
        target = training_target(self.noise_scheduler, self.prediction_type, latents, noise, t)
        loss = F.mse_loss(prediction.float(), target.float())
        return StepResult(loss, prediction, target, latents, noise, noisy, t, keep)


def composer_step(model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
    """The trainer's step_fn: call the (possibly DDP-wrapped) ComposerTraining so gradients are synchronised."""
    return model(batch, generator)


def _kind_modules(adapter: ComposerAdapter, kind: str) -> list[nn.Module]:
    """The adapter's layers that serve ``kind`` alone (channels_in is shared by all local kinds)."""
    return [group[kind] for group in (adapter.time, adapter.tokens, adapter.local) if kind in group]


# ---------------------------------------------------------------- adapters and files

def new_adapter(backbone: Backbone, image_embedding_dim: int = 768, image_encoder: str | None = None,
                seed: int = 0, **settings) -> ComposerAdapter:
    """A fresh adapter for ``backbone`` (zero-initialised doors, seeded local encoders); not yet attached.

    image_embedding_dim: the image encoder's width (768: CLIP ViT-L/14; without an encoder the
    image-embedding door never trains). image_encoder: its identity, recorded in the adapter's config.
    """
    config = ComposerConfig.for_backbone(backbone, image_embedding_dim, image_encoder=image_encoder, **settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ComposerAdapter(config)


def save_adapter(adapter: ComposerAdapter, path: str | Path) -> Path:
    """``ComposerAdapter.save``, creating the folder (the file is written all or nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return adapter.save(path)


# ---------------------------------------------------------------- sample grids

def world_sampler(size: int, count: int = 4, steps: int = 12, scheduler: str = "ddim", guidance: float = 3.0,
                  world: WorldConfig = WorldConfig(), image_encoder=None, seed: int = 0):
    """A trainer ``sample_fn``: a grid with one row per evaluation scene (``eval_seeds``):

        the scene | all its conditions | caption + palette + sketch | caption only

    each generated with classifier-free guidance against the empty set (Composer's ∅), ``steps`` steps of
    ``scheduler`` from noise seeded ``seed + row`` (the same noise at every step of training).
    """
    from PIL import Image

    from ..guidance import cfg, guided
    from ..io.images import to_pil
    from ..sampling import noise, sample
    from .trainer import image_grid

    v.integer("count", count, 1, 64)
    v.integer("steps", steps, 1, 1000)
    scenes = [make_sample(s, world.check(), size) for s in eval_seeds(count)]
    sets = [world_conditions(s, image_encoder) for s in scenes]

    def sample_fn(model: ComposerTraining, step: int) -> Image.Image:
        b = model.backbone
        denoiser = ComposerDenoiser(b, model.adapter, size=(size, size))
        tiles = []
        for row, (scene, conds) in enumerate(zip(scenes, sets)):
            tiles.append(Image.fromarray(scene.rendered.image))
            for subset in (conds, ConditionSet.of(*(conds[k] for k in ("caption", "palette", "sketch"))),
                           ConditionSet.of(conds["caption"])):
                schedule = make_scheduler(scheduler, b.scheduler_config)
                schedule.set_timesteps(steps, device=b.device)
                generators = [torch.Generator("cpu").manual_seed(seed + row)]
                shape = (1, b.latent_channels, size // b.vae_factor, size // b.vae_factor)
                x = noise(shape, generators, b.device, b.dtype) * schedule.init_noise_sigma
                x = sample(guided(denoiser, cfg(subset, guidance), 1), schedule, x, generators)
                tiles.append(to_pil(b.decode(x))[0])
        return image_grid(tiles, columns=4)

    return sample_fn
