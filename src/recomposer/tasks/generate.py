"""Text-to-image, img2img and inpainting: one task over the one loop.

- no image: start from noise (times the scheduler's initial sigma) and run the whole schedule;
- image: img2img: encode, noise to the level ``strength`` of the schedule, run the rest;
- image + mask: inpainting. A 9-channel inpainting UNet hears the masked image as extra input
  channels; a 4-channel UNet is kept on the known region by the loop's blend hook.
The order of random draws per sample follows diffusers' pipelines (VAE posterior sample, then
noise), so with the same seeds the images match theirs.
"""

import hashlib
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image

from .. import validation as v
from ..conditions import Caption, ConditionSet, MaskedImage
from ..denoiser import BackboneDenoiser
from ..errors import BadImage, InvalidParameter
from ..guidance import GUIDANCE_MAX, cfg, guided
from ..io.images import to_pil, to_tensor
from ..models.backbone import Backbone
from ..models.inpainting import InpaintingChannels
from ..models.memory import check_fits
from ..provenance import FORMAT, library_versions
from ..sampling import StepCallback
from ..schedulers import NAMES, display_name
from .run import Sampling, run

MAX_SIDE = 4096
MAX_BATCH = 64
MAX_STEPS = 1000


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    negative: str = ""  # negative prompt: the base of classifier-free guidance
    scheduler: str = "dpmpp_2m"  # one of schedulers.NAMES
    steps: int = 20  # sampling steps over the whole schedule
    guidance: float = 7.5  # classifier-free guidance scale (1 = no guidance, 0 = unconditional)
    seed: int = 0  # sample k of the batch uses seed + k
    batch: int = 1  # images per call
    width: int | None = None  # None: the image's width, else the model's native size
    height: int | None = None
    strength: float | None = None  # with an image: the share of the schedule re-run (None: 0.8, inpainting 1.0)
    allow_flat: bool = False  # keep an image of one flat colour (otherwise an error: R5)

    def check(self) -> None:
        """Validate everything that needs no model (before any loading or compute)."""
        if not isinstance(self.prompt, str):
            raise InvalidParameter("prompt", "a string", self.prompt)
        if not isinstance(self.negative, str):
            raise InvalidParameter("negative", "a string", self.negative)
        v.choice("scheduler", self.scheduler, NAMES)
        v.integer("steps", self.steps, 1, MAX_STEPS)
        v.real("guidance", self.guidance, 0.0, GUIDANCE_MAX)
        v.seed("seed", self.seed)
        v.integer("batch", self.batch, 1, MAX_BATCH)
        if self.seed + self.batch - 1 > 2**63 - 1:
            raise InvalidParameter("seed", f"at most {2**63 - self.batch} for a batch of {self.batch}", self.seed)
        for name in ("width", "height"):
            if getattr(self, name) is not None:
                v.integer(name, getattr(self, name), 8, MAX_SIDE)
        v.boolean("allow_flat", self.allow_flat)
        if self.strength is not None:
            v.real("strength", self.strength, 0.0, 1.0)
            if self.steps * self.strength < 1:
                raise InvalidParameter("strength", f"at least 1/steps = {1 / self.steps:g} so that one step runs",
                                       self.strength)


@dataclass(frozen=True)
class Generated:
    image: Image.Image
    pixels: torch.Tensor  # (3, H, W) float in [0, 1], before 8-bit rounding
    seed: int
    provenance: dict  # JSON-ready; see provenance.py


def generate(backbone: Backbone, request: GenerateRequest, image: Image.Image | None = None,
             mask: torch.Tensor | None = None, callback: StepCallback | None = None,
             cancel=None) -> list[Generated]:
    """Make ``request.batch`` images. ``mask`` (1, 1, H, W) in {0, 1}, 1 = repaint, needs ``image``."""
    request = resolve(backbone, request, image, mask)
    b, size = backbone, (request.width, request.height)

    # Conditions and the guidance plan. A model that hears the masked image has it in both sets (it is not
    # guided); for any other model the loop keeps the outside instead (the blend hook).
    hears_mask = b.adapter(InpaintingChannels) is not None
    masked = MaskedImage(to_tensor(image), mask) if mask is not None and hears_mask else None
    plan = cfg(ConditionSet.of(Caption(request.prompt), masked), request.guidance,
               negative=ConditionSet.of(Caption(request.negative), masked))
    check_fits(b, *size, request.batch, rows=1 + len(plan.terms))  # before any compute (R10)
    denoise, inputs = guided(BackboneDenoiser(b, size), plan, request.batch)
    sampling = Sampling(request.scheduler, request.steps, request.seed, request.batch, request.strength,
                        request.allow_flat)
    result = run(denoise, inputs, b, sampling, size, image=None if image is None else to_tensor(image),
                 inpainting=mask is not None, keep=mask if mask is not None and not hears_mask else None,
                 callback=callback, cancel=cancel)
    images = to_pil(result.pixels)
    base = provenance_base(b, request, image, mask)
    floats = (result.pixels.float() / 2 + 0.5).clamp(0, 1).cpu()
    # params keep the whole batch: a batch equals its singles to ~1e-6, yet one 8-bit level can flip,
    # so recall replays the batch and takes image ``batch_index`` to get the very same pixels.
    return [Generated(im, floats[k], request.seed + k, {**base, "seed": request.seed + k, "batch_index": k})
            for k, im in enumerate(images)]


def resolve(backbone: Backbone, request: GenerateRequest, image: Image.Image | None,
            mask: torch.Tensor | None) -> GenerateRequest:
    """Fill defaults that depend on the model or the image; check what needs them. No compute."""
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


def provenance_base(backbone: Backbone, request: GenerateRequest, image, mask) -> dict:
    inputs = {}
    if image is not None:
        inputs["image"] = {"sha256": pixel_hash(image)}
    if mask is not None:
        inputs["mask"] = {"sha256": hashlib.sha256(mask.numpy().astype(np.uint8).tobytes()).hexdigest()}
    return {"format": FORMAT, "task": "generate", "params": asdict(request), "inputs": inputs,
            "model": backbone.describe(), "sampler_label": display_name(request.scheduler),
            "versions": dict(library_versions())}
