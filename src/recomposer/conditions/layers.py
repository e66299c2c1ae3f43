"""The shapes world's ground-truth layers as PNG files: written by ``recomposer world sample`` and read back as
the conditions they are, never decomposed as if they were photos (a label map decomposed as a picture is a
dark image with no instances in it).

    instances.png   8-bit grey: 0 background, k + 1 on object k (a label map)
    depth.png       16-bit grey: 0 nearest, 65535 farthest (the Depth convention, not a person's bright = near)
    sketch.png      8-bit grey: 255 on a line, 0 elsewhere
    intensity.png   8-bit grey: intensity × 255

Each carries a ``recomposer-about`` chunk ``{"what": "world layer", "layer": KIND}``; that chunk, not the file's
name, says it is a layer.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InvalidParameter
from ..io.files import ABOUT, png_about
from .base import Condition

WHAT = "world layer"
KINDS = ("instances", "depth", "sketch", "intensity")


def layer_picture(kind: str, values: np.ndarray) -> Image.Image:
    """The layer's PNG pixels from the renderer's array (labels, depth in [0, 1], a bool sketch, intensity)."""
    if kind == "instances":
        return Image.fromarray(values.astype(np.uint8), "L")
    if kind == "depth":
        return Image.fromarray(np.rint(np.clip(values, 0, 1) * 65535).astype(np.uint16))
    if kind == "sketch":
        return Image.fromarray(values.astype(np.uint8) * 255, "L")
    if kind == "intensity":
        return Image.fromarray(np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8), "L")
    raise InvalidParameter("layer", "one of " + ", ".join(KINDS), kind)


def save_layer(kind: str, values: np.ndarray, path: str | Path) -> None:
    """Write one layer (inside a folder being written: plain save, the folder is renamed into place whole)."""
    layer_picture(kind, values).save(path, format="PNG", pnginfo=png_about({"what": WHAT, "layer": kind}))


def layer_kind(path: str | Path) -> str | None:
    """The kind a PNG is a world layer of, or None for any other file (a picture, not a PNG, unreadable)."""
    try:
        with Image.open(path, formats=("PNG",)) as im:
            text = getattr(im, "text", {}).get(ABOUT)
    except (OSError, SyntaxError, ValueError):
        return None
    try:
        record = json.loads(text) if text else None
    except (ValueError, RecursionError):
        return None
    if isinstance(record, dict) and record.get("what") == WHAT and record.get("layer") in KINDS:
        return record["layer"]
    return None


def read_layer(path: str | Path, field: str) -> Condition:
    """The condition a world layer PNG holds (``layer_kind`` must have named it)."""
    from ..io.images import decode_image
    from .depth import Depth
    from .instances import Instances
    from .intensity import Intensity
    from .sketch import Sketch

    kind = layer_kind(path)
    if kind is None:
        raise InvalidParameter(field, "a world layer PNG (recomposer world sample writes them)", str(path))
    a = np.asarray(decode_image(path, field))  # the allow-list and size caps of every image; pixels as stored
    if a.ndim != 2:
        raise InvalidParameter(field, f"a one-channel {kind} layer", f"shape {a.shape}")
    if kind == "instances":
        return Instances.from_label_map(a.astype(np.int32))
    if kind == "depth":
        return Depth((a.astype(np.float64) / 65535).astype(np.float32))
    if kind == "sketch":
        return Sketch(a > 127)
    return Intensity((a.astype(np.float64) / 255).astype(np.float32))
