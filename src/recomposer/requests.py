"""Every task's request: what a user asks for, as a plain value built the same way from CLI options or JSON.

Nothing here imports torch or a model: a request is checked (``check``) before anything heavy loads, so a
bad value is refused in well under a second, naming the field and what is allowed. Provenance stores the
request (``dataclasses.asdict``), and ``recall`` rebuilds it (``from_json``) to make the image again.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

from . import validation as v
from .errors import InvalidParameter
from .schedulers import NAMES
from .validation import MAX_SIDE

GLOBAL_KINDS = ("caption", "image_embedding", "palette")  # Composer's kinds (models/composer.py)
LOCAL_KINDS = ("sketch", "instances", "depth", "intensity", "masked_image")
MAX_BATCH = 64
MAX_STEPS = 1000
GUIDANCE_MAX = 100.0


def from_json(cls, data: dict, source: str = "request"):
    """A request of class ``cls`` from a JSON object: unknown keys are refused by name, missing ones take their
    defaults (nested requests too); the result is checked."""
    if not isinstance(data, dict):
        raise InvalidParameter(source, f"a JSON object of {cls.__name__} fields", type(data).__name__)
    known = {f.name: f for f in fields(cls)}
    if unknown := sorted(set(data) - set(known)):
        raise InvalidParameter(source, f"fields of {cls.__name__} ({', '.join(known)})", unknown)
    values = {}
    for name, value in data.items():
        nested = next((NESTED[c.__name__, name] for c in cls.__mro__ if (c.__name__, name) in NESTED), None)
        many = name in MANY
        if nested is not None and many:  # a list of nested requests (JSON objects), nothing else
            if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
                raise InvalidParameter(f"{source}.{name}", f"a list of JSON objects of {nested.__name__} fields", value)
            value = tuple(from_json(nested, item, f"{source}.{name}") for item in value)
        elif nested is not None:  # one nested request
            if not isinstance(value, dict):
                raise InvalidParameter(f"{source}.{name}", f"a JSON object of {nested.__name__} fields", value)
            value = from_json(nested, value, f"{source}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    try:
        request = cls(**values)
    except TypeError as e:
        raise InvalidParameter(source, f"a complete {cls.__name__}", str(e)) from None
    return request.check() or request


CONTROL_MODES = ("balanced", "prompt", "control", "guess")  # models/controlnet.py defines each by its formula
CONTROL_SCALE_MAX = 100.0
BUNDLED = "bundled:"  # bundled:KIND, a net of the bundled model's parts folder (tasks/controls.py)
# A net's scale and mode when none is given: diffusers' for any net; for a bundled net, the settings it obeys best
# at (docs/recipes.md, the sweep over modes and scales): its hint on the conditional rows, so guidance amplifies it.
CONTROL_DEFAULTS = {"net": (1.0, "balanced"), "bundled": (1.5, "control")}


def check_control(scale, start, end, mode, field: str = "control") -> None:
    """One ControlNet's settings: scale in [0, 100], 0 <= start < end <= 1 (shares of the run's steps), a mode."""
    v.real(f"{field}-scale", scale, 0.0, CONTROL_SCALE_MAX)
    v.real(f"{field}-start", start, 0.0, 1.0)
    v.real(f"{field}-end", end, 0.0, 1.0)
    if start >= end:
        raise InvalidParameter(f"{field}-start", f"below {field}-end ({end:g})", start)
    v.choice(f"{field}-mode", mode, CONTROL_MODES)


def check_interval(start, end) -> None:
    """The guidance interval: 0 <= start < end <= 1, shares of the run's steps (guidance.guided_terms)."""
    v.real("guidance-start", start, 0.0, 1.0)
    v.real("guidance-end", end, 0.0, 1.0)
    if start >= end:
        raise InvalidParameter("guidance-start", f"below guidance-end ({end:g})", start)


@dataclass(frozen=True)
class ControlRequest:
    """One ControlNet of a generation: which net (a diffusers ControlNet folder, or bundled:KIND) and its settings;
    its hint picture and optional mask are inputs beside the request, the k-th to the k-th net."""

    net: str
    scale: float | None = None  # None: CONTROL_DEFAULTS for this net (provenance records the value it became)
    start: float = 0.0  # share of the run's steps before the net starts
    end: float = 1.0  # share of the run's steps after which it stops
    mode: str | None = None  # CONTROL_MODES; None: CONTROL_DEFAULTS for this net
    masked: bool = False  # a mask goes with its hint

    def __post_init__(self) -> None:
        scale, mode = CONTROL_DEFAULTS["bundled" if str(self.net).startswith(BUNDLED) else "net"]
        object.__setattr__(self, "scale", scale if self.scale is None else self.scale)
        object.__setattr__(self, "mode", mode if self.mode is None else self.mode)

    def check(self) -> None:
        if not isinstance(self.net, str) or not self.net:
            raise InvalidParameter("controlnet", "a ControlNet folder or bundled:KIND", self.net)
        check_control(self.scale, self.start, self.end, self.mode)
        v.boolean("control-mask", self.masked)


def check_controls(controls) -> None:
    if not isinstance(controls, tuple) or not all(isinstance(c, ControlRequest) for c in controls):
        raise InvalidParameter("controls", "a list of ControlNet settings", controls)
    for control in controls:
        control.check()


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    negative: str = ""  # negative prompt: the base of classifier-free guidance
    scheduler: str = "dpmpp_2m"  # one of schedulers.NAMES
    steps: int = 20  # sampling steps over the whole schedule
    guidance: float = 7.5  # classifier-free guidance scale (1 = no guidance, 0 = unconditional)
    guidance_rescale: float = 0.0  # φ in [0, 1]: pull the guided prediction's spread to the prompt's (guidance.py)
    guidance_start: float = 0.0  # share of the run's steps before guidance starts (the prompt alone before)
    guidance_end: float = 1.0  # share of the run's steps after which it stops (the prompt alone after)
    seed: int = 0  # sample k of the batch uses seed + k
    batch: int = 1  # images per call
    width: int | None = None  # None: the image's width, else the model's native size
    height: int | None = None
    strength: float | None = None  # with an image: the share of the schedule re-run (None: 0.8, inpainting 1.0)
    allow_flat: bool = False  # keep an image of one flat colour (otherwise an error: R5)
    controls: tuple[ControlRequest, ...] = ()  # ControlNets, each with its hint (models/controlnet.py)

    def check(self) -> None:
        """Validate everything that needs no model (before any loading or compute)."""
        check_controls(self.controls)
        if not isinstance(self.prompt, str):
            raise InvalidParameter("prompt", "a string", self.prompt)
        if not isinstance(self.negative, str):
            raise InvalidParameter("negative", "a string", self.negative)
        v.choice("scheduler", self.scheduler, NAMES)
        v.integer("steps", self.steps, 1, MAX_STEPS)
        v.real("guidance", self.guidance, 0.0, GUIDANCE_MAX)
        v.real("guidance-rescale", self.guidance_rescale, 0.0, 1.0)
        check_interval(self.guidance_start, self.guidance_end)
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
class Weight:
    """A per-condition guidance term: push towards ``kind`` with ``scale`` inside [start, end] of the schedule."""

    kind: str
    scale: float
    start: float = 0.0
    end: float = 1.0

    def check(self) -> "Weight":
        v.choice("weight", self.kind, GLOBAL_KINDS + LOCAL_KINDS)
        v.real("weight", self.scale, -GUIDANCE_MAX, GUIDANCE_MAX)
        v.fraction_window("weight", self.start, self.end)
        return self


@dataclass(frozen=True)
class ComposeRequest:
    scheduler: str = "dpmpp_2m"  # one of schedulers.NAMES
    steps: int = 20
    guidance: float = 3.0  # w in Composer's Eq. 2 (1: no guidance)
    guidance_rescale: float = 0.0  # φ in [0, 1]: pull the guided prediction's spread to c₁'s (guidance.py)
    guidance_start: float = 0.0  # share of the run's steps before guidance starts (c₁ alone before)
    guidance_end: float = 1.0  # share of the run's steps after which it stops (c₁ alone after)
    seed: int = 0  # sample k uses seed + k
    batch: int = 1
    base: tuple[str, ...] = ()  # kinds of the conditions that form c₂ (default ∅)
    weights: tuple[Weight, ...] = ()  # extra per-condition terms
    allow_flat: bool = False  # keep an image of one flat colour (otherwise an error: R5)
    controls: tuple[ControlRequest, ...] = ()  # ControlNets beside the conditions, each with its hint

    def check(self) -> "ComposeRequest":
        if not isinstance(self.base, tuple):
            raise InvalidParameter("base", "a list of kinds", self.base)
        for kind in self.base:
            v.choice("base", kind, GLOBAL_KINDS + LOCAL_KINDS)
        v.choice("scheduler", self.scheduler, NAMES)
        v.integer("steps", self.steps, 1, MAX_STEPS)
        v.real("guidance", self.guidance, 0.0, GUIDANCE_MAX)
        v.real("guidance-rescale", self.guidance_rescale, 0.0, 1.0)
        check_interval(self.guidance_start, self.guidance_end)
        v.seed("seed", self.seed)
        v.integer("batch", self.batch, 1, MAX_BATCH)
        v.boolean("allow_flat", self.allow_flat)
        for weight in self.weights:
            v.real("guidance", weight.scale, -GUIDANCE_MAX, GUIDANCE_MAX)
            v.fraction_window("guidance", weight.start, weight.end)
        check_controls(self.controls)
        return self

    def sampling(self) -> "ComposeRequest":
        """The ComposeRequest part of a request built on it (a job's): what a result's provenance records and
        ``recall`` rebuilds."""
        return ComposeRequest(**{f.name: getattr(self, f.name) for f in fields(ComposeRequest)})


@dataclass(frozen=True)
class Edit:
    """The settings of a Prompt-to-Prompt edit (typical: cross 0.8 / self 0.4 for swaps, 0.5-0.8 / 0.2-0.4 for
    refinements)."""

    cross_replace: float = 0.8  # share of the steps (from the noisiest) using the source's cross-attention maps
    cross_replace_words: Mapping[str, float] = field(default_factory=dict)  # word of P* -> its own share
    self_replace: float = 0.4  # share of the steps using the source's self-attention maps
    self_max_queries: int = 16 * 16  # self-attention injected only in layers with at most this many queries
    reweight: Mapping[str, float] = field(default_factory=dict)  # word of P* -> scale c of its maps (-2 < c < 2)
    blend: tuple[str, ...] = ()  # local blend words (of P or P*); empty: no blend
    blend_threshold: float = 0.3
    blend_start: float = 0.0  # share of the steps after which the blend applies

    def check(self) -> "Edit":
        for name in ("cross_replace_words", "reweight"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(isinstance(word, str) for word in value):
                raise InvalidParameter(name.replace("_", "-"), "an object of word: number", value)
        if not isinstance(self.blend, tuple) or not all(isinstance(word, str) for word in self.blend):
            raise InvalidParameter("blend", "a list of words", self.blend)
        v.real("cross-replace", self.cross_replace, 0.0, 1.0)
        v.real("self-replace", self.self_replace, 0.0, 1.0)
        v.integer("self-max-queries", self.self_max_queries, 1)
        v.real("blend-threshold", self.blend_threshold, 0.0, 1.0)
        v.real("blend-start", self.blend_start, 0.0, 1.0)
        for word, share in self.cross_replace_words.items():
            v.real(f"cross-replace.{word}", share, 0.0, 1.0)
        for word, c in self.reweight.items():
            v.real(f"reweight.{word}", c, -2.0, 2.0)
        return self


@dataclass(frozen=True)
class P2PRequest:
    source: str  # the source prompt P (with an inversion: the prompt the image was inverted with)
    edited: str  # the edited prompt P*
    scheduler: str = "ddim"  # the reference's sampler; an inversion is always followed with DDIM
    steps: int = 50
    guidance: float = 7.5
    seed: int = 0  # both rows start from this seed's noise
    edit: Edit = field(default_factory=Edit)
    width: int | None = None  # None: the backbone's native size (or the inversion's)
    height: int | None = None
    allow_flat: bool = False

    def check(self) -> "P2PRequest":
        for name in ("source", "edited"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise InvalidParameter(name, "a prompt of at least one word", getattr(self, name))
        v.choice("scheduler", self.scheduler, NAMES)
        v.integer("steps", self.steps, 1, MAX_STEPS)
        v.real("guidance", self.guidance, 0.0, GUIDANCE_MAX)
        v.seed("seed", self.seed)
        v.boolean("allow_flat", self.allow_flat)
        self.edit.check()
        return self


@dataclass(frozen=True)
class InstructRequest:
    """An InstructPix2Pix edit (Brooks et al. 2023): the defaults are the reference's."""

    instruction: str  # what to do to the image, e.g. "make the circle blue"
    guidance: float = 7.5  # s_T: how far towards the instruction
    image_guidance: float = 1.5  # s_I: how close to the source image (below 1 pushes away from it: the formula)
    guidance_rescale: float = 0.0  # φ in [0, 1]: pull the guided prediction's spread to (c_I, c_T)'s (guidance.py)
    scheduler: str = "euler_a"
    steps: int = 100
    seed: int = 0  # sample k uses seed + k
    batch: int = 1
    allow_flat: bool = False
    learned: str = ""  # the sha256 of a Visii instruction file (tasks/visii.py): then ``instruction`` is extra words

    def check(self) -> "InstructRequest":
        if not isinstance(self.learned, str):
            raise InvalidParameter("learned", "the sha256 of an instruction file", self.learned)
        if not isinstance(self.instruction, str) or not (self.instruction.strip() or self.learned):
            raise InvalidParameter("instruction", "an instruction of at least one word", self.instruction)
        v.real("guidance", self.guidance, -GUIDANCE_MAX, GUIDANCE_MAX)
        v.real("image-guidance", self.image_guidance, -GUIDANCE_MAX, GUIDANCE_MAX)
        v.real("guidance-rescale", self.guidance_rescale, 0.0, 1.0)
        v.choice("scheduler", self.scheduler, NAMES)
        v.integer("steps", self.steps, 1, MAX_STEPS)
        v.seed("seed", self.seed)
        v.integer("batch", self.batch, 1, MAX_BATCH)
        v.boolean("allow_flat", self.allow_flat)
        return self


# Compositing's hook changes x between steps: Heun's second stage would drop the change (it continues from its own
# copy), and stepping back (RePaint) leaves a multistep scheduler's history stale; these step from x alone.
RESAMPLING_SCHEDULERS = ("ddim", "ddpm", "euler", "euler_a")
# Cross-domain compositing's applications (Hachnochi et al. 2023, §5): the defaults each fills in.
COMPOSITE_APPLICATIONS = {
    "scribble": {"t_in": 0.6, "t_out": 1.0, "n_in": 2, "n_out": 1},  # local editing guided by painted scribbles
    "immersion": {"t_in": 0.5, "t_out": 1.0, "n_in": 2, "n_out": 1, "resample_start": 0.2},  # harmonise an object
    "augment": {"t_in": 1.0, "t_out": 0.0, "n_in": 1, "n_out": 1},  # keep the object, new backgrounds (a batch)
}


@dataclass(frozen=True)
class CompositeRequest:
    """Cross-domain compositing (ilvr.py): masked ILVR towards the composite, optionally with RePaint resampling.
    Fields left None take the application's defaults (COMPOSITE_APPLICATIONS; ``filled``)."""

    prompt: str = ""
    negative: str = ""
    application: str = "immersion"
    t_in: float | None = None  # share of the steps (from the noisiest) guided inside the mask
    t_out: float | None = None  # ... and outside it
    n_in: int | None = None  # low-pass factor inside the mask, in latent cells (1: every detail)
    n_out: int | None = None
    space: str = "x0"  # "x0": filter x̂₀ and re-noise (the aliasing fix); "xt": the update on x_{t−1}
    blur: float | None = None  # mask smoothing in pixels (None: VAE factor · max(n_in, n_out) / 2)
    resample_start: float | None = None  # share of the steps after which RePaint resampling runs (None: the
    jump: int = 10  # RePaint's jump length, in steps                   application's: immersion 0.2, others never)
    resamples: int = 10  # times each jump is resampled (0: no resampling, whatever the application)
    strength: float = 1.0  # share of the schedule run from the noised composite (1: from noise)
    scheduler: str = "ddim"
    steps: int = 50
    guidance: float = 5.0
    seed: int = 0
    batch: int = 1
    allow_flat: bool = False

    def filled(self) -> "CompositeRequest":
        """The request with the application's defaults where a field is None (checked)."""
        v.choice("application", self.application, tuple(COMPOSITE_APPLICATIONS))
        defaults = COMPOSITE_APPLICATIONS[self.application]
        given = {k: getattr(self, k) for k in ("t_in", "t_out", "n_in", "n_out", "resample_start")}
        return replace(self, **{k: defaults.get(k) if value is None else value for k, value in given.items()}).check()

    def check(self) -> "CompositeRequest":
        for name in ("prompt", "negative"):
            if not isinstance(getattr(self, name), str):
                raise InvalidParameter(name, "a string", getattr(self, name))
        v.choice("application", self.application, tuple(COMPOSITE_APPLICATIONS))
        for name in ("t_in", "t_out", "resample_start", "strength"):
            value = getattr(self, name)
            if value is not None:
                v.real(name.replace("_", "-"), value, 0.0, 1.0)
        for name in ("n_in", "n_out"):
            if getattr(self, name) is not None:
                v.integer(name.replace("_", "-"), getattr(self, name), 1, 4096)
        v.choice("space", self.space, ("xt", "x0"))
        if self.blur is not None:
            v.real("blur", self.blur, 0.0, 1000.0)
        v.integer("jump", self.jump, 1, 10_000)
        v.integer("resamples", self.resamples, 0, 1000)
        v.choice("scheduler", self.scheduler, tuple(n for n in NAMES if n != "heun"))  # (heun: below)
        if self.resample_start is not None and self.resamples and self.scheduler not in RESAMPLING_SCHEDULERS:
            raise InvalidParameter("scheduler", "with RePaint resampling (--resample-start; immersion's default, "
                                                "--resamples 0 turns it off) one of " + ", ".join(RESAMPLING_SCHEDULERS),
                                   self.scheduler)
        v.integer("steps", self.steps, 1, MAX_STEPS)
        if self.steps * self.strength < 1:
            raise InvalidParameter("strength", f"at least 1/steps = {1 / self.steps:g} so that one step runs",
                                   self.strength)
        v.real("guidance", self.guidance, 0.0, GUIDANCE_MAX)
        v.seed("seed", self.seed)
        v.integer("batch", self.batch, 1, MAX_BATCH)
        v.boolean("allow_flat", self.allow_flat)
        return self


@dataclass(frozen=True)
class MapsRequest:
    prompt: str
    scheduler: str = "ddim"
    steps: int = 20
    guidance: float = 7.5
    seed: int = 0

    def check(self) -> "MapsRequest":
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidParameter("prompt", "a prompt of at least one word", self.prompt)
        v.choice("scheduler", self.scheduler, NAMES)
        v.integer("steps", self.steps, 1, MAX_STEPS)
        v.real("guidance", self.guidance, 0.0, GUIDANCE_MAX)
        v.seed("seed", self.seed)
        return self


def edit_kind(source: str, edited: str) -> str:
    """"swap" (same word count), "refine" (edited keeps the source's words in order and adds some), or an error."""
    a, b = source.split(), edited.split()
    if len(a) == len(b):
        return "swap"
    it = iter(b)
    if len(b) > len(a) and all(word in it for word in a):
        return "refine"
    raise InvalidParameter("edited", f"a prompt of the source's {len(a)} words (a word swap) or one that keeps "
                                     "every source word in order and adds words (a refinement)", edited)


def optional_text(field: str, value) -> None:
    if value is not None and not isinstance(value, str):
        raise InvalidParameter(field, "a string or null", value)


DRAWN_KINDS = ("sketch", "depth")  # kinds a user may give as a picture of the condition itself


@dataclass(frozen=True)
class ComposeJobRequest(ComposeRequest):
    """``compose`` as one job (the HTTP API, the web app, ``recomposer batch``): the sampling of ComposeRequest and
    what the command line gives as options. Each input named by a kind gives that kind (an image is decomposed, a
    saved KIND.json is taken); ``image`` + ``mask`` regenerate a region and keep the rest."""

    caption: str | None = None  # the caption condition
    drawn: tuple[str, ...] = ()  # kinds whose input is a picture of the condition itself (lines on paper, a depth
    #                              map, bright = near), not an image to decompose
    width: int | None = None  # None: the model's native size
    height: int | None = None

    def check(self) -> "ComposeJobRequest":
        super().check()
        optional_text("caption", self.caption)
        if not isinstance(self.drawn, tuple) or any(k not in DRAWN_KINDS for k in self.drawn):
            raise InvalidParameter("drawn", "kinds from " + ", ".join(DRAWN_KINDS), self.drawn)
        for name in ("width", "height"):
            if getattr(self, name) is not None:
                v.integer(name, getattr(self, name), 8, MAX_SIDE)
        return self



@dataclass(frozen=True)
class InterpolateRequest(ComposeRequest):
    """``interpolate`` as one job: frames between the ``first`` and ``last`` inputs' kinds (image embedding: slerp;
    palette: linear), all from one seed, with an optional caption and a ``sketch`` input shared by every frame."""

    frames: int = 8  # both ends included
    kinds: tuple[str, ...] = ("image_embedding", "palette")
    caption: str | None = None

    def check(self) -> "InterpolateRequest":
        super().check()
        v.integer("frames", self.frames, 2, 256)
        if not isinstance(self.kinds, tuple) or not self.kinds:
            raise InvalidParameter("kinds", "a list of image_embedding and/or palette", self.kinds)
        for kind in self.kinds:
            v.choice("kinds", kind, ("image_embedding", "palette"))
        optional_text("caption", self.caption)
        return self



@dataclass(frozen=True)
class DecomposeRequest:
    """``decompose`` as one job: every representation of the ``image`` input (or the named ``kinds``)."""

    kinds: tuple[str, ...] | None = None  # None: every kind the installed models can make
    caption: str | None = None  # the caption condition (there is no offline captioner)

    def check(self) -> "DecomposeRequest":
        if self.kinds is not None:
            if not isinstance(self.kinds, tuple) or not self.kinds:
                raise InvalidParameter("kinds", "a non-empty list of kinds, or null for all", self.kinds)
            for kind in self.kinds:
                v.choice("kinds", kind, GLOBAL_KINDS + LOCAL_KINDS + ("blobs",))
        optional_text("caption", self.caption)
        return self


INVERSION_METHODS = ("ddim", "null-text", "negative-prompt", "direct")  # inversion.py explains each


@dataclass(frozen=True)
class InvertRequest:
    """A real image inverted (inversion.py) so that a Prompt-to-Prompt edit can start from it."""

    prompt: str  # what the image shows (the edit's source prompt)
    method: str = "null-text"  # INVERSION_METHODS
    steps: int = 50  # DDIM steps (its edits use the same)
    guidance: float = 7.5  # the guidance its edits will use (null-text optimises for it)
    inner: int = 10  # null-text: at most this many Adam steps per sampling step

    def check(self) -> "InvertRequest":
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidParameter("prompt", "a prompt of at least one word", self.prompt)
        v.choice("method", self.method, INVERSION_METHODS)
        v.integer("steps", self.steps, 1, MAX_STEPS)
        v.real("guidance", self.guidance, 0.0, GUIDANCE_MAX)
        v.integer("inner", self.inner, 0, 1000)
        return self


MANY = ("weights", "controls")  # the nested fields that are lists
NESTED = {  # (request class, field) -> the nested request; a subclass's fields are found through its bases
    ("ComposeRequest", "weights"): Weight, ("ComposeRequest", "controls"): ControlRequest,
    ("P2PRequest", "edit"): Edit, ("GenerateRequest", "controls"): ControlRequest}


def readable(field: str, path, folder: bool = False):
    """An input path that exists and can be read (a folder where ``folder``), checked without opening it as an
    image or model: one line naming the option otherwise."""
    import os
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise InvalidParameter(field, f"an existing {'folder' if folder else 'file'}", str(path))
    if folder != p.is_dir():
        raise InvalidParameter(field, "a folder" if folder else "a file, not a folder", str(path))
    if not os.access(p, os.R_OK):
        raise InvalidParameter(field, "a path this user can read", str(path))
    return p


DTYPE_NAMES = ("fp32", "fp16", "bf16")  # what --dtype takes (models/device.py maps them to torch dtypes)


def check_device(value: str, field: str = "device") -> str:
    """A device as the CLI takes it, checked by its form before torch loads: auto, cpu, cuda, cuda:N or mps
    (whether this machine has it is checked when the model loads)."""
    import re

    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise InvalidParameter(field, "auto, cpu, cuda, cuda:N or mps", value)
    return value


def check_dtype(value: str, field: str = "dtype") -> str:
    """A dtype name by its form before torch loads (whether the device supports it: models/device.py)."""
    return v.choice(field, value, DTYPE_NAMES)


PARTS_FILES = ("vae.json", "unet.json")  # what makes a folder one of bundled-format parts


def is_parts_dir(path) -> bool:
    """A folder of bundled-format parts (``recomposer train vae/base/composer --parts``), not a diffusers one."""
    return not (path / "model_index.json").is_file() and all((path / name).is_file() for name in PARTS_FILES)


def model_kind(path, field: str = "model") -> str:
    """What ``--model PATH`` is, by its files, before anything loads: "parts" (bundled-format parts: vae.json,
    unet.json, …), "diffusers" (model_index.json and its component folders) or "single-file" (a .safetensors
    file); anything else is refused, saying which files each kind would have."""
    from pathlib import Path

    p = Path(path)
    if p.is_file():
        if p.suffix.lower() not in (".safetensors", ".ckpt"):
            raise InvalidParameter(field, "a model folder or a single-file .safetensors checkpoint", str(path))
        return "single-file"
    if not p.is_dir():
        raise InvalidParameter(field, "an existing model folder or checkpoint file", str(path))
    if (p / "model_index.json").is_file():
        return "diffusers"
    if is_parts_dir(p):
        return "parts"
    parts = [name for name in PARTS_FILES if not (p / name).is_file()]
    raise InvalidParameter(field, "a diffusers model folder (model_index.json, unet/, vae/, text_encoder/, "
                                  "tokenizer/, scheduler/) or a folder of bundled parts (vae.json, unet.json, ...)",
                           f"{path}: it has neither model_index.json nor {', '.join(parts)}")
