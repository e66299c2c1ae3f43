"""Composer joint training on any backbone (Huang et al. 2023, §3.3): the step, the data, the sample grids.

What trains: the Composer adapter only. The backbone (VAE, text encoder, UNet) is frozen and in eval
mode; the paper trains its whole UNet instead, which ``ComposerTraining(train_unet=True)`` offers
(the UNet's weights then train too, and are checkpointed with the adapter).

One step (``ComposerTraining.step``), every random draw from the step's generator, in this order:
    1. keep masks: ``dropout.condition_keep`` over the kinds present in the batch (a kind that a
       sample lacks counts as dropped for it); a dropped caption is the empty caption, as at sampling.
    1b. with ``permute_instances`` (world rows only): each sample's instance colour codes from its own random
       permutation (``permuted_instances``), so that a layout's colours never say an object's colour.
    2.-4. training/base.py's ``Diffusion.step``: x_0 from the VAE posterior, ε and t, x_t, the
       (optionally min-SNR-weighted) loss in the backbone's parameterisation, with the prediction
       D(x_t, t; conditions) taken through the adapter's doors as ``BackboneDenoiser`` runs it; with
       ``foreground_weight`` λ > 0 (world rows only) each latent position weighs 1 + λ·(its share covered by
       objects) (``foreground_positions``).

Data: a batch is encoded once (training/base.py's ``encode_batch``: VAE moments and caption token
states) with the adapter's features of every condition. ``cached_batches`` reads it from a world cache
(training/world_cache.py: built once, shared by every trainer); ``world_batches`` computes the very same
rows on the fly (``world_cache.encode_scenes``); any other images and condition sets become a batch
through ``composer_batch``. Conditions are encoded exactly as ``ComposerAdapter.features`` does at
sampling time (the cache stores depth and intensity in fp16), so training and sampling see the same numbers.
"""

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import validation as v
from ..conditions import ConditionSet
from ..conditions.instances import label_colours
from ..denoiser import ModelInputs
from ..errors import InvalidParameter
from ..models.backbone import Backbone
from ..models.composer import AdapterOutputs, ComposerAdapter, ComposerConfig, generation_size
from ..world.dataset import EVAL_SEED_BASE, eval_seeds, make_sample
from ..world.scene import WorldConfig
from .base import Diffusion, NullCaption, StepResult, caption_inputs, encode_batch
from .dropout import DropoutRates, condition_keep
from .world_cache import WorldCache, batch_rows, encode_scenes, world_conditions  # noqa: F401 (re-exported)

# The kinds the shapes world gives exactly (image_embedding too when an image encoder is given).
WORLD_KINDS = ("caption", "palette", "sketch", "instances", "depth", "intensity", "masked_image")
FOREGROUND_WEIGHT_MAX = 100.0
_COLOURS = label_colours(255).astype(np.float32) / 255  # (256, 3): instance k's colour code (ComposerAdapter.features)


# ---------------------------------------------------------------- data

def composer_batch(backbone: Backbone, images: torch.Tensor, sets: Sequence[ConditionSet],
                   adapter: ComposerAdapter) -> dict:
    """Images (B, 3, H, W) in [-1, 1] and one condition set each -> a training batch: ``encode_batch``'s
    tensors (VAE moments, caption tokens and sentence; "" where a set has no caption) and

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
    return {**encode_batch(backbone, images.float(), captions), "features": features, "present": present}


def rows_batch(rows: dict, mask_padding: bool, image_embedding: bool = True) -> dict:
    """World-cache rows (``world_cache.encode_scenes`` or ``WorldCache.rows``) -> a training batch, the
    features made exactly as ``ComposerAdapter.features`` makes them from ``world_conditions`` (the image
    embedding where the rows have one and ``image_embedding``)."""
    n, lengths = len(rows["seed"]), rows["token_lengths"].tolist()
    width, states = max(lengths), torch.from_numpy(rows["tokens"].astype(np.float32))  # (sum L_i, D)
    tokens = torch.zeros(n, width, states.shape[-1])  # (B, T, D) padded to the longest caption
    for i, part in enumerate(states.split(lengths)):
        tokens[i, :len(part)] = part
    batch = {"latent_mean": torch.from_numpy(rows["latent_mean"].astype(np.float32)),
             "latent_std": torch.from_numpy(rows["latent_std"].astype(np.float32)),
             "tokens": tokens, "sentence": torch.from_numpy(rows["sentence"].astype(np.float32))}
    if mask_padding:
        batch["token_mask"] = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).float()  # (B, T)
    image = torch.from_numpy(rows["image"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, S, S)
    mask = torch.zeros(n, 1, *image.shape[-2:])
    for i, (y, x, h, w) in enumerate(rows["box"].tolist()):
        mask[i, :, y:y + h, x:x + w] = 1
    palette = torch.from_numpy(rows["palette"].astype(np.float32))
    features = {"palette": palette / palette.sum(1, keepdim=True),
                "sketch": torch.from_numpy(rows["sketch"].astype(np.float32))[:, None],
                "instances": torch.from_numpy(_COLOURS[rows["labels"]]).permute(0, 3, 1, 2),
                "depth": torch.from_numpy(rows["depth"].astype(np.float32))[:, None],
                "intensity": torch.from_numpy(rows["intensity"].astype(np.float32))[:, None],
                "masked_image": torch.cat([image * (1 - mask), mask], dim=1)}
    batch["instance_labels"] = torch.from_numpy(rows["labels"].astype(np.int64))  # (B, S, S), for permuted codes
    if "image_embedding" in rows and image_embedding:
        features["image_embedding"] = torch.from_numpy(rows["image_embedding"].astype(np.float32))
    present = {kind: torch.ones(n, dtype=torch.bool) for kind in ("caption", *features)}
    return {**batch, "features": features, "present": present}


def world_batches(backbone: Backbone, batch_size: int, size: int, world: WorldConfig = WorldConfig(),
                  image_encoder=None) -> Callable[[int], dict]:
    """``batches(index)`` for the trainer, computed on the fly: batch ``index`` is world seeds index·B …
    index·B + B − 1, encoded as a world cache would hold them (``cached_batches`` reads them from one)."""
    v.integer("batch_size", batch_size, 1)
    v.integer("size", size, 16, 4096)
    world = world.check()

    def batches(index: int) -> dict:
        v.integer("index", index, 0)
        first = index * batch_size
        if first + batch_size > EVAL_SEED_BASE:
            raise InvalidParameter("index", f"below {EVAL_SEED_BASE // batch_size} (seeds from "
                                            f"{EVAL_SEED_BASE} on are the evaluation split)", index)
        rows = encode_scenes(backbone, image_encoder, range(first, first + batch_size), size, world)
        return rows_batch(rows, backbone.mask_padding)

    return batches


def cached_batches(cache: WorldCache, backbone: Backbone, batch_size: int, seed: int = 0,
                   image_embedding: bool = True) -> Callable[[int], dict]:
    """``batches(index)`` read from a world cache: micro-batch ``index`` takes positions index·B … of a fresh
    permutation of the cached scenes per epoch (``world_cache.batch_rows``), a pure function of the index."""
    v.integer("batch_size", batch_size, 1, len(cache))

    def batches(index: int) -> dict:
        rows = cache.rows(batch_rows(v.integer("index", index, 0), batch_size, len(cache), seed))
        return rows_batch(rows, backbone.mask_padding, image_embedding)

    return batches


# ---------------------------------------------------------------- the step

class ComposerTraining(nn.Module):
    """The backbone and its Composer adapter as one module for ``training.train``: ``model(batch, generator)``
    is the loss of a step (see the module docstring). ``composer_step`` is the trainer's step_fn.

    backbone: any latent-diffusion Backbone; the adapter is attached to its UNet here.
    kinds: the condition kinds the data provides; adapter parameters that serve only other kinds are
        frozen (never used, they would get no gradient, which multi-GPU DDP refuses).
    rates: condition dropout (training/dropout.py). train_unet: the UNet trains too (the paper's setting).
    min_snr_gamma: min-SNR-γ loss weighting (training/base.py; None: every timestep weighs 1).
    """

    def __init__(self, backbone: Backbone, adapter: ComposerAdapter, kinds: Sequence[str] = WORLD_KINDS,
                 rates: DropoutRates = DropoutRates(), train_unet: bool = False, min_snr_gamma: float | None = None,
                 permute_instances: bool = False, foreground_weight: float = 0.0):
        super().__init__()
        self.permute_instances = v.boolean("permute_instances", permute_instances)
        self.foreground_weight = v.real("foreground_weight", foreground_weight, 0.0, FOREGROUND_WEIGHT_MAX)
        unknown = set(kinds) - set(ComposerAdapter.ROUTES)
        if unknown or not kinds:
            raise InvalidParameter("kinds", "kinds the Composer adapter hears: " + ", ".join(ComposerAdapter.ROUTES),
                                   sorted(unknown) or kinds)
        if not isinstance(train_unet, bool):
            raise InvalidParameter("train_unet", "True or False", train_unet)
        self.diffusion = Diffusion(backbone, min_snr_gamma)
        if backbone.adapter(ComposerAdapter) is not adapter:
            backbone = backbone.with_adapters(adapter)
        self.backbone, self.kinds, self.rates = backbone, frozenset(kinds), rates
        self.adapter, self.unet = adapter, backbone.unet
        self.vae, self.text_encoder = backbone.vae, backbone.text_encoder
        self.null = NullCaption.of(backbone)
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
        b, n = self.backbone, len(batch["latent_mean"])
        present = batch["present"]
        if extra := sorted(set(present) - self.kinds - {"caption"}):
            raise InvalidParameter("batch", "kinds this training was set up for: " + ", ".join(sorted(self.kinds)),
                                   extra)
        # 1. condition dropout (a kind absent from a sample stays absent; a dropped caption is the empty one)
        drawn = condition_keep(sorted(present), n, self.rates, generator)
        keep = {kind: drawn[kind] & present[kind].to(drawn[kind].device) for kind in present}  # kind -> (B,)
        tokens, mask = caption_inputs(batch, keep["caption"], self.null)  # (B, T, D), (B, T) or None
        features = {"caption": batch["sentence"], **batch["features"]}
        if self.permute_instances and "instance_labels" in batch:  # 1b. each sample's codes a random permutation
            features["instances"] = permuted_instances(batch["instance_labels"], generator).to(features["instances"])
        # 2.-4. the prediction through the adapter's doors, and the loss
        outputs = self.adapter(features, n, tuple(batch["latent_mean"].shape[-2:]), keep=keep)
        inputs = composer_inputs(tokens.to(b.dtype), outputs, text_mask=mask)
        positions = None
        if self.foreground_weight:  # 4'. objects weigh 1 + λ per latent position they cover
            if "instance_labels" not in batch:
                raise InvalidParameter("foreground_weight", "0 for batches without instance labels (a world cache "
                                       "has them)", self.foreground_weight)
            positions = foreground_positions(batch["instance_labels"], tuple(batch["latent_mean"].shape[-2:]),
                                             self.foreground_weight)
        return self.diffusion.step(self.unet, batch, generator, inputs, keep, positions=positions)

    @property
    def noise_scheduler(self):
        return self.diffusion.scheduler


def foreground_share(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label maps (B, H, W) (0: background) -> f (B, 1, h, w): the share of each latent cell that objects cover."""
    return F.adaptive_avg_pool2d((labels > 0).float()[:, None], size)


def foreground_positions(labels: torch.Tensor, size: tuple[int, int], weight: float) -> torch.Tensor:
    """The loss's per-position weights m = 1 + λ·f (B, 1, h, w), f = ``foreground_share``. Small objects are a few
    latent cells of a large flat background, so with m = 1 their colour and shape are a small part of the loss;
    λ > 0 raises it."""
    return 1 + weight * foreground_share(labels, size)


def permuted_instances(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Label maps (B, H, W) -> instance colour codes (B, 3, H, W) in [0, 1], each sample's instances given the codes of
    its own random permutation of the 255 instance codes (the background stays black). A layout's colours then say
    which pixels belong together and nothing else: with the fixed codes of ``ComposerAdapter.features`` (instance 1
    red, 2 blue, ...) the model learnt to paint instance 1 red."""
    n = len(labels)
    order = torch.rand(n, len(_COLOURS) - 1, generator=generator, device=generator.device).argsort(dim=1).cpu() + 1
    codes = torch.cat([torch.zeros(n, 1, dtype=torch.long), order], dim=1)  # (B, 256): label k -> code
    mapped = torch.gather(codes, 1, labels.flatten(1).long().cpu()).view(labels.shape)  # (B, H, W)
    return torch.from_numpy(_COLOURS)[mapped].permute(0, 3, 1, 2)


def composer_inputs(tokens: torch.Tensor, outputs: AdapterOutputs, text_mask: torch.Tensor | None) -> ModelInputs:
    """Text tokens (B, T, D) and the adapter's additions (per-row keep already applied) as ModelInputs: the text
    attended as the backbone attends it (all of it unless ``text_mask`` masks padding), the adapter's token
    slots where their kind is present."""
    like = {"device": tokens.device, "dtype": tokens.dtype}
    text = torch.ones(tokens.shape[:2], **like) if text_mask is None else text_mask.to(**like)
    return ModelInputs(context=torch.cat([tokens, outputs.tokens.to(**like)], dim=1),
                       context_mask=torch.cat([text, outputs.token_mask.to(**like)], dim=1),
                       time_addition=outputs.time_addition.to(**like), input_addition=outputs.input_addition.to(**like))


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

    from ..denoiser import BackboneDenoiser
    from ..guidance import cfg, guided
    from ..io.images import to_pil
    from ..tasks.run import Sampling, run
    from .trainer import image_grid

    v.integer("count", count, 1, 64)
    v.integer("steps", steps, 1, 1000)
    scenes = [make_sample(s, world.check(), size) for s in eval_seeds(count)]
    sets = [world_conditions(s, image_encoder) for s in scenes]

    def sample_fn(model: ComposerTraining, step: int) -> Image.Image:
        b = model.backbone
        denoiser = BackboneDenoiser(b, (size, size))
        tiles = []
        for row, (scene, conds) in enumerate(zip(scenes, sets)):
            tiles.append(Image.fromarray(scene.rendered.image))
            for subset in (conds, ConditionSet.of(*(conds[k] for k in ("caption", "palette", "sketch"))),
                           ConditionSet.of(conds["caption"])):
                denoise, inputs = guided(denoiser, cfg(subset, guidance), 1)
                result = run(denoise, inputs, b, Sampling(scheduler, steps, seed + row, 1, allow_flat=True),
                             (size, size))
                tiles.append(to_pil(result.pixels)[0])
        return image_grid(tiles, columns=4)

    return sample_fn
