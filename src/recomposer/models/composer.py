"""Composer's conditioning as an adapter for any latent-diffusion backbone (Huang et al. 2023, §3.1).

An adapter in the sense of models/adapter.py: it consumes the eight Composer kinds and writes through three
doors (CONTEXT, TIME, INPUT). Which kind enters where (``ComposerAdapter.ROUTES``, declared, never
inferred from shapes):

    caption          -> timestep embedding        (its sentence embedding; word tokens stay the backbone's)
    image_embedding  -> timestep embedding + 4 extra context tokens
    palette          -> timestep embedding + 4 extra context tokens
    sketch, instances, depth, intensity, masked_image -> conv_in's output (the widened first conv)

- Global: each present kind is projected by one linear layer and the projections are summed and
  added to the UNet's timestep embedding; image embedding and palette are also projected into
  ``tokens_per_global`` tokens each, appended after the text tokens in fixed slots
  [image_embedding × 4, palette × 4]. The slots are always there, so condition sets with
  different kinds batch into one forward; an absent kind's slots hold zeros and are masked out
  of cross-attention (weight exactly 0 after the softmax).
- Local: each present kind is folded to latent size without losing a pixel (pixel unshuffle: each
  f × f block of pixels becomes f² channels, as T2I-Adapter does) and goes through its own three
  3×3 convolutions to ``local_channels``; the embeddings are summed and, as in the paper,
  concatenated with x_t before the UNet's first conv. Every conv runs at latent size, so the
  encoders cost a few percent of a UNet step instead of rivalling it at pixel size. That conv is
  widened by ``local_channels`` inputs: conv_in([x_t; e]) = W·x_t + b + W_e·e. The adapter owns
  the new columns W_e (``channels_in``) and computes W_e·e itself, once per run (e does not
  change across steps); the UNet adds it to its conv_in output (``attach``). Same sum as a
  widened conv, but the backbone's weights, config and state dict stay untouched.
- Absent means absent: a kind that is not given contributes nothing at any door, whatever the
  weights (no bias reaches the model from an absent kind), so missing conditions are simply missing.

Zero initialisation (the new layers that write into the backbone: the global time projections,
the token projections, ``channels_in``) makes an untrained adapter give exactly the backbone's
output with no conditions and with any set of caption and local conditions. Present extra
tokens are the exception, and no initialisation can avoid it: a token takes softmax weight
exp(q·k) even when it is zero (k = 0, weight e⁰ = 1 next to the text tokens' exp(q·k_i)), so an
untrained image embedding or palette dilutes cross-attention slightly (its value adds 0).
Only one layer per path is zero: two zero layers in series would never receive a gradient.

The backbone's TIME and INPUT doors hold no weights (models/doors.py); ``attach`` checks the sizes and
installs them, ``Backbone.with_adapters`` does both, and a plain denoiser still runs unchanged on a UNet
that has them.
"""

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..conditions import Condition, ConditionSet
from ..conditions.instances import label_colours
from ..errors import InvalidParameter, ModelError
from . import adapter as adapter_doors
from .backbone import Backbone
from .doors import install as install_doors

TIME, TOKENS, CHANNELS = adapter_doors.TIME, adapter_doors.CONTEXT, adapter_doors.INPUT  # the doors of ROUTES
FORMAT = "recomposer.composer/1"  # safetensors metadata: what the file holds


LOCAL_ENCODERS = ("unshuffle", "strided")
MAX_PARAMETERS = 500_000_000  # a Composer adapter for SD 1.5 has about 12M
_MAX_SIZE = {"vae_factor": 64, "tokens_per_global": 64, "local_channels": 1024, "local_width": 1024}  # others 8192


@dataclass(frozen=True)
class ComposerConfig:
    """Sizes of a Composer adapter; ``for_backbone`` reads the backbone's from the model."""

    sentence_dim: int  # the text encoder's sentence-embedding width (Backbone.encode_sentence)
    image_embedding_dim: int  # length of the ImageEmbedding vectors it hears (768 for CLIP ViT-L/14)
    time_embed_dim: int  # the UNet's timestep-embedding width (4 × block_out_channels[0] in SD)
    cross_attention_dim: int  # the UNet's context width (768 SD 1.x, 1024 SD 2.x)
    unet_in_width: int  # the UNet's conv_in output channels (block_out_channels[0])
    vae_factor: int  # pixels per latent cell (8 for SD): log2 of it = stride-2 convs per local encoder
    palette_dim: int = 180  # Composer's colour histogram (conditions.Palette)
    tokens_per_global: int = 4  # extra context tokens per token kind: image embedding 4 + palette 4 = the paper's 8
    local_channels: int = 8  # channels of the summed local embedding (VideoComposer's 8 concat channels)
    local_width: int = 32  # channels inside each local encoder
    image_encoder: str | None = None  # identity of the image encoder it was trained with; None: any of the right dim
    local_encoder: str = "unshuffle"  # "unshuffle": pixel unshuffle, then convs at latent size; "strided": the
    #                                   first adapters' convs at pixel size, one stride-2 conv per halving

    def __post_init__(self) -> None:
        for f in fields(self):  # bounded, so a forged config is refused before anything is allocated
            value, high = getattr(self, f.name), _MAX_SIZE.get(f.name, 8192)
            if f.name not in ("image_encoder", "local_encoder") and (
                    isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high):
                raise InvalidParameter(f"composer.{f.name}", f"an integer in [1, {high}]", value)
        if self.image_encoder is not None and not isinstance(self.image_encoder, str):
            raise InvalidParameter("composer.image_encoder", "a string or null", self.image_encoder)
        if self.vae_factor & (self.vae_factor - 1):
            raise InvalidParameter("composer.vae_factor", "a power of two", self.vae_factor)
        if self.local_encoder not in LOCAL_ENCODERS:
            raise InvalidParameter("composer.local_encoder", "one of " + ", ".join(LOCAL_ENCODERS), self.local_encoder)
        if self.parameter_count() > MAX_PARAMETERS:
            raise InvalidParameter("composer", f"sizes of at most {MAX_PARAMETERS:.0e} parameters",
                                   f"{self.parameter_count():.3g}")

    def parameter_count(self) -> int:
        """Weights of the adapter these sizes make (biases included), counted before anything is built."""
        c, w = self, self.local_width
        globals_ = c.sentence_dim + c.image_embedding_dim + c.palette_dim
        time = globals_ * c.time_embed_dim + 3 * c.time_embed_dim
        tokens = (c.image_embedding_dim + c.palette_dim + 2) * c.tokens_per_global * c.cross_attention_dim
        if c.local_encoder == "unshuffle":
            folded = c.vae_factor ** 2
            local = sum(9 * (n * folded * w + w * w + w * c.local_channels) + 2 * w + c.local_channels
                        for n in ComposerAdapter.LOCAL_INPUTS.values())
        else:
            halvings = c.vae_factor.bit_length() - 1
            local = sum(9 * (n * w + halvings * w * w + w * c.local_channels) + (1 + halvings) * w
                        + c.local_channels for n in ComposerAdapter.LOCAL_INPUTS.values())
        return time + tokens + local + 9 * c.local_channels * c.unet_in_width

    @classmethod
    def read(cls, settings: object, source: str) -> "ComposerConfig":
        """A config from a file's JSON (a string or an object); anything else is a ModelError naming ``source``."""
        try:
            settings = json.loads(settings) if isinstance(settings, str) else settings
            if not isinstance(settings, dict):
                raise TypeError("not a JSON object")
            return cls(**{"local_encoder": "strided", **settings})  # adapters saved before the choice existed
        except (TypeError, ValueError, RecursionError) as e:
            raise ModelError(source, f"has an unreadable adapter config ({e})") from None

    @classmethod
    def for_backbone(cls, backbone: Backbone, image_embedding_dim: int, **settings) -> "ComposerConfig":
        """The sizes ``backbone`` needs; ``settings`` override the defaults above."""
        unet, text = backbone.unet, backbone.text_encoder.config
        return cls(sentence_dim=text.hidden_size, image_embedding_dim=image_embedding_dim,
                   time_embed_dim=unet.time_embedding.linear_2.out_features,
                   cross_attention_dim=unet.config.cross_attention_dim,
                   unet_in_width=unet.conv_in.out_channels, vae_factor=backbone.vae_factor, **settings)


@dataclass(frozen=True)
class AdapterOutputs:
    """What the adapter adds at the backbone's doors, batch-first."""

    time_addition: torch.Tensor  # (B, time_embed_dim) added to the timestep embedding
    tokens: torch.Tensor  # (B, K, cross_attention_dim) appended to the text tokens; K = 2 · tokens_per_global
    token_mask: torch.Tensor  # (B, K) 1 = the slot's kind is present, 0 = absent (masked out)
    input_addition: torch.Tensor  # (B, unet_in_width, h, w) added to conv_in's output


class ComposerAdapter(nn.Module):
    """Composer's global and local condition encoders; see the module docstring for the doors."""

    ROUTES: ClassVar[Mapping[str, tuple[str, ...]]] = MappingProxyType({
        "caption": (TIME,), "image_embedding": (TIME, TOKENS), "palette": (TIME, TOKENS),
        "sketch": (CHANNELS,), "instances": (CHANNELS,), "depth": (CHANNELS,), "intensity": (CHANNELS,),
        "masked_image": (CHANNELS,)})
    # Input channels of each local kind's encoder, at pixel resolution (see ``features`` for the values).
    LOCAL_INPUTS: ClassVar[Mapping[str, int]] = MappingProxyType({
        "sketch": 1, "instances": 3, "depth": 1, "intensity": 1, "masked_image": 4})
    TOKEN_KINDS: ClassVar[tuple[str, ...]] = ("image_embedding", "palette")  # slot order after the text tokens
    consumes: ClassVar[frozenset[str]] = frozenset(ROUTES)  # the Adapter protocol (models/adapter.py)
    doors: ClassVar[frozenset[str]] = frozenset({TIME, TOKENS, CHANNELS})
    channels: ClassVar[int] = 0  # adds to conv_in's output: no input channels of its own

    def __init__(self, config: ComposerConfig):
        super().__init__()
        self.config = c = config
        global_dims = {"caption": c.sentence_dim, "image_embedding": c.image_embedding_dim, "palette": c.palette_dim}
        self.time = nn.ModuleDict({kind: _zero(nn.Linear(global_dims[kind], c.time_embed_dim))
                                   for kind in self.ROUTES if TIME in self.ROUTES[kind]})
        width = c.tokens_per_global * c.cross_attention_dim
        self.tokens = nn.ModuleDict({kind: _zero(nn.Linear(global_dims[kind], width)) for kind in self.TOKEN_KINDS})
        self.local = nn.ModuleDict({kind: _local_encoder(channels, c) for kind, channels in self.LOCAL_INPUTS.items()})
        self.channels_in = _zero(nn.Conv2d(c.local_channels, c.unet_in_width, 3, padding=1, bias=False))

    @property
    def token_count(self) -> int:
        return len(self.TOKEN_KINDS) * self.config.tokens_per_global

    # --- conditions -> feature tensors -------------------------------------------------------
    def features(self, cond: Condition) -> torch.Tensor:
        """A condition value as the adapter's input: (1, D) for global kinds, (1, C, H, W) for local ones.

        - image_embedding: the vector; palette: the histogram divided by its sum (a distribution);
        - sketch: 1 on a line, 0 elsewhere; depth: 0 near .. 1 far; intensity: 0 .. 1;
        - instances: a fixed colour code of the label map: background black, instance k (0-based,
          in mask order) the RGB of hue (0.618034·k mod 1), saturation 0.75, value 0.95, in [0, 1]
          (the colours of ``Instances.picture``); categories are not encoded;
        - masked_image: the masked RGB in [-1, 1] (0 inside the region to generate) + the mask (1 = generate).
        The caption's feature is its sentence embedding, which needs the backbone (ComposerDenoiser).
        """
        kind = cond.kind
        if kind == "image_embedding":
            dim = self.config.image_embedding_dim
            if cond.dim != dim:
                raise InvalidParameter("image_embedding.vector", f"shape ({dim},) for this adapter", (cond.dim,))
            wanted = self.config.image_encoder
            if wanted is not None and cond.encoder != wanted:
                raise InvalidParameter("image_embedding.encoder", f"{wanted!r} (the encoder this adapter was trained "
                                       "with)", cond.encoder)
            return torch.from_numpy(np.array(cond.vector, np.float32))[None]
        if kind == "palette":
            h = torch.from_numpy(np.array(cond.histogram, np.float32))
            return (h / h.sum())[None]
        if kind == "sketch":
            return torch.from_numpy(cond.lines.astype(np.float32))[None, None]
        if kind == "instances":
            colours = label_colours(len(cond))[cond.label_map()].astype(np.float32) / 255  # (H, W, 3)
            return torch.from_numpy(colours).permute(2, 0, 1)[None]
        if kind in ("depth", "intensity"):
            return torch.from_numpy(np.array(cond.values, np.float32))[None, None]
        if kind == "masked_image":
            return torch.cat([cond.masked, cond.mask.to(cond.masked.dtype)], dim=1).float()
        if kind == "caption":
            raise InvalidParameter("caption", "encoded by the backbone (Backbone.encode_sentence)", cond)
        raise InvalidParameter("conditions", "kinds the Composer adapter hears: " + ", ".join(self.ROUTES), kind)

    # --- the adapter proper: feature tensors -> additions at the doors ------------------------
    def forward(self, features: Mapping[str, torch.Tensor], batch: int, latent_size: tuple[int, int],
                keep: Mapping[str, torch.Tensor] | None = None) -> AdapterOutputs:
        """Additions for the kinds in ``features``; every other kind is absent.

        features: kind -> (B, D) for global kinds (caption: its sentence embedding), (B, C, H, W) for
        local ones at H, W = latent_size × vae_factor. keep: kind -> (B,) 0/1, rows where a given kind
        counts as absent (per-sample condition dropout in training); kinds not in it are kept.
        """
        c, p = self.config, next(self.parameters())
        h, w = latent_size
        time = torch.zeros(batch, c.time_embed_dim, device=p.device, dtype=p.dtype)  # (B, Dt)
        tokens = torch.zeros(batch, self.token_count, c.cross_attention_dim, device=p.device, dtype=p.dtype)
        token_mask = torch.zeros(batch, self.token_count, device=p.device, dtype=p.dtype)  # (B, K)
        local = torch.zeros(batch, c.local_channels, h, w, device=p.device, dtype=p.dtype)  # (B, Cl, h, w)
        for kind, x in features.items():
            self._check(kind, x, batch, (h * c.vae_factor, w * c.vae_factor))
            x = x.to(p.device, p.dtype)
            k = torch.ones(batch, device=p.device, dtype=p.dtype) if keep is None or kind not in keep \
                else keep[kind].to(p.device, p.dtype)  # (B,)
            if TIME in self.ROUTES[kind]:
                time = time + self.time[kind](x) * k[:, None]
            if TOKENS in self.ROUTES[kind]:
                slot = self.TOKEN_KINDS.index(kind) * c.tokens_per_global
                span = slice(slot, slot + c.tokens_per_global)
                tokens[:, span] = self.tokens[kind](x).view(batch, c.tokens_per_global, -1) * k[:, None, None]
                token_mask[:, span] = k[:, None]
            if CHANNELS in self.ROUTES[kind]:
                local = local + self.local[kind](x) * k[:, None, None, None]
        return AdapterOutputs(time, tokens, token_mask, self.channels_in(local))

    def _check(self, kind: str, x: torch.Tensor, batch: int, pixels: tuple[int, int]) -> None:
        if kind not in self.ROUTES:
            raise InvalidParameter("conditions", "kinds the Composer adapter hears: " + ", ".join(self.ROUTES), kind)
        if kind in self.LOCAL_INPUTS:
            want = (batch, self.LOCAL_INPUTS[kind], *pixels)
        else:
            want = (batch, {"caption": self.config.sentence_dim, "image_embedding": self.config.image_embedding_dim,
                            "palette": self.config.palette_dim}[kind])
        if tuple(x.shape) != want:
            raise InvalidParameter(kind, f"a tensor of shape {want}", tuple(x.shape))

    # --- the backbone's doors -----------------------------------------------------------------
    def attach(self, backbone: Backbone) -> None:
        """Install the weightless TIME and INPUT doors on the backbone's UNet (models/doors.py); idempotent.

        Refused when the backbone's sizes differ from this adapter's or its UNet's class-embedding slot is in use.
        """
        c, unet = self.config, backbone.unet
        sizes = {"time_embed_dim": unet.time_embedding.linear_2.out_features,
                 "cross_attention_dim": unet.config.cross_attention_dim, "unet_in_width": unet.conv_in.out_channels,
                 "vae_factor": backbone.vae_factor,
                 "sentence_dim": getattr(backbone.text_encoder.config, "hidden_size", c.sentence_dim)}
        for name, size in sizes.items():
            if getattr(c, name) != size:
                raise ModelError("adapter", f"was made for {name} {getattr(c, name)}, the backbone has {size}")
        install_doors(unet)

    def encode(self, backbone: Backbone, conds: ConditionSet, size: tuple[int, int]) -> dict:
        """Door inputs of one condition set at generation ``size`` (width, height pixels): the caption's sentence
        embedding (the empty caption has none: it is the caption's null at every door), every other kind
        through ``features``; local conditions must be of the generation size."""
        width, height = size
        f = self.config.vae_factor
        caption = conds["caption"].text if "caption" in conds else ""
        features = {"caption": backbone.encode_prompts([caption]).sentence} if caption else {}  # (1, D_s)
        for kind in conds:
            if kind in self.LOCAL_INPUTS and local_size(conds[kind]) != size:
                w, h = local_size(conds[kind])
                raise InvalidParameter(kind, f"{width}x{height} pixels (the generation size)", f"{w}x{h}")
            if kind in self.ROUTES and kind != "caption":
                features[kind] = self.features(conds[kind])  # (1, D) or (1, C, H, W)
        out = self(features, 1, (height // f, width // f))
        return {TIME: out.time_addition, TOKENS: (out.tokens, out.token_mask), CHANNELS: out.input_addition}

    # --- files --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Weights as safetensors, the config as JSON in the file's metadata; written all or nothing."""
        from safetensors.torch import save

        from ..io.files import atomic_write

        state = {name: t.detach().contiguous().cpu() for name, t in self.state_dict().items()}
        data = save(state, metadata={"format": FORMAT, "config": json.dumps(asdict(self.config))})
        return atomic_write(path, lambda f: f.write(data))

    @classmethod
    def load(cls, path: str | Path) -> "ComposerAdapter":
        """An adapter saved by ``save`` (checked as every weights file is: no pickle, no NaN)."""
        from ..io.weights import check_safetensors, load_safetensors

        meta = check_safetensors(path).get("__metadata__", {})
        if meta.get("format") != FORMAT:
            raise ModelError(str(path), f"is not a Composer adapter (format {meta.get('format')!r}, "
                                        f"expected {FORMAT!r})")
        adapter = cls(ComposerConfig.read(meta.get("config"), str(path)))
        check_fits(adapter, load_safetensors(path), str(path))
        return adapter.eval()


def local_size(cond: Condition) -> tuple[int, int]:
    """(width, height) in pixels of a local condition's payload."""
    shape = {"sketch": lambda: cond.lines.shape, "instances": lambda: cond.masks.shape[1:],
             "depth": lambda: cond.values.shape, "intensity": lambda: cond.values.shape,
             "masked_image": lambda: tuple(cond.image.shape[2:])}[cond.kind]()
    return int(shape[1]), int(shape[0])


def generation_size(*sets: ConditionSet) -> tuple[int, int] | None:
    """The (width, height) all local conditions of the sets share, or None when there are none.

    A local condition of another size than the first one found is an error naming its kind.
    """
    found = None
    for conds in sets:
        for kind in conds:
            if kind in ComposerAdapter.LOCAL_INPUTS:
                size = local_size(conds[kind])
                if found is None:
                    found = (kind, size)
                elif size != found[1]:
                    raise InvalidParameter(kind, f"{found[1][0]}x{found[1][1]} pixels like the {found[0]}",
                                           f"{size[0]}x{size[1]}")
    return None if found is None else found[1]


def check_fits(module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Fill ``module`` with ``tensors``: every key present, none extra, every shape right, else a ModelError."""
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or extra or wrong:
        detail = [f"{len(missing)} missing, e.g. {missing[0]!r}" if missing else "",
                  f"{len(extra)} unexpected, e.g. {extra[0]!r}" if extra else "",
                  f"{len(wrong)} of the wrong shape, e.g. {wrong[0]!r}: {list(tensors[wrong[0]].shape)} where "
                  f"{list(own[wrong[0]].shape)} fits" if wrong else ""]
        raise ModelError(source, "does not fit its architecture (" + "; ".join(d for d in detail if d) + ")")
    module.load_state_dict({k: t.to(own[k].dtype) for k, t in tensors.items()})


def _zero(layer: nn.Module) -> nn.Module:
    for p in layer.parameters():
        nn.init.zeros_(p)
    return layer


def _local_encoder(channels: int, c: ComposerConfig) -> nn.Sequential:
    """Pixels (B, channels, H, W) -> (B, local_channels, H / f, W / f): pixel unshuffle by f to
    (B, channels·f², H / f, W / f), then three 3×3 convs at latent size ("strided": 3×3 convs at pixel
    size, one of stride 2 per halving)."""
    f, w = c.vae_factor, c.local_width
    if c.local_encoder == "strided":
        layers: list[nn.Module] = [nn.Conv2d(channels, w, 3, padding=1), nn.SiLU()]
        for _ in range(f.bit_length() - 1):
            layers += [nn.Conv2d(w, w, 3, stride=2, padding=1), nn.SiLU()]
        return nn.Sequential(*layers, nn.Conv2d(w, c.local_channels, 3, padding=1))
    return nn.Sequential(nn.PixelUnshuffle(f), nn.Conv2d(channels * f * f, w, 3, padding=1), nn.SiLU(),
                         nn.Conv2d(w, w, 3, padding=1), nn.SiLU(), nn.Conv2d(w, c.local_channels, 3, padding=1))
