"""ControlNet (Zhang et al. 2023) as a step adapter: a trainable copy of the UNet's encoder and middle block
reads a hint image and adds its outputs to the frozen UNet's skip connections and middle output (the
RESIDUALS door, models/adapter.py). Any number of nets stack; their residuals add (diffusers'
MultiControlNetModel).

One net, at step i of a run of N steps (diffusers' window rule, over the steps this run takes):

    active_i = scale > 0 and not (i / N < start or (i + 1) / N > end)
    (r_0 … r_{n−1}, r_n) = C(x_t, t, text, hint)       n skip residuals, then the middle one (r_n)
    r_k ← scale · w_k · r_k ⊙ mask↓_k                  mask↓_k: the mask (1 = control here) area-averaged
                                                       to residual k's size; no mask: 1
    with w_k, and the rows the net runs on, by mode:
      balanced  w_k = 1                    every row (what diffusers' pipeline does)
      prompt    w_k = 0.825^(n − k)        every row: "my prompt is more important" (sd-webui-controlnet's
                                           soft injection, InvokeAI's "more prompt")
      control   w_k = 0.825^(n − k)        conditional rows only, the unconditional ones get 0: "ControlNet is
                                           more important" (soft injection + CFG injection)
      guess     w_k = 10^(k/n − 1)         conditional rows only: diffusers' guess mode (logspace(−1, 0, n + 1));
                                           the net computes this weighting itself, as in diffusers
An inactive net is not run at all: it adds nothing, so it costs nothing (diffusers runs it at scale 0). The net's
hint encoder (``controlnet_cond_embedding``) reads only the hint, the same at every step of a run: it runs once per
run and row count, not once per step as in diffusers (``_hint_once``).
"Conditional rows" are those of a guidance plan's conditional sets (``RowRole.conditional``); in
guess and control modes the net runs on those rows only and its residuals are zero elsewhere.

The net attends to the caption's tokens only (the first ``prompt_length`` context positions, the same in
every row), never to tokens other adapters append. diffusers' ControlNetModel takes no attention mask, so
with a backbone that masks prompt padding (the bundled MiniLM) the net sees the zero padding states too.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import InvalidParameter, ModelError
from ..requests import CONTROL_MODES as MODES  # noqa: F401 (what each mode means: the module docstring)
from ..requests import check_control
from .adapter import RESIDUALS

SOFT = 0.825  # sd-webui-controlnet's soft-injection base (the paper's reference code uses it for guess mode)
HINT_KINDS = ("sketch", "depth", "instances")  # the shapes world's hint kinds (training/controlnet.py draws them)


@dataclass(frozen=True)
class Control:
    """One net's settings for a run. ``hint`` (1, C, H, W) in [0, 1] at the generation size; ``mask`` (1, 1, H, W)
    in [0, 1], 1 = the net controls this region, or None (everywhere)."""

    hint: torch.Tensor
    scale: float = 1.0
    start: float = 0.0  # share of the run's steps before the net starts
    end: float = 1.0  # share of the run's steps after which it stops
    mask: torch.Tensor | None = None
    mode: str = "balanced"  # MODES

    def check(self, field: str = "control") -> "Control":
        check_control(self.scale, self.start, self.end, self.mode, field)
        if not isinstance(self.hint, torch.Tensor) or self.hint.ndim != 4 or self.hint.shape[0] != 1:
            raise InvalidParameter(f"{field}-image", "a hint tensor (1, C, H, W)", getattr(self.hint, "shape", None))
        if self.mask is not None and (not isinstance(self.mask, torch.Tensor)
                                      or tuple(self.mask.shape) != (1, 1, *self.hint.shape[-2:])):
            raise InvalidParameter(f"{field}-mask", f"a mask of the hint's size ({self.hint.shape[-1]}x"
                                                    f"{self.hint.shape[-2]})", tuple(getattr(self.mask, "shape", ())))
        return self

    def active(self, index: int, count: int) -> bool:
        """Whether the net runs at step ``index`` of ``count`` (module docstring)."""
        return self.scale > 0 and not (index / count < self.start or (index + 1) / count > self.end)


class ControlNetAdapter:
    """A diffusers ControlNetModel with its settings for one run, as a step adapter. ``name`` says which net it is
    in errors and provenance (its folder, or ``bundled:KIND``)."""

    consumes = frozenset()  # it carries its own hint: a condition set says nothing to it
    doors = frozenset({RESIDUALS})
    channels = 0

    def __init__(self, net, control: Control, name: str = "controlnet"):
        self.net, self.control, self.name = net, control.check(), name
        self.prompt_length: int | None = None
        self._masks: dict[tuple[int, int], torch.Tensor] = {}
        self._hints: dict[tuple[int, ...], torch.Tensor] = {}  # the hint encoder's output this run, by input shape
        self._run_net = net

    def attach(self, backbone) -> None:
        check_fits(self.net, backbone, self.name)
        weight = next(self.net.parameters())
        if (weight.device, weight.dtype) != (backbone.device, backbone.dtype):  # (a net already there: no walk)
            self.net.to(backbone.device, backbone.dtype)
        self.net.eval()
        self.prompt_length = backbone.prompt_length
        self._run_net = _hint_once(self.net, self._hints)

    def encode(self, backbone, conds, size: tuple[int, int]) -> dict:
        width, height = size
        if tuple(self.control.hint.shape[-2:]) != (height, width):
            raise InvalidParameter("control-image", f"a hint of the generation size {width}x{height}",
                                   f"{self.control.hint.shape[-1]}x{self.control.hint.shape[-2]}")
        self._hints.clear()  # a new run: its hint encoded afresh at its first step
        return {}  # everything happens per step

    def at_step(self, unet, x: torch.Tensor, step, inputs) -> dict:
        c = self.control
        if not c.active(step.index, step.count):
            return {}
        pooled = bool(self.net.config.global_pool_conditions)  # a pooled net (shuffle) runs as in guess mode
        everywhere = c.mode in ("balanced", "prompt") and not pooled
        rows = list(range(len(x))) if everywhere or inputs.rows is None else \
            [i for i, role in enumerate(inputs.rows) if role.conditional]
        if not rows:
            return {}
        pick = torch.tensor(rows, device=x.device)
        text, sample = inputs.context[:, :self.prompt_length], x
        if len(rows) < len(x):
            text, sample = text.index_select(0, pick), x.index_select(0, pick)
        hint = c.hint.to(x.device, x.dtype).expand(len(rows), -1, -1, -1)
        guess = c.mode == "guess" or pooled
        down, mid = self._run_net(sample, step.timestep, encoder_hidden_states=text, controlnet_cond=hint,
                             conditioning_scale=c.scale if c.mode in ("balanced", "guess") else 1.0,
                             guess_mode=guess, return_dict=False)
        residuals = [*down, mid]
        if c.mode in ("prompt", "control"):
            n = len(down)
            residuals = [r * (c.scale * SOFT ** (n - k)) for k, r in enumerate(residuals)]
        if c.mask is not None:
            residuals = [r * self._mask_at(r.shape[-2:]).to(r) for r in residuals]
        if len(rows) < len(x):  # the other rows get nothing
            residuals = [r.new_zeros((len(x), *r.shape[1:])).index_copy(0, pick, r) for r in residuals]
        return {RESIDUALS: (tuple(residuals[:-1]), residuals[-1])}

    def _mask_at(self, size) -> torch.Tensor:
        size = tuple(int(s) for s in size)
        if size not in self._masks:
            self._masks[size] = F.adaptive_avg_pool2d(self.control.mask.float(), size)  # (1, 1, h, w): area average
        return self._masks[size]

    def describe(self) -> dict:
        from .local import weights_sha256

        c = self.control
        return {"name": self.name, "sha256": weights_sha256(self.net), "scale": c.scale, "start": c.start,
                "end": c.end, "mode": c.mode, "masked": c.mask is not None}


class _EncodedOnce(torch.nn.Module):
    """A hint encoder that encodes once per input shape into ``memo`` (a run's hint is the same at every step); with
    gradients on (training), every call encodes."""

    def __init__(self, encoder: torch.nn.Module, memo: dict):
        super().__init__()
        self.encoder, self.memo = encoder, memo

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.encoder(hint)
        key = tuple(hint.shape)
        if key not in self.memo:
            self.memo[key] = self.encoder(hint)
        return self.memo[key]


def _hint_once(net, memo: dict):
    """``net`` for one run, its hint encoder encoding once (``_EncodedOnce``): a shallow copy sharing every weight, so
    the net itself (shared between runs and threads, hashed for provenance) is never changed. A net without a
    diffusers hint encoder is returned as it is."""
    import copy

    encoder = getattr(net, "_modules", {}).get("controlnet_cond_embedding")
    if encoder is None:
        return net
    run = copy.copy(net)
    object.__setattr__(run, "_modules", {**net._modules, "controlnet_cond_embedding": _EncodedOnce(encoder, memo)})
    return run


def hint_tensor(image, size: tuple[int, int], field: str = "control-image") -> torch.Tensor:
    """A hint picture as the net reads it: RGB in [0, 1], (1, 3, H, W) at ``size`` (width, height), fitted by the one
    resize mode every input follows (conditions/fitting.py: a centre crop to the output's aspect, then Lanczos, as
    diffusers' control-image processor resizes; a picture of the output's aspect is only resized)."""
    import numpy as np

    from ..conditions.fitting import fit_image

    if not hasattr(image, "convert"):
        raise InvalidParameter(field, "a picture", type(image).__name__)
    image = fit_image(image, size)
    # contiguous: a channels-last hint would carry its layout into the net's features, slower on CPUs (3% a run)
    return torch.from_numpy(np.asarray(image, np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def check_fits(net, backbone, name: str = "controlnet") -> None:
    """A ControlNet fits a backbone when its residuals have the UNet's shapes and it reads what the backbone has:
    x_t's channels, the text encoder's width, hints folded by the VAE's factor. One error naming what differs."""
    unet = backbone.unet.config
    config = net.config
    field = "controlnet"
    checks = [("in_channels", config.in_channels, backbone.latent_channels, "x_t's channels"),
              ("cross_attention_dim", config.cross_attention_dim, unet.cross_attention_dim, "the text width"),
              ("block_out_channels", tuple(config.block_out_channels), tuple(unet.block_out_channels),
               "the UNet's block widths"),
              ("layers_per_block", config.layers_per_block, unet.layers_per_block, "the UNet's layers per block"),
              ("down_block_types", len(config.down_block_types), len(unet.down_block_types), "the UNet's depth")]
    for key, got, want, what in checks:
        if got != want:
            raise ModelError(field, f"{name} does not fit this model: its {key} is {got}, {what} is {want}")
    factor = 2 ** (len(config.conditioning_embedding_out_channels) - 1)
    if factor != backbone.vae_factor:
        raise ModelError(field, f"{name} does not fit this model: its hint encoder folds by {factor}, the VAE by "
                                f"{backbone.vae_factor}")


def load_controlnet(path: str | Path, device: torch.device, dtype: torch.dtype):
    """A diffusers-format ControlNet folder (config.json + safetensors weights), offline, never unpickling."""
    from diffusers import ControlNetModel

    from . import library

    root = Path(path)
    config = root / "config.json"
    if not config.is_file():
        raise ModelError("controlnet", f"{root} is not a diffusers ControlNet folder (no config.json)")
    declared = library.read_json(config, "controlnet")
    if not isinstance(declared, dict) or declared.get("_class_name") not in ("ControlNetModel", None):
        got = declared.get("_class_name") if isinstance(declared, dict) else None
        raise ModelError("controlnet", f"{config} describes a {got}, not a ControlNetModel")
    try:
        net, info = library.diffusers_model(ControlNetModel, root, "controlnet", dtype)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as e:
        from ..errors import RecomposerError
        from .local import first_line

        if isinstance(e, RecomposerError):
            raise
        raise ModelError("controlnet", f"{root} could not be loaded: {first_line(e)}") from None
    missing, mismatched = info.get("missing_keys", []), info.get("mismatched_keys", [])
    if missing or mismatched:
        what = f"lacks {len(missing)} weights" if missing else f"has {len(mismatched)} weights of the wrong shape"
        raise ModelError("controlnet", f"{root} {what}, e.g. {(missing or mismatched)[0]!r}")
    return net.to(device).eval()


def with_kind_planes(hint: torch.Tensor, kinds: torch.Tensor, count: int) -> torch.Tensor:
    """RGB hints (B, 3, H, W) and each row's kind index (B,) -> (B, 3 + K, H, W) for a net of K > 1 hint kinds:
    plane k is all ones where the row's hint is of the net's k-th kind (one net for many kinds, as ControlNet-Union
    does; its hint encoder's first conv makes the planes a learned kind embedding). A one-kind net: as they are."""
    if count == 1:
        return hint
    planes = F.one_hot(kinds.long().to(hint.device), count).to(hint.dtype)  # (B, K)
    return torch.cat([hint, planes[:, :, None, None].expand(-1, -1, *hint.shape[-2:])], dim=1)


def load_bundled_controlnet(folder: Path, device: torch.device, dtype: torch.dtype):
    """The ControlNet part of a bundled-format folder (``controlnet.safetensors`` + ``controlnet.json``: its diffusers
    config and the hint kinds it reads, in the order of its kind planes): (net, kinds)."""
    from diffusers import ControlNetModel

    from .bundled import WEIGHTS, has_part, read_part
    from .composer import check_fits as fill

    if not has_part("controlnet", folder):
        where = "the bundled model ships no ControlNet yet" if folder == WEIGHTS else \
            f"{folder} has no ControlNet part (controlnet.safetensors and controlnet.json)"
        raise ModelError("controlnet", f"{where}; train one into a parts folder with `recomposer train controlnet "
                                       "--parts PARTS` and give --model PARTS, or give a diffusers ControlNet folder")
    tensors, settings = read_part("controlnet", folder)
    kinds, config = settings.get("kinds"), settings.get("config")
    if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds) or not isinstance(config, dict):
        raise ModelError("controlnet", f"{folder / 'controlnet.json'} records no config and hint kinds")
    try:
        net = ControlNetModel.from_config(config)
    except (TypeError, ValueError, KeyError) as e:
        raise ModelError("controlnet", f"{folder / 'controlnet.json'} holds an unusable config ({e})") from None
    fill(net, tensors, str(folder / "controlnet.safetensors"))
    return net.to(device, dtype).eval(), tuple(kinds)


def kind_index(kind: str, kinds: tuple[str, ...]) -> tuple[int, int]:
    """(k, K): where ``bundled:KIND`` sits among a bundled net's kinds; any other kind is one error listing them."""
    if kind not in kinds:
        raise InvalidParameter("controlnet", "bundled:" + " or bundled:".join(kinds), f"bundled:{kind}")
    return kinds.index(kind), len(kinds)


def hint_picture(cond):
    """A world-kind condition as a bundled ControlNet reads it (training/controlnet.py draws the same): a sketch as
    black lines on white, depth near bright (their ``picture``), instances as the label map in its fixed colours
    on black, with no category text."""
    from PIL import Image

    from ..conditions.instances import label_colours

    if cond.kind in ("sketch", "depth"):
        return cond.picture()
    if cond.kind == "instances":
        return Image.fromarray(label_colours(len(cond))[cond.label_map()])
    raise InvalidParameter("controlnet", "a hint kind: " + ", ".join(HINT_KINDS), cond.kind)
