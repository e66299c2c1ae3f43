"""The ControlNets of a task: each net loaded once (a diffusers folder, or ``bundled:KIND``, a net of the backbone's
parts folder), its hint read and fitted, its optional mask, for ``tasks.generate.ControlInput``. The command line
(commands/control.py) and the job runner (tasks/registry.py) both come here."""

from pathlib import Path

from ..errors import ModelError
from ..requests import BUNDLED


def load_controls(requests, images, masks, size: tuple[int, int], backbone) -> list:
    """The nets, hints and masks of ``requests`` (``control_requests``), for ``tasks.generate.ControlInput``.
    ``bundled:KIND`` is the ControlNet part of the backbone's parts folder (the bundled model's, or --model's)."""
    from ..io.images import open_image, open_mask
    from ..models.bundled import WEIGHTS
    from ..models.controlnet import kind_index, load_bundled_controlnet, load_controlnet
    from .generate import ControlInput

    loaded: dict[str, tuple] = {}  # a net given twice (two hints, or two bundled kinds) loads once: (net, kinds)
    controls = []
    for k, request in enumerate(requests):
        bundled = request.net.startswith(BUNDLED)
        source = BUNDLED if bundled else request.net
        if source not in loaded:
            if bundled:
                if backbone.source.kind != "bundled":
                    raise ModelError("controlnet", f"{request.net} is a net of the bundled model; this model is "
                                                   f"{backbone.source.kind}: give a diffusers ControlNet folder")
                folder = Path(backbone.source.path) if backbone.source.path else WEIGHTS
                loaded[source] = load_bundled_controlnet(folder, backbone.device, backbone.dtype)
            else:
                loaded[source] = (load_controlnet(request.net, backbone.device, backbone.dtype), None)
        net, kinds = loaded[source]
        kind = kind_index(request.net[len(BUNDLED):], kinds) if bundled else None
        hint = open_image(images[k], "control-image") if kind is None else \
            world_hint(images[k], request.net[len(BUNDLED):], size)
        mask = open_mask(masks[k], size, "control-mask") if masks else None
        controls.append(ControlInput(net, hint, mask, kind))
    return controls


def world_hint(path: Path, kind: str, size: tuple[int, int]):
    """The hint picture of a bundled net of world kind ``kind``: ``path`` follows the ``--KIND-from`` rule
    (conditions/sources.py): a saved condition (a KIND.json, a decompose folder, a world sample's layer or folder) is
    drawn as the net reads it (``hint_picture``, after fitting to ``size``); any other picture is taken as a hint
    already drawn that way (a sketch in black lines on white, depth near-bright, instances in colours on black)."""
    from PIL import Image

    from ..conditions.fitting import fit_condition
    from ..conditions.sources import read_source
    from ..models.controlnet import hint_picture

    source = read_source(path, (kind,), "control-image")
    return source if isinstance(source, Image.Image) else hint_picture(fit_condition(source[kind], size))
