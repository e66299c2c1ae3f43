"""Composer's tasks (Huang et al. 2023, §4): every one is ``compose`` over a chosen condition set.

    compose(model, conds)          any subset of conditions, from any mix of images and files
    variations(model, image)       keep some of an image's conditions, new seeds
    interpolate(model, a, b)       slerp the image embeddings / lerp the palettes of two images
    reconstruct(model, image)      an image again from a subset of its own conditions
    edit_region(model, image, m)   change inside a mask only (masked image + latent blend + paste back)
    colourise, recolour, style_transfer, sketch/depth/instances-to-image, inpainting: condition recipes

Sampling: ε̂ = ε(x, c₂) + w·(ε(x, c₁) − ε(x, c₂)) (Composer's Eq. 2) with c₁ the conditions and c₂ the
``base`` set (default ∅: classifier-free guidance), plus optional per-condition terms
s_k·(ε(x, c₂ ∪ {c_k}) − ε(x, c₂)) inside [start, end] of the schedule; all in one batched forward.
"""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import validation as v
from ..conditions import Caption, ConditionSet, ImageEmbedding, Palette
from ..conditions.fitting import fit_image, fit_mask, fit_set
from ..decompose.decomposer import Backends, decompose
from ..denoiser import BackboneDenoiser
from ..errors import InvalidParameter
from ..guidance import GuidancePlan, Term, guided, guided_terms
from ..io.images import to_pil
from ..models.backbone import Backbone
from ..models.bundled import progress
from ..models.composer import ComposerAdapter, generation_size
from ..models.memory import check_fits
from ..provenance import FORMAT, library_versions
from ..sampling import StepCallback
from ..schedulers import display_name
from ..requests import GLOBAL_KINDS, LOCAL_KINDS, ComposeRequest, Weight  # noqa: F401 (re-exported)
from .generate import ControlInput, Generated, control_record, with_controls
from .run import Sampling, run



@dataclass(eq=False)
class ComposerModel:
    """A backbone with a Composer adapter in its stack, and the image encoder the adapter was trained with."""

    backbone: Backbone
    encoder: object | None = None  # decompose.embedding.ImageEncoder
    figures: dict | None = None  # this very model's benchmark figures (evaluation/report.py ``figures``), if known

    def __post_init__(self) -> None:
        if self.backbone.adapter(ComposerAdapter) is None:
            from ..errors import ModelError

            raise ModelError("adapter", "a Composer adapter in the backbone's stack (Backbone.with_adapters)")

    @classmethod
    def of(cls, backbone: Backbone, adapter: ComposerAdapter, encoder=None, figures: dict | None = None
           ) -> "ComposerModel":
        return cls(backbone.with_adapters(adapter), encoder, figures)

    @property
    def adapter(self) -> ComposerAdapter:
        return self.backbone.adapter(ComposerAdapter)

    @property
    def size(self) -> int:
        return self.backbone.native_size

    def fit(self, image: Image.Image, size: tuple[int, int] | None = None) -> Image.Image:
        """The image fitted to ``size`` (default the model's square) by the one resize mode (conditions/fitting.py)."""
        return fit_image(image, size or (self.size, self.size))

    def decompose(self, source: "Image.Image | ConditionSet", kinds: tuple[str, ...], caption: str | None = None,
                  size: tuple[int, int] | None = None) -> ConditionSet:
        """The named conditions of ``source`` at the generation size (default the model's square): an image is
        fitted, then decomposed; saved conditions (a ``decompose`` folder, a world layer: ``Source``) are taken
        as they are and fitted the same way."""
        size = size or (self.size, self.size)
        if isinstance(source, ConditionSet):
            given = caption is not None and "caption" in kinds  # a caption given as text wins over a saved one
            missing = [k for k in kinds if k not in source and not (k == "caption" and given)]
            if missing:
                raise InvalidParameter("kinds", "kinds the saved conditions hold: " + ", ".join(source), missing[0])
            chosen = ConditionSet(tuple(source[k] for k in kinds if not (k == "caption" and given)))
            return _with_caption(fit_set(chosen, size), caption if given else None)
        backends = Backends(encoder=self.encoder)
        return decompose(self.fit(source, size), tuple(kinds), caption=caption,
                         backends=backends).conditions


def plan(conds: ConditionSet, request: ComposeRequest) -> GuidancePlan:
    """c₁ = conds, c₂ = its ``base`` kinds; per-condition terms on top of c₂. A masked image is in every set:
    it says what to keep, and is not guided."""
    for kind in request.base + tuple(w.kind for w in request.weights):
        if kind not in conds:
            raise InvalidParameter("base" if kind in request.base else "weight",
                                   "kinds among the given conditions: " + ", ".join(conds), kind)
    kept = tuple(k for k in ("masked_image",) if k in conds)
    base = ConditionSet.of(*(conds[k] for k in (*request.base, *kept) if k in conds))
    terms = list(guided_terms(conds, request.guidance, request.guidance_start, request.guidance_end))
    terms += [Term(base.with_(conds[w.kind]), w.scale, w.start, w.end) for w in request.weights]
    return GuidancePlan(base=base, terms=tuple(terms), rescale=request.guidance_rescale)


def compose(model: ComposerModel, conds: ConditionSet, request: ComposeRequest = ComposeRequest(),
            size: tuple[int, int] | None = None, callback: StepCallback | None = None, cancel=None,
            task: str = "compose", controls: Sequence[ControlInput] = ()) -> list[Generated]:
    """Images from any subset of conditions. With a masked image, pixels outside its mask are kept
    exactly: the latents outside are blended back at every step and the source pasted back after decoding.
    ``controls``: one ControlNet per ``request.controls`` entry, in the same loop as the conditions."""
    request.check()
    if not isinstance(conds, ConditionSet):
        raise InvalidParameter("conditions", "a ConditionSet", type(conds).__name__)
    say_weak(model, conds)
    width, height = size or generation_size(conds) or (model.size, model.size)
    b = with_controls(model.backbone, request, controls, (width, height))
    guidance = plan(conds, request)
    check_fits(b, width, height, request.batch, rows=len(guidance.sets()))  # before any compute (R10)
    denoise, inputs = guided(BackboneDenoiser(b, (width, height)), guidance, request.batch)
    masked = conds.get("masked_image")
    sampling = Sampling(request.scheduler, request.steps, request.seed, request.batch, None, request.allow_flat)
    keep = {} if masked is None else {"image": masked.image, "inpainting": True, "keep": masked.mask, "cells": "any",
                                      "posterior": "mode"}  # keep the outside: the source latents blended back
    result = run(denoise, inputs, b, sampling, (width, height), callback=callback, cancel=cancel, **keep)
    pixels = result.pixels.float()
    if masked is not None:  # paste the source back outside the mask: those pixels stay exactly as they were
        m = masked.mask.to(pixels)
        pixels = m * pixels + (1 - m) * masked.image.to(pixels)
    images = to_pil(pixels)
    floats = (pixels / 2 + 0.5).clamp(0, 1).cpu()
    caption = conds["caption"].text if "caption" in conds else ""
    params = {**asdict(request), "width": width, "height": height, "prompt": caption}
    control_inputs, nets = control_record(b, controls)
    base = {"format": FORMAT, "task": task, "params": params, "conditions": conds.describe(),
            **({"inputs": control_inputs, "controlnets": nets} if nets else {}),
            "sampler_label": display_name(request.scheduler), "model": b.describe(),
            "versions": dict(library_versions())}
    return [Generated(im, floats[k], request.seed + k, {**base, "seed": request.seed + k, "batch_index": k})
            for k, im in enumerate(images)]


WEAK = 0.2  # progress from the floor to the ceiling below which a condition is "barely heard"
def weak_conditions(model: ComposerModel, kinds) -> dict[str, str]:
    """The given kinds this model barely follows by its own benchmark (``progress`` < ``WEAK``), each with a
    sentence saying so; nothing when the model's figures are not known."""
    found = {}
    for kind in kinds:
        c = (model.figures or {}).get("conditions", {}).get(kind)
        share = progress(c) if isinstance(c, dict) else None
        if share is not None and share < WEAK:
            found[kind] = (f"{kind}: this model barely follows this condition yet (benchmark {c['figure']} "
                           f"{c['single']:.2f}, against {c['floor']:.2f} with no condition and {c['ceiling']:.2f} "
                           "for the real renders; docs/benchmarks.md)")
    return found


def say_weak(model: ComposerModel, conds: ConditionSet) -> None:
    """One notice per barely-heard condition (the CLI prints each once)."""
    import warnings

    from ..errors import Notice

    for sentence in weak_conditions(model, conds).values():
        warnings.warn(Notice(sentence), stacklevel=3)


# ---------------------------------------------------------------- the tasks

def variations(model: ComposerModel, image: Image.Image, keep: tuple[str, ...] = ("image_embedding", "palette"),
               request: ComposeRequest = ComposeRequest(batch=4), caption: str | None = None) -> list[Generated]:
    """New images sharing ``keep`` (default: semantics/style and colours) with ``image``; one per seed."""
    conds = model.decompose(image, _kinds("keep", keep), caption)
    return compose(model, conds, request, task="variations")


def reconstruct(model: ComposerModel, image: Image.Image, kinds: tuple[str, ...],
                request: ComposeRequest = ComposeRequest(), caption: str | None = None) -> list[Generated]:
    """``image`` generated again from the named conditions of its own decomposition."""
    return compose(model, model.decompose(image, _kinds("kinds", kinds), caption), request, task="reconstruct")


def interpolate(model: ComposerModel, a: Image.Image, b: Image.Image, frames: int = 8,
                kinds: tuple[str, ...] = ("image_embedding", "palette"), request: ComposeRequest = ComposeRequest(),
                fixed: ConditionSet = ConditionSet(), callback: StepCallback | None = None,
                cancel=None) -> list[Generated]:
    """``frames`` images from a's to b's ``kinds`` (image embedding: slerp; palette: linear), all from the same
    noise (seed), with ``fixed`` conditions shared by every frame."""
    v.integer("frames", frames, 2, 256)
    kinds = _kinds("kinds", kinds)
    for kind in kinds:
        if kind not in ("image_embedding", "palette"):
            raise InvalidParameter("kinds", "image_embedding and/or palette", kind)
    ca, cb = model.decompose(a, kinds), model.decompose(b, kinds)
    results = []
    for i in range(frames):
        s = i / (frames - 1)
        mixed = [_mix(ca[k], cb[k], s) for k in kinds]
        results += compose(model, fixed.with_(*mixed), replace(request, batch=1), task="interpolate",
                           callback=callback, cancel=cancel)
    return results


def _mix(a, b, s: float):
    if isinstance(a, Palette):
        mixed = (1 - s) * np.asarray(a.histogram, np.float64) + s * np.asarray(b.histogram, np.float64)
        return Palette(mixed.astype(np.float32), a.sigma)
    return ImageEmbedding(slerp(a.vector, b.vector, s), a.encoder)


def slerp(a: np.ndarray, b: np.ndarray, s: float) -> np.ndarray:
    """Spherical interpolation (Shoemake 1985) of the directions, the norm interpolated linearly; exact at the ends."""
    if s in (0.0, 1.0):
        return np.array(a if s == 0.0 else b, np.float32)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    ua, ub = a / max(na, 1e-12), b / max(nb, 1e-12)
    omega = math.acos(float(np.clip(ua @ ub, -1.0, 1.0)))
    if omega < 1e-6:
        direction = (1 - s) * ua + s * ub
    else:
        direction = (math.sin((1 - s) * omega) * ua + math.sin(s * omega) * ub) / math.sin(omega)
    return (direction * ((1 - s) * na + s * nb)).astype(np.float32)


def edit_region(model: ComposerModel, image: Image.Image, mask: np.ndarray, conds: ConditionSet = ConditionSet(),
                request: ComposeRequest = ComposeRequest(), controls: Sequence[ControlInput] = (),
                callback: StepCallback | None = None, cancel=None) -> list[Generated]:
    """Regenerate the pixels where ``mask`` (H, W) is true under ``conds`` (and ``controls``); every other pixel
    is kept. The image must already be of a size the model generates (``ComposerModel.fit``)."""
    from ..decompose.masking import masked_image

    masked = masked_image(image.convert("RGB"), mask)
    results = compose(model, conds.with_(masked), request, task="edit", controls=controls, callback=callback,
                      cancel=cancel)
    for r in results:
        r.provenance["psnr_outside_mask"] = psnr_outside(r.image, image, mask)
    return results


def recompose(model: ComposerModel, sources: dict, caption: str | None, request: ComposeRequest,
              size: tuple[int, int], picture: Image.Image | None = None, region: np.ndarray | None = None,
              controls: Sequence[ControlInput] = (), callback: StepCallback | None = None,
              cancel=None) -> list[Generated]:
    """``compose`` from sources by kind (each an image to decompose or saved conditions, conditions/sources.py)
    and a caption, at ``size``; with ``picture`` and ``region`` (H, W) bool, only the region is regenerated
    (``edit_region``), both fitted to ``size`` first. The command line's compose and the compose job run this."""
    conds = [Caption(caption)] if caption is not None else []
    for kind, source in sources.items():
        conds += list(model.decompose(source, (kind,), size=size).values())
    conds = ConditionSet(tuple(conds))
    if picture is not None:
        return edit_region(model, fit_image(picture, size), fit_mask(region, size), conds, request, controls=controls,
                           callback=callback, cancel=cancel)
    return compose(model, conds, request, size=size, controls=controls, callback=callback, cancel=cancel)


def psnr_outside(result: Image.Image, source: Image.Image, mask: np.ndarray) -> float:
    """PSNR (dB, 8-bit) over the pixels outside the mask; inf when they are identical."""
    outside = ~np.asarray(mask, bool)
    a = np.asarray(result.convert("RGB"), np.float64)[outside]
    b = np.asarray(source.convert("RGB"), np.float64)[outside]
    mse = float(((a - b) ** 2).mean()) if a.size else 0.0
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def colourise(model: ComposerModel, grey: Image.Image, palette_from: Image.Image | None = None,
              caption: str | None = None, request: ComposeRequest = ComposeRequest()) -> list[Generated]:
    """Colours for a greyscale image: its intensity, plus a palette (from another image) and/or a caption."""
    conds = model.decompose(grey, ("intensity",))
    if palette_from is not None:
        conds = conds.with_(*model.decompose(palette_from, ("palette",)).values())
    return compose(model, _with_caption(conds, caption), request, task="colourise")


def recolour(model: ComposerModel, image: Image.Image, palette_from: Image.Image,
             keep: tuple[str, ...] = ("sketch", "instances"), request: ComposeRequest = ComposeRequest(),
             caption: str | None = None) -> list[Generated]:
    """The image's layout (``keep``) in the colours of ``palette_from``."""
    conds = model.decompose(image, _kinds("keep", keep), caption)
    return compose(model, conds.with_(*model.decompose(palette_from, ("palette",)).values()), request,
                   task="recolour")


def style_transfer(model: ComposerModel, content: Image.Image, style: Image.Image,
                   structure: tuple[str, ...] = ("sketch",), request: ComposeRequest = ComposeRequest(),
                   caption: str | None = None) -> list[Generated]:
    """``content``'s structure with ``style``'s semantics-and-style embedding (and its palette)."""
    conds = model.decompose(content, _kinds("structure", structure), caption)
    return compose(model, conds.with_(*model.decompose(style, ("image_embedding", "palette")).values()), request,
                   task="style")


def from_local(model: ComposerModel, kind: str, image: Image.Image, caption: str | None = None,
               request: ComposeRequest = ComposeRequest()) -> list[Generated]:
    """Sketch-, depth-, instance-layout- or intensity-to-image: one local condition of ``image`` (+ a caption)."""
    v.choice("kind", kind, ("sketch", "depth", "instances", "intensity"))
    return compose(model, _with_caption(model.decompose(image, (kind,)), caption), request,
                   task=f"{kind}-to-image")


def inpaint(model: ComposerModel, image: Image.Image, mask: np.ndarray, caption: str | None = None,
            request: ComposeRequest = ComposeRequest()) -> list[Generated]:
    """Fill the masked region from the rest of the image (and a caption)."""
    return edit_region(model, image, mask, _with_caption(ConditionSet(), caption), request)


def _with_caption(conds: ConditionSet, caption: str | None) -> ConditionSet:
    return conds if caption is None else conds.with_(Caption(caption))


def _kinds(name: str, kinds) -> tuple[str, ...]:
    kinds = tuple(kinds)
    if not kinds:
        raise InvalidParameter(name, "at least one condition kind", kinds)
    for kind in kinds:
        v.choice(name, kind, GLOBAL_KINDS + LOCAL_KINDS[:-1])
    return kinds


def load_composer(model: str | None = None, adapter: str | None = None, image_encoder: str | None = None,
                  device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32,
                  config: str | None = None) -> ComposerModel:
    """The bundled model with its adapter and image encoder (or a folder of parts trained like it), or ``model``
    (a diffusers directory, or a single file with ``config``) with an adapter file from ``recomposer train
    composer`` (and a CLIP ``image_encoder``)."""
    from ..decompose.embedding import ClipImageEncoder
    from ..errors import ModelError
    from ..models import bundled
    from ..models.loading import is_parts_dir, load_model

    if model is None or is_parts_dir(Path(model)):  # the bundled model, or parts trained like it
        folder = bundled.WEIGHTS if model is None else Path(model)
        backbone = bundled.load_bundled_backbone(device, dtype, folder)
        composer_adapter = bundled.load_bundled_composer(folder) if adapter is None else ComposerAdapter.load(adapter)
        encoder = bundled.load_bundled_image_encoder(device, folder=folder) if image_encoder is None else \
            ClipImageEncoder(image_encoder, device)
        figures = bundled.read_figures(folder, backbone, composer_adapter)
    else:
        if adapter is None:
            raise ModelError("adapter", "a Composer adapter file (`recomposer train composer` writes "
                                        "composer.safetensors) is needed with --model")
        backbone = load_model(model, device, dtype, config)
        composer_adapter = ComposerAdapter.load(adapter)
        encoder = ClipImageEncoder(image_encoder, device) if image_encoder is not None else None
        figures = None
    return ComposerModel.of(backbone, composer_adapter, encoder, figures)
