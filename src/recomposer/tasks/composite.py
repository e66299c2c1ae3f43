"""Cross-domain compositing (Hachnochi et al. 2023): put an object into a scene, or repaint a region from scribbles,
keeping what should stay, on any backbone and with no training. The run is the one loop with masked ILVR as a step
hook (ilvr.py) towards the composite y, and optionally RePaint resampling (sampling.resampling_positions).

    y = background·(1 − M) + object·M        (M the mask, 1 = the region; without an object y is the background,
                                             scribbles painted on it inside the mask)

The run starts from y's VAE posterior noised to the first step of the last ``strength`` of the schedule (img2img's
start; strength 1: from noise, ILVR alone ties the result to y), and follows the caption with classifier-free
guidance. The applications differ by their defaults (requests.COMPOSITE_APPLICATIONS), each also a function of
its own below (``immerse``, ``scribble_edit``, ``augment_backgrounds``):

    scribble    the region guided coarsely for part of the steps (T_in 0.6, N_in 2), the rest kept (T_out 1, N_out 1)
    immersion   the object guided for half the steps at N_in 2 (its structure kept, its look harmonised with the
                scene), the background kept, RePaint resampling from 20% of the steps so the two can meet
    augment     the object kept (T_in 1, N_in 1) and the background left free (T_out 0): one new background per
                sample of a batch

Schedulers: any the loop offers but Heun (its second stage continues from its own copy of x, so the hook's change
would be dropped); with resampling, only those that step from x alone (DDIM, DDPM, Euler, Euler a: a multistep
scheduler's history goes stale when the loop steps back).

Sizes: the background sets the size (cut down to multiples of the VAE's factor, as every task cuts an image); the
object and the mask must have the background's size (they are cut with it); nothing else is resized.
"""

from dataclasses import asdict, replace

import numpy as np
import torch
from PIL import Image

from ..conditions import Caption, ConditionSet
from ..conditions.fitting import fit_image
from ..denoiser import BackboneDenoiser
from ..errors import BadImage
from ..guidance import cfg, guided
from ..ilvr import check_factor, masked_ilvr
from ..io.images import to_pil, to_tensor
from ..models.backbone import Backbone
from ..models.memory import check_fits
from ..provenance import FORMAT, library_versions
from ..requests import CompositeRequest
from ..sampling import resampling_positions
from ..schedulers import display_name
from .generate import Generated, pixel_hash
from .run import Sampling, run


def composite(backbone: Backbone, background: Image.Image, mask: Image.Image, request: CompositeRequest,
              object_image: Image.Image | None = None, callback=None, cancel=None) -> list[Generated]:
    """``request.batch`` composites (module docstring); ``mask`` a picture whose bright pixels mark the region."""
    request = request.filled()
    f = backbone.vae_factor
    for name, image in (("object", object_image), ("mask", mask)):
        if image is not None and image.size != background.size:
            raise BadImage(name, f"is {image.width}x{image.height}; it must have the background's size "
                                 f"({background.width}x{background.height}): the background sets the size")
    size = (background.width // f * f, background.height // f * f)
    if min(size) < max(8, f):
        raise BadImage("background", f"is {background.width}x{background.height}; both sides must be at least "
                                     f"{max(8, f)}")
    latent = (size[1] // f, size[0] // f)
    check_factor("n-in", request.n_in, latent)
    check_factor("n-out", request.n_out, latent)
    background = fit_image(background.convert("RGB"), size)
    region = torch.from_numpy(np.asarray(fit_image(mask, size).convert("L"), np.float32) / 255.0 > 0.5).float()
    region = region[None, None]  # (1, 1, H, W) 1 = the region (empty: the outside's guidance alone)
    reference = to_tensor(background)
    if object_image is not None:
        reference = reference * (1 - region) + to_tensor(fit_image(object_image.convert("RGB"), size)) * region
    b = backbone
    plan = cfg(ConditionSet.of(Caption(request.prompt)), request.guidance, ConditionSet.of(Caption(request.negative)))
    check_fits(b, *size, request.batch, rows=2)
    denoise, inputs = guided(BackboneDenoiser(b, size), plan, request.batch)
    with torch.no_grad():
        y0 = b.encode_image(reference).mode() * b.vae.config.scaling_factor  # (1, C, h, w)
    y0 = y0.repeat(request.batch, 1, 1, 1).to(b.device, b.dtype)
    blur = request.blur if request.blur is not None else f * max(request.n_in, request.n_out) / 2
    # the region at latent size: every cell the region touches (a cell half in it would take half the outside's
    # rule, and a small object is mostly such cells)
    coverage = torch.nn.functional.adaptive_max_pool2d(region, latent).to(b.device, b.dtype)
    generators = [torch.Generator("cpu").manual_seed(request.seed + k + 1_000_003) for k in range(request.batch)]
    hook = masked_ilvr(y0, coverage, request.t_in, request.t_out, request.n_in, request.n_out, request.space,
                       blur / f, generators)
    positions = None
    if request.resample_start is not None:  # (0 resamples: the plain schedule, through the same path)
        first = request.steps - min(int(request.steps * request.strength), request.steps)  # (first-order schedulers:
        start = max(first, round(request.resample_start * request.steps))  # one position per step, as strength_start)
        positions = [p for p in resampling_positions(request.steps, start, request.jump, request.resamples)
                     if p >= first]
    sampling = Sampling(request.scheduler, request.steps, request.seed, request.batch, request.strength,
                        request.allow_flat)
    result = run(denoise, inputs, b, sampling, size, image=reference, hooks=[hook], positions=positions,
                 callback=callback, cancel=cancel)
    floats = (result.pixels.float() / 2 + 0.5).clamp(0, 1).cpu()
    inputs_record = {"background": {"sha256": pixel_hash(background)},
                     "mask": {"sha256": pixel_hash(fit_image(mask.convert("RGB"), size))}}
    if object_image is not None:
        inputs_record["object"] = {"sha256": pixel_hash(fit_image(object_image.convert("RGB"), size))}
    base = {"format": FORMAT, "task": "composite", "params": {**asdict(request), "width": size[0], "height": size[1]},
            "inputs": inputs_record, "model": b.describe(), "evaluations": result.evaluations,
            "sampler_label": display_name(request.scheduler), "versions": dict(library_versions()),
            "prompt": request.prompt}
    return [Generated(im, floats[k], request.seed + k, {**base, "seed": request.seed + k, "batch_index": k})
            for k, im in enumerate(to_pil(result.pixels))]


# ---------------------------------------------------------------- the applications by name

def immerse(backbone: Backbone, background: Image.Image, object_image: Image.Image, mask: Image.Image,
            request: CompositeRequest = CompositeRequest(), **run) -> list[Generated]:
    """Object immersion: ``object_image``'s region pasted into ``background`` and harmonised with it."""
    return composite(backbone, background, mask, replace(request, application="immersion"), object_image, **run)


def scribble_edit(backbone: Backbone, scribbled: Image.Image, mask: Image.Image,
                  request: CompositeRequest = CompositeRequest(application="scribble"), **run) -> list[Generated]:
    """Scribble-guided local editing: the paint inside ``mask`` on ``scribbled`` guides that region coarsely."""
    return composite(backbone, scribbled, mask, replace(request, application="scribble"), None, **run)


def augment_backgrounds(backbone: Backbone, background: Image.Image, object_image: Image.Image, mask: Image.Image,
                        request: CompositeRequest = CompositeRequest(application="augment"), **run) -> list[Generated]:
    """Background augmentation: the object kept, a new background per sample of ``request.batch``."""
    return composite(backbone, background, mask, replace(request, application="augment"), object_image, **run)
