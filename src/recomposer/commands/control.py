"""The ControlNet options, shared by ``generate`` and ``compose``: each repeatable, the k-th of each belonging to the
k-th ``--controlnet``. ``--control-image`` is given once per net; the other per-net options either not at all
(their defaults) or once per net."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InvalidParameter

from ..tasks.controls import BUNDLED

ControlNets = Annotated[Optional[list[str]], typer.Option(
    "--controlnet", help="A diffusers ControlNet folder (or bundled:KIND); repeat for several nets.")]
ControlImages = Annotated[Optional[list[Path]], typer.Option(
    "--control-image", help="The hint picture of the k-th --controlnet (any size of the output's shape).")]
ControlScales = Annotated[Optional[list[float]], typer.Option(
    "--control-scale", help="The k-th net's scale, 0 to 100 (default 1; 1.5 for a bundled net).")]
ControlStarts = Annotated[Optional[list[float]], typer.Option(
    "--control-start", help="Share of the steps before the k-th net starts (default 0).")]
ControlEnds = Annotated[Optional[list[float]], typer.Option(
    "--control-end", help="Share of the steps after which the k-th net stops (default 1).")]
ControlMasks = Annotated[Optional[list[Path]], typer.Option(
    "--control-mask", help="Where the k-th net controls (white), as big as the output.")]
ControlModes = Annotated[Optional[list[str]], typer.Option(
    "--control-mode", help="The k-th net's mode: balanced, prompt or control (default balanced; control for a "
                           "bundled net).")]
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

    scales, starts, ends = (per_net(f, x, d) for f, x, d in (("control-scale", scales, None),
                                                              ("control-start", starts, 0.0),
                                                              ("control-end", ends, 1.0)))
    modes = per_net("control-mode", modes, "guess" if guess else None)  # None: the net's own (CONTROL_DEFAULTS)
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
