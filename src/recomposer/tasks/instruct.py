"""InstructPix2Pix (Brooks et al. 2023): edit an image by an instruction, on any model whose UNet hears a source image
(models/instruct.py's ``InstructChannels``: the image's unscaled VAE latents as extra input channels).

Guidance is the paper's eq. 3 over three condition sets, one plan with signed terms (guidance.dual), all three
rows in one batched forward per step:

    ε̂ = ε(∅, ∅) + s_I·[ε(c_I, ∅) − ε(∅, ∅)] + s_T·[ε(c_I, c_T) − ε(c_I, ∅)]

c_I the source image, c_T the instruction, ∅ the empty caption and the zero image. An s_I below 1 is taken as the
formula says (it pushes away from the source image); diffusers' pipeline turns all guidance off there instead.
Sampling starts from noise at the source image's size (the reference's; no img2img strength).
"""

from dataclasses import asdict

from PIL import Image

from ..conditions import Caption, ConditionSet, SourceImage
from ..conditions.fitting import fit_image
from ..denoiser import BackboneDenoiser
from ..errors import InvalidParameter, ModelError
from ..guidance import dual, guided
from ..io.images import to_pil, to_tensor
from ..models.backbone import Backbone
from ..models.instruct import InstructChannels
from ..models.memory import check_fits
from ..provenance import FORMAT, library_versions
from ..requests import InstructRequest
from ..schedulers import display_name
from .generate import Generated, pixel_hash
from .run import Sampling, run


def instruct(backbone: Backbone, image: Image.Image, request: InstructRequest, callback=None,
             cancel=None, learned=None) -> list[Generated]:
    """``request.batch`` edits of ``image`` by the instruction, at its size cut down to multiples of the VAE's factor.
    ``learned``: a Visii instruction (tasks/visii.py ``Learned``, its file's sha256 in ``request.learned``) in the
    instruction's place, followed by ``request.instruction``'s words when there are any."""
    request.check()
    if (learned is None) != (not request.learned) or (learned and learned.info.get("sha256") != request.learned):
        raise InvalidParameter("learned", "the instruction file the request names", request.learned)
    if backbone.adapter(InstructChannels) is None:
        raise ModelError("model", "is not an instruction model: its UNet does not hear a source image (an "
                                  "InstructPix2Pix model's model_index.json names "
                                  "StableDiffusionInstructPix2PixPipeline)")
    f = backbone.vae_factor
    size = (image.width // f * f, image.height // f * f)  # the largest multiple of the VAE's factor (as diffusers)
    if min(size) < 8:
        from ..errors import BadImage

        raise BadImage("image", f"is {image.width}x{image.height}; both sides must be at least {max(8, f)}")
    image = fit_image(image, size)  # the one resize mode (conditions/fitting.py): here a crop of under f pixels
    source = SourceImage(to_tensor(image.convert("RGB")))
    image_only = ConditionSet.of(source)
    both = ConditionSet.of(source, Caption(request.instruction) if learned is None else
                           learned.caption(request.instruction.strip()))
    plan = dual(image_only, both, request.image_guidance, request.guidance, rescale=request.guidance_rescale)
    check_fits(backbone, *size, request.batch, rows=3)  # before any compute (R10)
    denoise, inputs = guided(BackboneDenoiser(backbone, size), plan, request.batch)
    sampling = Sampling(request.scheduler, request.steps, request.seed, request.batch, None, request.allow_flat)
    result = run(denoise, inputs, backbone, sampling, size, callback=callback, cancel=cancel)
    floats = (result.pixels.float() / 2 + 0.5).clamp(0, 1).cpu()
    base = {"format": FORMAT, "task": "instruct", "params": {**asdict(request), "width": size[0], "height": size[1]},
            "inputs": {"image": {"sha256": pixel_hash(image)},
                       **({"learned": {"sha256": request.learned}} if learned is not None else {})},
            "model": backbone.describe(),
            "sampler_label": display_name(request.scheduler), "versions": dict(library_versions())}
    return [Generated(im, floats[k], request.seed + k, {**base, "seed": request.seed + k, "batch_index": k})
            for k, im in enumerate(to_pil(result.pixels))]
