"""decompose(image) -> ConditionSet: Composer's eight representations (plus blobs), by one set of backends.

What each representation comes from (METHODS.md §1):
- caption: the user's text, else a local captioning model, else absent (never invented);
- image_embedding: the bundled shapes-world encoder, or a local CLIP vision model;
- palette: the 180-bin smoothed CIELab histogram; sketch: Canny on Lab + thinning;
- instances: the classical segmenter (or any Segmenter); depth: a local depth model (or the bundled one);
- intensity: luminance (or weights drawn from the predefined set, given an rng);
- masked_image: only when a mask is given; blobs: one ellipse per instance.
``kinds=None`` asks for everything available and reports what was skipped and why; naming a kind
whose backend is missing is an error that says how to provide it.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..conditions import Caption, Condition, ConditionSet, Palette
from ..conditions.sketch import Sketch
from ..errors import InvalidParameter, RecomposerError
from ..progress import stage
from .blobs import blobs_from_instances
from .captioner import Captioner
from .depth import DepthEstimator, bundled_depth_estimator, no_depth_backend
from .embedding import ImageEncoder
from .instances import ClassicalSegmenter, Segmenter
from .intensity import intensity
from .masking import masked_image
from .sketch import sketch

KINDS = ("caption", "image_embedding", "palette", "sketch", "instances", "depth", "intensity", "masked_image",
         "blobs")


@dataclass(frozen=True)
class Backends:
    """Which model makes which representation; None where there is none."""

    captioner: Captioner | None = None
    encoder: ImageEncoder | None = field(default_factory=lambda: _bundled_encoder())
    depth: DepthEstimator | None = field(default_factory=bundled_depth_estimator)
    segmenter: Segmenter = field(default_factory=ClassicalSegmenter)
    sketcher: Callable[[np.ndarray], np.ndarray] = sketch


def _bundled_encoder() -> ImageEncoder | None:
    """The bundled encoder, loaded once per process (None if this install lacks its weights)."""
    global _BUNDLED
    if _BUNDLED is False:
        from ..models.bundled import has_part

        _BUNDLED = None
        if has_part("image_encoder"):
            from .embedding import bundled_image_encoder

            _BUNDLED = bundled_image_encoder()
    return _BUNDLED


_BUNDLED: ImageEncoder | None | bool = False


@dataclass(frozen=True)
class Decomposition:
    conditions: ConditionSet
    skipped: dict[str, str]  # kind -> why it is absent


def decompose(image: Image.Image, kinds: tuple[str, ...] | None = None, *, caption: str | None = None,
              mask: np.ndarray | None = None, backends: Backends | None = None,
              rng: np.random.Generator | None = None) -> Decomposition:
    """All (or the named) representations of an RGB image. ``mask`` (H, W) bool: the region to generate."""
    if not isinstance(image, Image.Image) or image.mode != "RGB":
        raise InvalidParameter("image", "an RGB PIL image (io.images.open_image makes one)",
                               getattr(image, "mode", type(image).__name__))
    backends = Backends() if backends is None else backends
    wanted = KINDS if kinds is None else tuple(kinds)
    for kind in wanted:
        if kind not in KINDS:
            raise InvalidParameter("kinds", "names from " + ", ".join(KINDS), kind)
    rgb = np.asarray(image)
    made: dict[str, Condition] = {}
    skipped: dict[str, str] = {}

    def absent(kind: str, why: RecomposerError) -> None:
        if kinds is not None:  # asked for by name: say how to provide it
            raise why
        skipped[kind] = why.message

    def make(kind: str) -> None:
        if kind == "caption":
            if caption is not None:
                made[kind] = Caption(caption)
            elif backends.captioner is not None:
                made[kind] = backends.captioner(image)
            else:
                absent(kind, RecomposerError("caption", "no caption text and no captioner (--caption TEXT or "
                                                        "--caption-model DIR)"))
        elif kind == "image_embedding":
            if backends.encoder is not None:
                made[kind] = backends.encoder(image)
            else:
                absent(kind, RecomposerError("image_embedding", "no image encoder: pass --image-encoder DIR (a "
                                                                "local CLIP vision model)"))
        elif kind == "palette":
            made[kind] = Palette.from_image(rgb)
        elif kind == "sketch":
            made[kind] = Sketch(backends.sketcher(rgb))
        elif kind in ("instances", "blobs"):
            if "instances" not in made:
                made["instances"] = backends.segmenter(rgb)
            if kind == "blobs":
                made[kind] = blobs_from_instances(made["instances"])
        elif kind == "depth":
            if backends.depth is not None:
                made[kind] = backends.depth(image)
            else:
                absent(kind, no_depth_backend())
        elif kind == "intensity":
            made[kind] = intensity(rgb, rng=rng)
        elif kind == "masked_image":
            if mask is not None:
                made[kind] = masked_image(image, mask)
            else:
                absent(kind, RecomposerError("mask", "no mask: pass --mask FILE, --box or --ellipse"))

    with stage("decomposing", total=len(wanted)) as advance:
        for done, kind in enumerate(wanted, 1):
            make(kind)
            advance(done, kind)
    order = [k for k in KINDS if k in made and (k in wanted)]
    return Decomposition(ConditionSet(tuple(made[k] for k in order)), skipped)

