"""Prompt-to-Prompt as a task (attention/p2p.py): a source image and its edit, from one prompt and its edited
version, or from an inversion of a real image (inversion.py); and the cross-attention maps of a prompt.

    prompt_to_prompt(backbone, request)              -> (source, edited)   one run, both rows in each forward
    prompt_to_prompt(backbone, request, inversion)   -> the same, the source row starting from the image's x_T
    invert_picture(backbone, picture, request)       -> that inversion of a picture, fitted to the model's size
    attention_maps(backbone, request)                -> the image and each token's map, per resolution

The edit kind follows from the prompts: the same number of words is a word swap (or a pure re-weighting when
the prompts are equal); an edited prompt that keeps every source word in order and adds some is a
refinement; anything else is refused, naming the rule.
"""

from dataclasses import asdict

import torch
from PIL import Image

from .. import validation as v
from ..attention.p2p import PromptToPrompt, find_words, local_blend, refine_mapper, swap_mapper, word_tokens
from ..attention.processors import installed
from ..attention.store import AttentionStore
from ..conditions import Caption, ConditionSet
from ..denoiser import BackboneDenoiser
from ..errors import InvalidParameter, RecomposerError
from ..guidance import Guided, cfg
from ..io.images import to_pil
from ..models.backbone import Backbone
from ..models.memory import check_fits
from ..provenance import FORMAT, library_versions
from ..schedulers import display_name
from ..requests import InvertRequest, MapsRequest, P2PRequest, edit_kind  # noqa: F401 (re-exported)
from .generate import Generated
from .run import Sampling, run


def prompt_to_prompt(backbone: Backbone, request: P2PRequest, inversion=None, callback=None,
                     cancel=None) -> tuple[Generated, Generated]:
    """The source image and its edit (see the module docstring); with ``inversion`` the source is that image."""
    request.check()
    b = backbone
    if inversion is not None:
        if inversion.info.steps != request.steps or request.scheduler != "ddim":
            raise InvalidParameter("steps", f"{inversion.info.steps} steps of ddim, as the inversion was made",
                                   f"{request.steps} of {request.scheduler}")
        size = (inversion.info.width, inversion.info.height)
    else:
        size = (request.width or b.native_size, request.height or b.native_size)
    for name, side in zip(("width", "height"), size):
        v.multiple_of(name, side, b.vae_factor, 8)
    kind = edit_kind(request.source, request.edited)
    e = request.edit
    tokenizer = b.tokenizer
    for word in (*e.reweight, *e.cross_replace_words):
        find_words(tokenizer, request.edited, [word], "reweight" if word in e.reweight else "cross-replace")
    blend_words = {}
    if e.blend:  # each blend word must be in the source or the edited prompt
        for word in e.blend:
            if not any(w.strip(".,;:!?").lower() == word.lower() for w in (request.source + " " + request.edited).split()):
                raise InvalidParameter("blend", "words of the source or edited prompt", word)
        blend_words = {0: _present(tokenizer, request.source, e.blend), 1: _present(tokenizer, request.edited, e.blend)}

    null = ConditionSet.of(Caption(""))
    if inversion is not None and inversion.info.method == "negative-prompt":  # Miyake et al.: ∅ := the source prompt
        null = ConditionSet.of(Caption(inversion.info.prompt))
    plans = (cfg(ConditionSet.of(Caption(request.source)), request.guidance, null),
             cfg(ConditionSet.of(Caption(request.edited)), request.guidance, null))
    check_fits(b, *size, 2, rows=2)
    denoise = Guided(BackboneDenoiser(b, size))
    inputs = denoise.encode(plans)
    width = inputs.encoded[1][1].context.shape[1]  # the context's token positions
    store = AttentionStore() if e.blend else None
    control = PromptToPrompt(e, {1: _row_edit(tokenizer, request, kind, width)}, store)
    hooks = [local_blend(store, blend_words, e.blend_threshold, e.blend_start)] if e.blend else []
    start = None
    sampling = Sampling(request.scheduler, request.steps, request.seed, 2, allow_flat=request.allow_flat,
                        seeds=(request.seed, request.seed))
    if inversion is not None:
        from ..inversion import inversion_plan_overrides

        start = inversion.latents.repeat(2, 1, 1, 1)
        inversion_plan_overrides(inversion, inputs, range(2), range(inversion.info.first, request.steps))
        if inversion.info.method == "direct":
            from ..inversion import direct_hook

            hooks.append(direct_hook(inversion))
    latent = (size[1] // b.vae_factor, size[0] // b.vae_factor)
    with installed(b.unet, control, latent):
        result = run(denoise, inputs, b, sampling, size, hooks=hooks, start=start, callback=callback, cancel=cancel,
                     start_position=0 if inversion is None else inversion.info.first)
    images = to_pil(result.pixels)
    floats = (result.pixels.float() / 2 + 0.5).clamp(0, 1).cpu()
    params = {**asdict(request), "width": size[0], "height": size[1], "kind": kind, "batch": 2}
    base = {"format": FORMAT, "task": "p2p", "params": params, "model": b.describe(),
            "sampler_label": display_name(request.scheduler), "versions": dict(library_versions()),
            "seed": request.seed, "inputs": {} if inversion is None else
            {"inversion": {"sha256": inversion.info.image_sha256, "method": inversion.info.method}}}
    return tuple(Generated(im, floats[k], request.seed, {**base, "batch_index": k, "prompt": p})
                 for k, (im, p) in enumerate(zip(images, (request.source, request.edited))))


def _present(tokenizer, prompt: str, words) -> list[int]:
    """Token positions of those ``words`` that are in ``prompt`` (a blend word may be in only one of the two)."""
    found = []
    for word in words:
        try:
            found += find_words(tokenizer, prompt, [word], "blend")
        except InvalidParameter:
            pass
    return found


def _row_edit(tokenizer, request: P2PRequest, kind: str, width: int) -> dict:
    """The edited row's mapper, alphas, per-token replace shares and re-weighting scales (attention/p2p.py)."""
    e = request.edit
    if kind == "swap":
        mapper, alphas = swap_mapper(tokenizer, request.source, request.edited, width), None
    else:
        mapper, alphas = refine_mapper(tokenizer, request.source, request.edited, width)
    share = torch.full((width,), e.cross_replace)
    words, positions, _ = word_tokens(tokenizer, request.edited)
    for word, s in e.cross_replace_words.items():
        share[find_words(tokenizer, request.edited, [word], "cross-replace")] = s
    scale = torch.ones(width)
    for word, c in e.reweight.items():
        scale[find_words(tokenizer, request.edited, [word], "reweight")] = c
    return {"mapper": mapper, "alphas": alphas, "share": share, "scale": scale}


# ---------------------------------------------------------------- attention maps

def attention_maps(backbone: Backbone, request: MapsRequest) -> tuple[Generated, dict, list[str]]:
    """The image, {(h, w): (words, h, w)} each word's cross-attention map averaged over the layers of that
    resolution and over the steps, and the words."""
    request.check()
    b = backbone
    size = (b.native_size, b.native_size)
    denoise = Guided(BackboneDenoiser(b, size))
    inputs = denoise.encode(cfg(ConditionSet.of(Caption(request.prompt)), request.guidance), 1)
    store = AttentionStore()
    with installed(b.unet, store, (size[1] // b.vae_factor, size[0] // b.vae_factor)):
        result = run(denoise, inputs, b, Sampling(request.scheduler, request.steps, request.seed, 1, allow_flat=True),
                     size)
    words, positions, _ = word_tokens(b.tokenizer, request.prompt)
    maps = {grid: torch.stack([m[p].mean(0) for p in positions]) for grid, m in store.maps(0).items()}
    if not maps:
        raise RecomposerError("model", "has no cross-attention layers to read maps from")
    image = to_pil(result.pixels)[0]
    floats = (result.pixels.float() / 2 + 0.5).clamp(0, 1).cpu()
    record = {"format": FORMAT, "task": "attention", "params": asdict(request), "model": b.describe(),
              "sampler_label": display_name(request.scheduler), "versions": dict(library_versions()),
              "seed": request.seed, "batch_index": 0, "inputs": {}}
    return Generated(image, floats[0], request.seed, record), maps, words


def map_picture(m: torch.Tensor, size: int) -> Image.Image:
    """A (h, w) map normalised to its maximum, as a grey picture of ``size`` pixels (nearest: each cell shows)."""
    m = m.float()
    m = m / m.max().clamp(min=1e-12)
    return Image.fromarray((m.clamp(0, 1) * 255).round().byte().numpy(), "L").resize((size, size),
                                                                                      Image.Resampling.NEAREST)


def invert_picture(backbone: Backbone, picture: Image.Image, request: InvertRequest, cancel=None):
    """An inversion (inversion.py) of ``picture``, fitted to the backbone's native square first (as the edits are
    made at the inversion's size)."""
    from ..conditions.fitting import fit_image
    from ..inversion import invert
    from ..io.images import to_tensor

    request.check()
    fitted = fit_image(picture, (backbone.native_size, backbone.native_size))
    return invert(backbone, to_tensor(fitted), request.prompt, request.method, request.steps, request.guidance,
                  request.inner, cancel=cancel)
