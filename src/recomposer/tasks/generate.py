"""Text-to-image, img2img and inpainting: one task over the one loop.

- no image: start from noise (times the scheduler's initial sigma) and run the whole schedule;
- image: img2img: encode, noise to the level ``strength`` of the schedule, run the rest;
- image + mask: inpainting. A 9-channel inpainting UNet hears the masked image as extra input
  channels; a 4-channel UNet is kept on the known region by the loop's blend hook.
Any of them with ControlNets (models/controlnet.py): each net joins the backbone's adapter stack for the run,
with its hint resized to the output and its settings from the request.
The order of random draws per sample follows diffusers' pipelines (VAE posterior sample, then
noise), so with the same seeds the images match theirs.
"""

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image

from .. import validation as v
from ..conditions import Caption, ConditionSet, MaskedImage
from ..denoiser import BackboneDenoiser
from ..errors import BadImage, InvalidParameter
from ..guidance import cfg, guided
from ..io.images import to_pil, to_tensor
from ..models.backbone import Backbone
from ..models.inpainting import InpaintingChannels
from ..models.memory import check_fits
from ..provenance import FORMAT, library_versions
from ..requests import MAX_BATCH, MAX_SIDE, MAX_STEPS, ComposeRequest, GenerateRequest  # noqa: F401
from ..sampling import StepCallback
from ..schedulers import display_name
from .run import Sampling, run



@dataclass(frozen=True)
class ControlInput:
    """What the k-th ``request.controls`` entry needs besides its settings: the net and its hint picture."""

    net: torch.nn.Module  # a diffusers ControlNetModel that fits the backbone
    hint: Image.Image  # any size: fitted to the output (a centre crop to its aspect, then a resize)
    mask: torch.Tensor | None = None  # (1, 1, H, W) at the output size, 1 = the net controls here
    kind: tuple[int, int] | None = None  # (k, K): a net of K hint kinds reads its k-th (a bundled net); None: RGB


@dataclass(frozen=True)
class Generated:
    image: Image.Image
    pixels: torch.Tensor  # (3, H, W) float in [0, 1], before 8-bit rounding
    seed: int
    provenance: dict  # JSON-ready; see provenance.py


def generate(backbone: Backbone, request: GenerateRequest, image: Image.Image | None = None,
             mask: torch.Tensor | None = None, callback: StepCallback | None = None,
             cancel=None, controls: Sequence[ControlInput] = ()) -> list[Generated]:
    """Make ``request.batch`` images. ``mask`` (1, 1, H, W) in {0, 1}, 1 = repaint, needs ``image``.
    ``controls``: one per ``request.controls``, in order."""
    request = resolve(backbone, request, image, mask)
    size = (request.width, request.height)
    b = with_controls(backbone, request, controls, size)

    # Conditions and the guidance plan. A model that hears the masked image has it in both sets (it is not
    # guided); for any other model the loop keeps the outside instead (the blend hook).
    hears_mask = b.adapter(InpaintingChannels) is not None
    masked = MaskedImage(to_tensor(image), mask) if mask is not None and hears_mask else None
    plan = cfg(ConditionSet.of(Caption(request.prompt), masked), request.guidance,
               negative=ConditionSet.of(Caption(request.negative), masked), rescale=request.guidance_rescale,
               interval=(request.guidance_start, request.guidance_end))
    check_fits(b, *size, request.batch, rows=len(plan.sets()))  # before any compute (R10)
    denoise, inputs = guided(BackboneDenoiser(b, size), plan, request.batch)
    sampling = Sampling(request.scheduler, request.steps, request.seed, request.batch, request.strength,
                        request.allow_flat)
    result = run(denoise, inputs, b, sampling, size, image=None if image is None else to_tensor(image),
                 inpainting=mask is not None, keep=mask if mask is not None and not hears_mask else None,
                 callback=callback, cancel=cancel)
    images = to_pil(result.pixels)
    base = provenance_base(b, request, image, mask, controls)
    floats = (result.pixels.float() / 2 + 0.5).clamp(0, 1).cpu()
    # params keep the whole batch: a batch equals its singles to ~1e-6, yet one 8-bit level can flip,
    # so recall replays the batch and takes image ``batch_index`` to get the very same pixels.
    return [Generated(im, floats[k], request.seed + k, {**base, "seed": request.seed + k, "batch_index": k})
            for k, im in enumerate(images)]


def with_controls(backbone: Backbone, request: GenerateRequest | ComposeRequest, controls: Sequence[ControlInput],
                  size: tuple[int, int]) -> Backbone:
    """The backbone with one ControlNet adapter per ``request.controls`` entry on top of its stack."""
    from ..models.controlnet import Control, ControlNetAdapter, hint_tensor, with_kind_planes

    if len(controls) != len(request.controls):
        raise InvalidParameter("control-image", f"one per --controlnet ({len(request.controls)})", len(controls))
    adapters = []
    for settings, given in zip(request.controls, controls):
        if given.mask is not None and tuple(given.mask.shape) != (1, 1, size[1], size[0]):
            raise BadImage("control-mask", f"must be {size[0]}x{size[1]} like the output")
        if settings.masked != (given.mask is not None):
            raise InvalidParameter("control-mask", "given exactly where the request says masked", settings.masked)
        hint = hint_tensor(given.hint, size)  # (1, 3, H, W)
        if given.kind is not None:
            hint = with_kind_planes(hint, torch.tensor([given.kind[0]]), given.kind[1])  # (1, 3 + K, H, W)
        control = Control(hint, settings.scale, settings.start, settings.end, given.mask, settings.mode)
        adapters.append(ControlNetAdapter(given.net, control, settings.net))
    return backbone.with_adapters(*adapters) if adapters else backbone


def resolve(backbone: Backbone, request: GenerateRequest, image: Image.Image | None,
            mask: torch.Tensor | None) -> GenerateRequest:
    """Fill defaults that depend on the model or the image; check what needs them. No compute. ``backbone``
    may be a models.facts.ModelShape (its configs, read before the model loads)."""
    request.check()
    if mask is not None and image is None:
        raise InvalidParameter("mask", "given together with an image", "a mask without an image")
    f = backbone.vae_factor
    if image is not None:
        for name, side in (("width", image.width), ("height", image.height)):
            given = getattr(request, name)
            if given is not None and given != side:
                raise InvalidParameter(name, f"the image's {name} ({side}) or omitted", given)
            if side % f:
                raise BadImage("image", f"is {image.width}x{image.height}; both sides must be multiples of {f}")
        request = replace(request, width=image.width, height=image.height,
                          strength=request.strength if request.strength is not None else
                          (1.0 if mask is not None else 0.8))
    else:
        if request.strength is not None:
            raise InvalidParameter("strength", "used only with an image", request.strength)
        request = replace(request, width=request.width or backbone.native_size,
                          height=request.height or backbone.native_size)
    v.multiple_of("width", request.width, f, 8, MAX_SIDE)
    v.multiple_of("height", request.height, f, 8, MAX_SIDE)
    if mask is not None and tuple(mask.shape) != (1, 1, request.height, request.width):
        raise BadImage("mask", f"must be {request.width}x{request.height} like the image")
    return request


def pixel_hash(image: Image.Image) -> str:
    """sha256 of an image's RGB pixels (what recall checks an input against)."""
    a = np.asarray(image.convert("RGB"))
    return hashlib.sha256(f"{a.shape}".encode() + a.tobytes()).hexdigest()


def provenance_base(backbone: Backbone, request: GenerateRequest, image, mask, controls=()) -> dict:
    """What a generation's provenance holds besides the seed (``backbone`` with its ControlNets)."""
    inputs = {}
    if image is not None:
        inputs["image"] = {"sha256": pixel_hash(image)}
    if mask is not None:
        inputs["mask"] = {"sha256": _mask_hash(mask)}
    control_inputs, nets = control_record(backbone, controls)
    return {"format": FORMAT, "task": "generate", "params": asdict(request), "inputs": {**inputs, **control_inputs},
            "model": backbone.describe(), **({"controlnets": nets} if nets else {}),
            "sampler_label": display_name(request.scheduler), "versions": dict(library_versions())}


def control_record(backbone: Backbone, controls: Sequence[ControlInput]) -> tuple[dict, list[dict]]:
    """What provenance says of a run's ControlNets (``with_controls``): each hint and mask by its pixels' sha256,
    each net by name, weights sha256 and settings."""
    from ..models.controlnet import ControlNetAdapter

    inputs = {}
    if controls:
        inputs["control_image"] = [{"sha256": pixel_hash(c.hint)} for c in controls]
        inputs["control_mask"] = [{"sha256": _mask_hash(c.mask)} for c in controls if c.mask is not None]
    return inputs, [a.describe() for a in backbone.adapters if isinstance(a, ControlNetAdapter)]


def _mask_hash(mask: torch.Tensor) -> str:
    return hashlib.sha256(mask.numpy().astype(np.uint8).tobytes()).hexdigest()
