"""InstructPix2Pix training (Brooks et al. 2023, §3.4) on any backbone: the widened UNet, the step, the data.

The model is the backbone's UNet widened to 2C input channels (models/instruct.py ``widen``): it reads
[x_t | E(c_I)], E(c_I) the source image's VAE posterior mode, unscaled (as the reference weights). conv_in's first C
input channels are copied and the C new ones start at zero, so before training the widened UNet *is* the base UNet,
whatever the source image. The whole UNet trains (the paper fine-tunes all of it); VAE and text encoder are frozen.

One step (``InstructTraining.step``), every random draw from the step's generator, in this order:
    1. condition dropout, the reference's with p = 0.05: r ~ U[0, 1) per example; the instruction becomes the empty
       caption where r < 2p, the source latents become zeros (the unconditional image) where p ≤ r < 3p, so 5% lose
       the instruction alone, 5% both and 5% the image alone (what dual guidance needs: ε(∅,∅), ε(c_I,∅));
    2.-4. training/base.py's ``Diffusion.step`` on the *edited* image's latents, the source latents at the concat
       door (denoiser.ModelInputs.concat); with ``edit_weight`` λ > 0 each latent position weighs
           m = (1 + λ·d) / mean(1 + λ·d),   d the share of its pixels that the edit changed (``changed_share``),
       so an example's loss is moved toward what its instruction asks for without counting more or less in the
       batch (an object's recolour changes a few percent of the image; the rest is copying, learnt first).

Examples are (before, instruction, after) triples, encoded once per batch (``encode_batch`` of the after image and
the instruction, plus the before image's posterior mode):
    - shapes-world edits (``world_edit_batches``): world/edits.py's ``random_edit`` of training-stream scenes, both
      scenes rendered exactly, so the pair differs by the edit and nothing else;
    - your pairs (``read_pairs``, ``pair_batches``): a folder with a metadata.jsonl of input_image / edit_prompt /
      edited_image records (diffusers' train_instruct_pix2pix columns; what ``recomposer make-pairs`` writes).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import validation as v
from ..denoiser import ModelInputs
from ..errors import InvalidParameter, ModelError
from ..models.backbone import Backbone
from ..models.instruct import widen  # noqa: F401 (re-exported: the model a trainer widens)
from .base import BaseTraining, StepResult, caption_inputs, encode_batch

DROP = 0.05  # the reference's p: text alone, both, image alone, 5% each
EDIT_WEIGHT_MAX = 100.0
CHANGED = 4 / 127.5  # a pixel is changed where any channel moved by more than 4 levels (of 255)
PAIR_COLUMNS = ("input_image", "edit_prompt", "edited_image")  # diffusers' train_instruct_pix2pix columns


# ---------------------------------------------------------------- the step

class InstructTraining(BaseTraining):
    """A backbone whose UNet hears a source image (``widen``) as one module for ``training.train``: ``model(batch,
    generator)`` is a step's loss (module docstring)."""

    def __init__(self, backbone: Backbone, drop: float = DROP, min_snr_gamma: float | None = None,
                 edit_weight: float = 0.0):
        expected = 2 * backbone.latent_channels
        if backbone.unet.config.in_channels != expected:
            raise ModelError("model", f"has a UNet of {backbone.unet.config.in_channels} input channels; an "
                                      f"instruction UNet reads {expected} (widen it first)")
        drop = v.real("drop", drop, 0.0, 1 / 3)
        super().__init__(backbone, caption_drop=2 * drop, min_snr_gamma=min_snr_gamma)  # (frozen VAE and text)
        self.drop = drop
        self.edit_weight = v.real("edit_weight", edit_weight, 0.0, EDIT_WEIGHT_MAX)

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        return self.step(batch, generator).loss

    def step(self, batch: dict, generator: torch.Generator) -> StepResult:
        b, n = self.backbone, len(batch["latent_mean"])
        keep_text, keep_image = instruct_dropout(n, self.drop, generator)  # 1.
        tokens, mask = caption_inputs(batch, keep_text, self.null)  # (B, T, D), (B, T) or None
        source = batch["source"].to(b.device, b.dtype) * keep_image.to(b.device, b.dtype)[:, None, None, None]
        inputs = ModelInputs(context=tokens.to(b.dtype), context_mask=mask, concat=source)
        positions = edit_positions(batch["changed"], self.edit_weight).to(b.device) if self.edit_weight else None
        return self.diffusion.step(self.unet, batch, generator, inputs,
                                   {"caption": keep_text, "source_image": keep_image}, positions=positions)


def edit_positions(changed: torch.Tensor, weight: float) -> torch.Tensor:
    """The loss's per-position weights m = (1 + λ·d) / mean(1 + λ·d) (B, 1, h, w), d = ``changed`` (B, 1, h, w):
    each example's mean weight stays 1."""
    m = 1 + weight * changed.float()
    return m / m.mean(dim=(1, 2, 3), keepdim=True)


def instruct_dropout(n: int, p: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep_text, keep_image), (B,) bool each, from one draw r ~ U[0, 1) per example (the reference's split): the
    text is dropped where r < 2p, the image where p ≤ r < 3p."""
    r = torch.rand(n, generator=generator, device=generator.device)
    return r >= 2 * p, (r < p) | (r >= 3 * p)


def instruct_step(model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
    """The trainer's step_fn: call the (possibly DDP-wrapped) InstructTraining so gradients are synchronised."""
    return model(batch, generator)


# ---------------------------------------------------------------- batches

@torch.no_grad()
def encode_pairs(backbone: Backbone, before: torch.Tensor, after: torch.Tensor, instructions: Sequence[str]) -> dict:
    """Before and after images (B, 3, H, W) in [-1, 1] and the instructions -> a training batch: ``encode_batch``
    of the after images and instructions, ``source`` (B, C, h, w): the before images' posterior mode, unscaled, and
    ``changed`` (B, 1, h, w): ``changed_share`` of the pair."""
    if before.shape != after.shape or before.ndim != 4 or len(before) != len(instructions):
        raise InvalidParameter("images", "before and after images of one shape (B, 3, H, W), one instruction each",
                               f"{tuple(before.shape)} and {tuple(after.shape)}, {len(instructions)} instructions")
    source = backbone.vae.encode(before.to(backbone.device, backbone.vae.dtype)).latent_dist.mode()
    return {**encode_batch(backbone, after, list(instructions)), "source": source.float().cpu(),
            "changed": changed_share(before, after, tuple(source.shape[-2:]))}


def changed_share(before: torch.Tensor, after: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, h, w): the share of each latent position's pixels where the pair differs (any channel by more than
    ``CHANGED``); images (B, 3, H, W) in [-1, 1], H and W multiples of h and w."""
    changed = ((after.float() - before.float()).abs().amax(1, keepdim=True) > CHANGED).float()  # (B, 1, H, W)
    return F.adaptive_avg_pool2d(changed, size).cpu()


def world_edit(seed: int, size: int):
    """Training-stream scene ``seed`` and an edit of it, both drawn from the seed alone: (edit, before, after), the
    renders (S, S, 3) uint8."""
    from ..world.dataset import make_sample
    from ..world.edits import random_edit
    from ..world.render import render

    sample = make_sample(seed, size=size)
    edit = random_edit(sample.scene, np.random.default_rng([seed, 3]))  # independent of the scene's own draws
    return edit, sample.rendered.image, render(edit.after, size).image


def world_edit_batches(backbone: Backbone, batch_size: int, size: int, seed: int = 0) -> Callable[[int], dict]:
    """``batches(index)`` of shapes-world edits: batch ``index`` is training scenes index·B … index·B + B − 1, each
    with one edit (``world_edit``), rendered and encoded on the fly (a few ms of rendering per example; the VAE and
    text encoder dominate). ``seed`` offsets the scenes, so two seeds see different streams."""
    from ..world.dataset import EVAL_SEED_BASE

    v.integer("batch_size", batch_size, 1)
    v.multiple_of("size", size, backbone.vae_factor, 16, 4096)
    offset = v.integer("seed", seed, 0) * 1_000_003 % (EVAL_SEED_BASE // 2)

    def batches(index: int) -> dict:
        first = offset + v.integer("index", index, 0) * batch_size
        if first + batch_size > EVAL_SEED_BASE:
            raise InvalidParameter("index", "a batch below the evaluation split's seeds", index)
        edits = [world_edit(s, size) for s in range(first, first + batch_size)]
        before, after = (torch.from_numpy(np.stack([e[k] for e in edits])).permute(0, 3, 1, 2).float() / 127.5 - 1
                         for k in (1, 2))
        return encode_pairs(backbone, before, after, [e[0].instruction for e in edits])

    return batches


@dataclass(frozen=True)
class Pair:
    """One example of a folder of pairs: the image before, what to do, the image after."""

    before: Path
    instruction: str
    after: Path


def read_pairs(source: str | Path) -> list[Pair]:
    """Pairs from a folder holding a metadata.jsonl (or the JSONL file itself): one object per line with
    input_image, edit_prompt and edited_image (paths relative to the file's folder). Every file must exist."""
    from ..io.files import dataset_records

    pairs = []
    for record, where in dataset_records(source, PAIR_COLUMNS, ("input_image", "edited_image"), "data"):
        sizes = [_image_size(record[k], where) for k in ("input_image", "edited_image")]
        if sizes[0] != sizes[1]:
            raise InvalidParameter("data", f"before and after images of one size ({where})",
                                   f"{sizes[0][0]}x{sizes[0][1]} and {sizes[1][0]}x{sizes[1][1]}")
        pairs.append(Pair(record["input_image"], record["edit_prompt"], record["edited_image"]))
    return pairs


def _image_size(path: Path, where: str) -> tuple[int, int]:
    """An image's size from its header (no pixels decoded); an unreadable file is refused naming its record."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError):
        raise InvalidParameter("data", f"images PIL can read ({where})", str(path)) from None


def pair_batches(backbone: Backbone, pairs: Sequence[Pair], batch_size: int, size: int,
                 seed: int = 0) -> Callable[[int], dict]:
    """``batches(index)`` of your pairs, each image centre-cropped and resized to ``size`` (conditions/fitting.py)
    and encoded on the fly: positions index·B … of a fresh permutation per epoch (``world_cache.batch_rows``)."""
    from ..conditions.fitting import fit_image
    from ..io.images import open_image, to_tensor
    from .world_cache import batch_rows

    v.integer("batch_size", batch_size, 1)
    v.multiple_of("size", size, backbone.vae_factor, 8, 4096)

    def batches(index: int) -> dict:
        chosen = [pairs[i] for i in batch_rows(v.integer("index", index, 0), batch_size, len(pairs), seed)]
        before, after = (torch.cat([to_tensor(fit_image(open_image(getattr(p, k), "data"), (size, size)))
                                    for p in chosen]) for k in ("before", "after"))
        return encode_pairs(backbone, before, after, [p.instruction for p in chosen])

    return batches


# ---------------------------------------------------------------- sample grids

def instruct_sampler(size: int, count: int = 4, steps: int = 12, scheduler: str = "euler_a", guidance: float = 7.5,
                     image_guidance: float = 1.5, pairs: Sequence[Pair] = (), seed: int = 0):
    """A trainer ``sample_fn``: a grid with one row per example, (before, the wanted after, the model's edit), the
    edit made by ``tasks.instruct`` (dual guidance) from noise seeded ``seed + row``. Examples: the first ``count``
    pairs, or edits of the evaluation scenes (``eval_seeds``; never trained on)."""
    from PIL import Image

    from ..conditions.fitting import fit_image
    from ..io.images import open_image
    from ..io.sheets import image_grid
    from ..models.instruct import InstructChannels
    from ..requests import InstructRequest
    from ..tasks.instruct import instruct
    from ..world.dataset import eval_seeds

    v.integer("count", count, 1, 64)
    rows = []  # (before, instruction, after) pictures
    for p in list(pairs)[:count]:
        rows.append((fit_image(open_image(p.before, "data"), (size, size)), p.instruction,
                     fit_image(open_image(p.after, "data"), (size, size))))
    for s in eval_seeds(count - len(rows)):
        edit, before, after = world_edit(s, size)
        rows.append((Image.fromarray(before), edit.instruction, Image.fromarray(after)))

    def sample_fn(model: InstructTraining, step: int) -> Image.Image:
        b = model.backbone if model.backbone.adapter(InstructChannels) else \
            model.backbone.with_adapters(InstructChannels(model.backbone.latent_channels))
        tiles = []
        for row, (before, instruction, after) in enumerate(rows):
            request = InstructRequest(instruction, guidance=guidance, image_guidance=image_guidance,
                                      scheduler=scheduler, steps=steps, seed=seed + row, allow_flat=True)
            tiles += [before, after, instruct(b, before, request)[0].image]
        return image_grid(tiles, columns=3)

    return sample_fn
