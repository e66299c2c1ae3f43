"""How each task runs from a job (tasks/registry.py): its files read by name (images through the one image reader,
compose's conditions by the ``--KIND-from`` rule, a Visii instruction, an inversion), then the task called with the
job's cancel check and step callback. Each runner is ``(model, request, paths, cancel, callback)``, its model what
the registry's entry says it runs on, and returns Generated images or the ``Files`` of a job that makes files."""

import hashlib
from dataclasses import dataclass

from ..errors import InvalidParameter

MAX_CONTROLS = 8  # ControlNets one job may name (each with its hint input, control_image_K, and mask, control_mask_K)
CONTROL_INPUTS = tuple(f"control_{what}_{k}" for k in range(1, MAX_CONTROLS + 1) for what in ("image", "mask"))
SOURCE_KINDS = ("image_embedding", "palette", "sketch", "instances", "depth", "intensity")  # compose's inputs by kind


@dataclass(frozen=True)
class Files:
    """What a job that makes files rather than images returns (decompose, invert, visii): names -> text, a PIL image,
    or a function that writes into the folder (io/files.write_folder); ``summary`` goes into the job's record."""

    files: dict
    summary: dict


def _controls(backbone, request, paths, size):
    from .controls import load_controls

    if len(request.controls) > MAX_CONTROLS:
        raise InvalidParameter("controls", f"at most {MAX_CONTROLS} ControlNets", len(request.controls))
    hints = []
    for k in range(1, len(request.controls) + 1):
        if f"control_image_{k}" not in paths:
            raise InvalidParameter(f"inputs.control_image_{k}", f"the hint picture of ControlNet {k}", "missing")
        hints.append(paths[f"control_image_{k}"])
    masked = [f"control_mask_{k}" in paths for k in range(1, len(request.controls) + 1)]
    masks = [paths[f"control_mask_{k}"] for k in range(1, len(request.controls) + 1)] if all(masked) else []
    if any(masked) and not all(masked):
        raise InvalidParameter("inputs.control_mask_K", "a mask for every ControlNet, or for none", masked)
    return load_controls(request.controls, hints, masks, size, backbone)


def generate_job(backbone, request, paths, cancel=None, callback=None):
    from ..io.images import open_image, open_mask
    from .generate import generate, resolve

    image = open_image(paths["image"], "image") if "image" in paths else None
    if "mask" in paths and image is None:
        raise InvalidParameter("inputs.mask", "given together with inputs.image", "only the mask")
    mask = open_mask(paths["mask"], image.size, "mask") if "mask" in paths else None
    sized = resolve(backbone, request, image, mask)
    controls = _controls(backbone, request, paths, (sized.width, sized.height)) if request.controls else ()
    return generate(backbone, request, image=image, mask=mask, cancel=cancel, callback=callback, controls=controls)


def compose_job(model, request, paths, cancel=None, callback=None):
    from .. import validation as v
    from ..conditions import ConditionSet, Depth
    from ..conditions.sketch import Sketch
    from ..conditions.sources import read_source
    from ..decompose.depth import bundled_depth_estimator
    from ..io.images import open_image, open_mask
    from .composer import recompose

    b = model.backbone
    size = (v.multiple_of("width", request.width or model.size, b.vae_factor),
            v.multiple_of("height", request.height or model.size, b.vae_factor))
    if ("image" in paths) != ("mask" in paths):
        raise InvalidParameter("inputs.mask", "given together with inputs.image", "only one of them")
    for kind in request.drawn:
        if kind not in paths:
            raise InvalidParameter("drawn", "kinds among the inputs", kind)
    drawn = {"sketch": lambda p: Sketch.from_image(p), "depth": lambda p: Depth.from_image(p, "inputs.depth")}
    sources = {}
    for kind in SOURCE_KINDS:
        if kind in paths:
            source = ConditionSet.of(drawn[kind](paths[kind])) if kind in request.drawn else \
                read_source(paths[kind], (kind,), f"inputs.{kind}")
            if kind == "depth" and not isinstance(source, ConditionSet) and bundled_depth_estimator() is None:
                raise InvalidParameter("inputs.depth", "a saved depth (a decompose job's depth.json) or a depth map "
                                                       "with drawn: [\"depth\"]: there is no depth model to estimate "
                                                       "one from an image", str(paths[kind]))
            sources[kind] = source
    if request.caption is None and not sources and "image" not in paths and not request.controls:
        raise InvalidParameter("inputs", "at least one condition: a caption, an input by kind, image + mask, or a "
                                         "ControlNet", "none")
    nets = _controls(b, request, paths, size) if request.controls else ()
    picture = region = None
    if "image" in paths:
        picture = open_image(paths["image"], "inputs.image")
        region = open_mask(paths["mask"], picture.size, "inputs.mask")[0, 0].numpy() > 0.5
    return recompose(model, sources, request.caption, request.sampling(), size, picture, region, controls=nets,
                     callback=callback, cancel=cancel)


def interpolate_job(model, request, paths, cancel=None, callback=None):
    from ..conditions import Caption, ConditionSet
    from ..conditions.sources import read_source
    from .composer import interpolate

    a, b = (read_source(paths[name], request.kinds, f"inputs.{name}") for name in ("first", "last"))
    fixed = [Caption(request.caption)] if request.caption is not None else []
    if "sketch" in paths:
        fixed += list(model.decompose(read_source(paths["sketch"], ("sketch",), "inputs.sketch"), ("sketch",)).values())
    return interpolate(model, a, b, request.frames, request.kinds, request.sampling(), ConditionSet(tuple(fixed)),
                       callback=callback, cancel=cancel)


def decompose_job(model, request, paths, cancel=None, callback=None):
    import json

    from ..conditions.files import save_condition
    from ..decompose.decomposer import decompose
    from ..decompose.sheet import decomposition_sheet
    from ..io.images import open_image, open_mask

    picture = open_image(paths["image"], "inputs.image")
    region = open_mask(paths["mask"], picture.size, "inputs.mask")[0, 0].numpy() > 0.5 if "mask" in paths else None
    result = decompose(picture, request.kinds, caption=request.caption, mask=region)
    conds = result.conditions
    summary = {"size": list(picture.size), "kinds": list(conds), "skipped": result.skipped}
    files = {"input.png": picture, "sheet.png": decomposition_sheet(picture, conds),
             "decomposition.json": json.dumps(summary, indent=2),
             **{f"{k}-files": (lambda folder, c=c: save_condition(c, folder)) for k, c in conds.items()}}
    return Files(files, summary)


def instruct_job(backbone, request, paths, cancel=None, callback=None):
    from ..io.images import open_image
    from .instruct import instruct
    from .visii import check_learned, load_learned

    learned = None
    if "learned" in paths:  # a Visii instruction file (a visii job's instruction.safetensors)
        learned = load_learned(paths["learned"])
        check_learned(learned.info, backbone, "inputs.learned")
    return instruct(backbone, open_image(paths["image"], "inputs.image"), request, cancel=cancel, callback=callback,
                    learned=learned)


def visii_job(backbone, request, paths, cancel=None, callback=None):
    import json

    from ..errors import Cancelled
    from ..io.images import open_image
    from .visii import learn_instruction, learned_bytes

    pairs = []
    for k in range(1, MAX_PAIRS + 1):
        suffix = "" if k == 1 else f"_{k}"
        if f"before{suffix}" in paths or f"after{suffix}" in paths:
            if f"before{suffix}" not in paths or f"after{suffix}" not in paths:
                raise InvalidParameter(f"inputs.before{suffix}", "given with its after image", "only one of them")
            before, after = (open_image(paths[f"{w}{suffix}"], f"inputs.{w}{suffix}") for w in ("before", "after"))
            if before.size != after.size:
                raise InvalidParameter(f"inputs.after{suffix}", f"the size of its before image, {before.size}",
                                       after.size)
            pairs.append((before, after))

    def tick(i, loss):
        if cancel is not None and cancel():
            raise Cancelled(f"cancelled at iteration {i + 1} of {request.steps}")
        if callback is not None:
            callback(Tick(i, request.steps))

    learned = learn_instruction(backbone, pairs, request, callback=tick)
    data = learned_bytes(learned)
    sha256 = hashlib.sha256(data).hexdigest()  # what ``instruct``'s ``learned`` field names (load_learned's hash)
    return Files({"instruction.safetensors": lambda folder: (folder / "instruction.safetensors").write_bytes(data),
                  "visii.json": json.dumps({**learned.info, "sha256": sha256}, indent=2, default=str)},
                 {"sha256": sha256, **{k: v for k, v in learned.info.items() if isinstance(v, (str, int, float))}})


def invert_job(backbone, request, paths, cancel=None, callback=None):
    from ..io.images import open_image
    from .p2p import invert_picture

    result = invert_picture(backbone, open_image(paths["image"], "inputs.image"), request, cancel=cancel)
    return Files(result.files(), {"prompt": request.prompt, "method": request.method, "steps": request.steps,
                                  "guidance": request.guidance})


def composite_job(backbone, request, paths, cancel=None, callback=None):
    from ..io.images import open_image
    from .composite import composite

    images = {name: open_image(path, f"inputs.{name}") for name, path in paths.items()}
    return composite(backbone, images["background"], images["mask"], request, images.get("object"),
                     callback=callback, cancel=cancel)


def p2p_job(backbone, request, paths, cancel=None, callback=None):
    from .p2p import prompt_to_prompt

    inversion = None
    if "inversion" in paths:  # an invert job's inversion.json: the source row starts from that image's x_T
        from ..inversion import Inversion

        inversion = Inversion.load(paths["inversion"].parent, backbone)
        if request.source != inversion.info.prompt:
            raise InvalidParameter("source", f"the inversion's prompt, {inversion.info.prompt!r}", request.source)
    return list(prompt_to_prompt(backbone, request, inversion, callback=callback, cancel=cancel))


@dataclass(frozen=True)
class Tick:
    """Progress of a task that is not a sampling loop (Visii's optimisation), as a step callback sees it."""

    index: int
    count: int
    x0 = None

    @property
    def step(self):
        return self


MAX_PAIRS = 4
PAIR_INPUTS = tuple(f"{w}{'' if k == 1 else f'_{k}'}" for k in range(1, MAX_PAIRS + 1) for w in ("before", "after"))
