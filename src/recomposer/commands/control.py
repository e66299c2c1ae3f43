"""The ControlNet options, shared by ``generate`` and ``compose``: each repeatable, the k-th of each belonging to the
k-th ``--controlnet``. ``--control-image`` is given once per net; the other per-net options either not at all
(their defaults) or once per net."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InvalidParameter, ModelError

BUNDLED = "bundled:"

ControlNets = Annotated[Optional[list[str]], typer.Option(
    "--controlnet", help="A diffusers ControlNet folder (or bundled:KIND); repeat for several nets.")]
ControlImages = Annotated[Optional[list[Path]], typer.Option(
    "--control-image", help="The hint picture of the k-th --controlnet (any size of the output's shape).")]
ControlScales = Annotated[Optional[list[float]], typer.Option(
    "--control-scale", help="The k-th net's scale, 0 to 100 (default 1).")]
ControlStarts = Annotated[Optional[list[float]], typer.Option(
    "--control-start", help="Share of the steps before the k-th net starts (default 0).")]
ControlEnds = Annotated[Optional[list[float]], typer.Option(
    "--control-end", help="Share of the steps after which the k-th net stops (default 1).")]
ControlMasks = Annotated[Optional[list[Path]], typer.Option(
    "--control-mask", help="Where the k-th net controls (white), as big as the output.")]
ControlModes = Annotated[Optional[list[str]], typer.Option(
    "--control-mode", help="The k-th net's mode: balanced, prompt or control (default balanced).")]
GuessMode = Annotated[bool, typer.Option(
    "--guess-mode", help="Every net in diffusers' guess mode (on the conditional rows, scales 0.1 to 1 by depth).")]


def control_requests(nets, images, scales, starts, ends, masks, modes, guess: bool) -> tuple:
    """The options as ControlRequests (checked, nets given as absolute paths), before anything loads."""
    from ..requests import ControlRequest, readable

    nets, images = list(nets or []), list(images or [])
    if not nets:
        for flag, given in (("control-image", images), ("control-scale", scales), ("control-start", starts),
                            ("control-end", ends), ("control-mask", masks), ("control-mode", modes)):
            if given:
                raise InvalidParameter(flag, "used with --controlnet", f"{len(given)} without a net")
        if guess:
            raise InvalidParameter("guess-mode", "used with --controlnet", True)
        return ()
    if len(images) != len(nets):
        raise InvalidParameter("control-image", f"once per --controlnet ({len(nets)})", f"{len(images)} given")

    def per_net(flag: str, values, default):
        values = list(values or [])
        if values and len(values) != len(nets):
            raise InvalidParameter(flag, f"once per --controlnet ({len(nets)}) or not at all", f"{len(values)} given")
        return values or [default] * len(nets)

    scales, starts, ends = (per_net(f, x, d) for f, x, d in (("control-scale", scales, 1.0),
                                                              ("control-start", starts, 0.0),
                                                              ("control-end", ends, 1.0)))
    modes = per_net("control-mode", modes, "guess" if guess else "balanced")
    if guess and any(m != "guess" for m in modes):
        raise InvalidParameter("guess-mode", "without --control-mode (guess mode is a mode of its own)", modes)
    if not guess and "guess" in modes:
        raise InvalidParameter("control-mode", "balanced, prompt or control (guess mode: --guess-mode)", "guess")
    masks = list(masks or [])
    if masks and len(masks) != len(nets):
        raise InvalidParameter("control-mask", f"once per --controlnet ({len(nets)}) or not at all",
                               f"{len(masks)} given")
    for net, path in zip(nets, images):  # a bundled net's hint may also be a folder (the --KIND-from rule)
        readable("control-image", path, folder=net.startswith(BUNDLED) and Path(path).is_dir())
    for path in masks:
        readable("control-mask", path)
    requests = []
    for k, net in enumerate(nets):
        if not net.startswith(BUNDLED):
            readable("controlnet", net, folder=True)
            net = str(Path(net).resolve())
        request = ControlRequest(net, scales[k], starts[k], ends[k], modes[k], masked=bool(masks))
        request.check()
        requests.append(request)
    return tuple(requests)


def load_controls(requests, images, masks, size: tuple[int, int], backbone) -> list:
    """The nets, hints and masks of ``requests`` (``control_requests``), for ``tasks.generate.ControlInput``.
    ``bundled:KIND`` is the ControlNet part of the backbone's parts folder (the bundled model's, or --model's)."""
    from ..io.images import open_image, open_mask
    from ..models.bundled import WEIGHTS
    from ..models.controlnet import kind_index, load_bundled_controlnet, load_controlnet
    from ..tasks.generate import ControlInput

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
