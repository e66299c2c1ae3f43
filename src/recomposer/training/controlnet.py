"""ControlNet training on any backbone (Zhang et al. 2023, §3.2-3.3): the net, its hints, the step, the data.

What trains: a ControlNetModel made from the backbone's UNet (diffusers' ``from_unet``: copies of conv_in, the
time embedding, the encoder and the middle block, a hint encoder, and a zero-initialised 1×1 convolution on every
output, so an untrained net adds exactly nothing). The backbone (VAE, text encoder, UNet) is frozen and in eval
mode; gradients reach the net through the frozen UNet's decoder, where its residuals are added.

One step (``ControlNetTraining.step``), every random draw from the step's generator, in this order:
    1. caption dropout: each caption replaced by the empty one with probability 0.5 (the paper: half of the
       prompts become empty strings, so the net learns to read a hint with no caption to lean on);
    2. the hint of each sample: its own picture (a folder of triplets), or, for world scenes, the picture of one
       of the net's kinds, drawn uniformly per sample (one draw (B,) even for a one-kind net);
    3.-5. training/base.py's ``Diffusion.step``, the net's residuals C(x_t, t, caption, hint) added at the UNet's
       skips and middle block (``at_step``, as ``ControlNetAdapter.at_step`` adds them at sampling).

Hints are pictures, RGB in [0, 1], drawn as the conditions' own pictures are (conditions/*.py ``picture``), so
what ``recomposer decompose`` or ``world sample`` writes is a hint as it is, and so is a hand drawing:

    sketch      black lines on white paper (1 − lines)
    depth       grayscale, near bright (1 − depth)
    instances   the label map in its fixed colours on black (``label_colours``; no category text)

A net of several kinds (one net for many kinds, as ControlNet-Union does) reads K more input channels: plane k is
all ones when the hint is of the net's k-th kind, zeros otherwise, so the hint is (B, 3 + K, H, W). The hint
encoder's first convolution turns the planes into a learned offset per kind: the kind embedding. A one-kind net
reads plain RGB and is an ordinary ControlNet.

The net attends to the caption's tokens as at sampling: zero-padded to the backbone's prompt length, unmasked
(diffusers' ControlNetModel takes no attention mask; models/controlnet.py).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import validation as v
from ..denoiser import ModelInputs
from ..errors import InvalidParameter, ModelError
from ..models.backbone import Backbone
from ..models.controlnet import HINT_KINDS, with_kind_planes
from .base import Diffusion, NullCaption, StepResult, caption_inputs, encode_batch

CAPTION_DROP = 0.5  # the paper's share of empty prompts
HINT_ENCODER = (16, 32, 96, 256)  # diffusers' hint-encoder widths: a VAE of factor 2^k takes the first k + 1


# ---------------------------------------------------------------- hints

def world_hints(features: dict, kinds: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """World rows' condition features (``composer.rows_batch``) -> hint pictures (B, 3, H, W) in [0, 1], row i as the
    picture of its kind ``names[kinds[i]]`` (module docstring), with the kind planes when ``names`` has several."""
    pictures = {"sketch": lambda: (1 - features["sketch"]).expand(-1, 3, -1, -1),
                "depth": lambda: (1 - features["depth"]).expand(-1, 3, -1, -1),
                "instances": lambda: features["instances"]}
    chosen = sorted({names[k] for k in kinds.tolist()})
    drawn = {kind: pictures[kind]() for kind in chosen}  # (B, 3, H, W) each
    like = drawn[chosen[0]]
    hint = torch.zeros_like(like)
    for k, kind in enumerate(names):
        if kind in drawn:
            rows = (kinds == k).to(like.device)[:, None, None, None]
            hint = torch.where(rows, drawn[kind], hint)
    return with_kind_planes(hint, kinds, len(names))


# ---------------------------------------------------------------- the net

def new_controlnet(backbone: Backbone, kinds: Sequence[str] = ("image",), seed: int = 0):
    """A ControlNet for ``backbone`` made from its UNet (diffusers' ``from_unet``), its hint encoder folding by the
    VAE's factor, reading RGB (+ one plane per kind when ``kinds`` are several). Zero convs: it adds nothing yet."""
    from diffusers import ControlNetModel

    from ..models import doors

    factor = backbone.vae_factor
    halvings = factor.bit_length() - 1
    if factor & (factor - 1) or not 1 <= halvings < len(HINT_ENCODER):
        raise ModelError("model", f"has a VAE factor of {factor}; a ControlNet hint encoder folds by 2 to "
                                  f"{2 ** (len(HINT_ENCODER) - 1)}")
    unet = backbone.unet
    had_doors = doors.installed(unet)
    doors.remove(unet)  # from_unet reads the plain UNet (its config has no class embedding)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_ENCODER[:halvings + 1],
                                            conditioning_channels=3 + (len(kinds) if len(kinds) > 1 else 0))
    finally:
        if had_doors:
            doors.install(unet)
    return net


# ---------------------------------------------------------------- the step

class ControlNetTraining(nn.Module):
    """The frozen backbone and a trainable ControlNet as one module for ``training.train``: ``model(batch,
    generator)`` is a step's loss (module docstring). ``kinds``: the world kinds the net reads (world batches), or
    ("image",) for batches that carry their own ``hint`` pictures."""

    def __init__(self, backbone: Backbone, net: nn.Module, kinds: Sequence[str] = ("image",),
                 caption_drop: float = CAPTION_DROP, min_snr_gamma: float | None = None):
        super().__init__()
        kinds = tuple(kinds)
        if kinds != ("image",) and (not kinds or len(set(kinds)) != len(kinds) or set(kinds) - set(HINT_KINDS)):
            raise InvalidParameter("hint", "distinct world hint kinds (" + ", ".join(HINT_KINDS) + ") or image", kinds)
        expected = 3 + (len(kinds) if len(kinds) > 1 else 0)
        if net.config.conditioning_channels != expected:
            raise InvalidParameter("controlnet", f"a net reading {expected} hint channels for {', '.join(kinds)}",
                                   net.config.conditioning_channels)
        self.kinds, self.caption_drop = kinds, v.real("caption_drop", caption_drop, 0.0, 1.0)
        self.diffusion = Diffusion(backbone, min_snr_gamma)
        self.backbone, self.unet, self.net = backbone, backbone.unet, net
        self.vae, self.text_encoder = backbone.vae, backbone.text_encoder
        self.null = NullCaption.of(backbone)
        for module in (self.vae, self.text_encoder, self.unet):
            module.requires_grad_(False).eval()
        net.requires_grad_(True).train()

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        return self.step(batch, generator).loss

    def step(self, batch: dict, generator: torch.Generator) -> StepResult:
        b, n = self.backbone, len(batch["latent_mean"])
        keep = torch.rand(n, generator=generator, device=generator.device) >= self.caption_drop  # 1. (B,)
        kinds = torch.randint(0, len(self.kinds), (n,), generator=generator, device=generator.device)  # 2. (B,)
        if "hint" in batch:
            if self.kinds != ("image",):
                raise InvalidParameter("batch", f"world rows for a net of kinds {', '.join(self.kinds)}", "hints")
            hint = batch["hint"]  # (B, 3, H, W)
        else:
            if self.kinds == ("image",):
                raise InvalidParameter("hint", "the world kinds to train on (world batches carry no pictures)",
                                       "image")
            hint = world_hints(batch["features"], kinds.cpu(), self.kinds)  # (B, 3 [+ K], H, W)
        tokens, mask = caption_inputs(batch, keep, self.null)  # (B, T, D), (B, T) or None
        inputs = ModelInputs(context=tokens.to(b.dtype), context_mask=mask)
        text = _padded(tokens, b.prompt_length).to(b.dtype)  # what the net attends to at sampling
        hint = hint.to(b.device, b.dtype)

        def residuals(x: torch.Tensor, t: torch.Tensor, inputs: ModelInputs) -> ModelInputs:
            down, mid = self.net(x, t, encoder_hidden_states=text, controlnet_cond=hint, return_dict=False)
            return replace(inputs, down_residuals=tuple(down), mid_residual=mid)

        return self.diffusion.step(self.unet, batch, generator, inputs, {"caption": keep}, at_step=residuals)


def controlnet_step(model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
    """The trainer's step_fn: call the (possibly DDP-wrapped) ControlNetTraining so gradients are synchronised."""
    return model(batch, generator)


def _padded(tokens: torch.Tensor, length: int) -> torch.Tensor:
    """Token states (B, T, D) cut or zero-padded to ``length`` positions."""
    if tokens.shape[1] >= length:
        return tokens[:, :length]
    return F.pad(tokens, (0, 0, 0, length - tokens.shape[1]))


# ---------------------------------------------------------------- a folder of triplets

@dataclass(frozen=True)
class Triplet:
    """One training example of diffusers' ``train_controlnet`` layout: the target image, its hint, its caption."""

    image: Path
    hint: Path
    text: str


def read_triplets(source: str | Path) -> list[Triplet]:
    """Triplets from a JSONL file (one object per line with ``image``, ``conditioning_image`` and ``text``; paths
    relative to the file's folder), or from a folder holding such a ``metadata.jsonl``. Every file must exist."""
    from ..io.files import dataset_records

    files = ("image", "conditioning_image")
    return [Triplet(record["image"], record["conditioning_image"], record["text"])
            for record, _ in dataset_records(source, (*files, "text"), files, "data")]


def triplet_batches(backbone: Backbone, triplets: Sequence[Triplet], batch_size: int, size: int,
                    seed: int = 0) -> Callable[[int], dict]:
    """``batches(index)`` of (image, hint, caption) triplets, each image and hint centre-cropped and resized to
    ``size`` (conditions/fitting.py), encoded (``encode_batch``) on the fly: positions index·B … of a fresh
    permutation per epoch, a pure function of the index (as ``world_cache.batch_rows`` picks cache rows)."""
    from ..conditions.fitting import fit_image
    from ..io.images import open_image, to_tensor
    from .world_cache import batch_rows

    v.integer("batch_size", batch_size, 1)
    v.integer("size", size, 8, 4096)

    def batches(index: int) -> dict:
        chosen = [triplets[i] for i in batch_rows(v.integer("index", index, 0), batch_size, len(triplets), seed)]
        images = torch.cat([to_tensor(fit_image(open_image(t.image, "data"), (size, size))) for t in chosen])
        hints = torch.cat([(to_tensor(fit_image(open_image(t.hint, "data"), (size, size))) + 1) / 2 for t in chosen])
        return {**encode_batch(backbone, images, [t.text for t in chosen]), "hint": hints}  # hints (B, 3, S, S)

    return batches


# ---------------------------------------------------------------- sample grids

def controlnet_sampler(size: int, kinds: Sequence[str], count: int = 4, steps: int = 12, scheduler: str = "ddim",
                       guidance: float = 3.0, triplets: Sequence[Triplet] = (), seed: int = 0):
    """A trainer ``sample_fn``: a grid with one row per example, its target beside (hint, generated) pairs, each
    generated from the example's caption (classifier-free guidance against the empty caption) and its hint through
    the net, ``steps`` steps of ``scheduler`` from noise seeded ``seed + row``. Examples: the first ``count``
    triplets, or, for world kinds, the evaluation scenes (``eval_seeds``) with one pair per kind."""
    from PIL import Image

    from ..conditions import Caption, ConditionSet
    from ..conditions.fitting import fit_image
    from ..denoiser import BackboneDenoiser
    from ..guidance import cfg, guided
    from ..io.images import open_image, to_pil
    from ..io.sheets import image_grid
    from ..models.controlnet import Control, ControlNetAdapter, hint_picture, hint_tensor
    from ..tasks.run import Sampling, run
    from ..world.dataset import eval_seeds, make_sample
    from .world_cache import world_conditions

    v.integer("count", count, 1, 64)
    v.integer("steps", steps, 1, 1000)
    kinds = tuple(kinds)
    rows = []  # (target picture, caption, [hint pictures, one per kind])
    if kinds == ("image",):
        for t in list(triplets)[:count]:
            rows.append((fit_image(open_image(t.image, "data"), (size, size)), t.text,
                         [fit_image(open_image(t.hint, "data"), (size, size))]))
    else:
        for s in eval_seeds(count):
            sample = make_sample(s, size=size)
            conds = world_conditions(sample)
            rows.append((Image.fromarray(sample.rendered.image), sample.caption,
                         [hint_picture(conds[kind]) for kind in kinds]))

    def sample_fn(model: ControlNetTraining, step: int) -> Image.Image:
        tiles = []
        for row, (target, caption, pictures) in enumerate(rows):
            tiles.append(target)
            for k, picture in enumerate(pictures):
                hint = with_kind_planes(hint_tensor(picture, (size, size)), torch.tensor([k]), len(pictures))
                b = model.backbone.with_adapters(ControlNetAdapter(model.net, Control(hint)))
                plan = cfg(ConditionSet.of(Caption(caption)), guidance)
                denoise, inputs = guided(BackboneDenoiser(b, (size, size)), plan, 1)
                result = run(denoise, inputs, b, Sampling(scheduler, steps, seed + row, 1, allow_flat=True),
                             (size, size))
                tiles += [picture, to_pil(result.pixels)[0]]
        return image_grid(tiles, columns=1 + 2 * len(rows[0][2]))

    return sample_fn
