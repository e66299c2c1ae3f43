"""One rule for every input that gives conditions (``--KIND-from PATH``, and the images of variations, interpolate,
recolour, colourise, style): PATH is

    an image                 decomposed into the kinds asked for, after fitting (conditions/fitting.py)
    a world layer PNG        the condition it holds (conditions/layers.py), when it is of a kind asked for
    a folder                 for each kind: its saved KIND.json (``recomposer decompose`` writes them), or a
                             world sample's KIND.png layer (``recomposer world sample`` writes them)
    a KIND.json              that saved condition, when KIND is the one kind asked for

``read_source`` returns a PIL image (to decompose) or the ConditionSet read; everything is checked before a
model loads, and a path that holds none of the kinds asked for is one error naming the option.
"""

from pathlib import Path

from PIL import Image

from ..errors import InvalidParameter
from .base import ConditionSet


def read_source(path: Path, kinds: tuple[str, ...], field: str) -> "Image.Image | ConditionSet":
    from ..io.images import open_image
    from .files import load_condition
    from .layers import layer_kind, read_layer

    path = Path(path)
    wanted = " or ".join(kinds)
    if path.is_dir():
        found = []
        for kind in kinds:
            if (path / f"{kind}.json").is_file():
                found.append(load_condition(path, kind))
            elif layer_kind(path / f"{kind}.png") == kind:
                found.append(read_layer(path / f"{kind}.png", field))
            else:
                held = sorted({p.stem for p in path.glob("*.json")} | {p.stem for p in path.glob("*.png")
                                                                         if layer_kind(p) is not None})
                raise InvalidParameter(field, f"a folder holding {kind}.json (recomposer decompose) or a world "
                                              f"{kind}.png layer", f"{path} holds {', '.join(held) or 'neither'}")
        return ConditionSet(tuple(found))
    if path.suffix.lower() == ".json":
        if kinds != (path.stem,):
            raise InvalidParameter(field, f"a saved {wanted} condition ({kinds[0]}.json), or a folder or image for "
                                          "several kinds", path.name)
        return ConditionSet.of(load_condition(path.parent, path.stem))
    layer = layer_kind(path) if path.is_file() else None
    if layer is not None:
        if kinds != (layer,):
            raise InvalidParameter(field, f"a picture or a world {wanted} layer", f"a world {layer} layer ({path})")
        return ConditionSet.of(read_layer(path, field))
    return open_image(path, field)
