"""Provenance: every PNG says exactly how to make it again.

Two PNG text chunks: ``recomposer`` (JSON: task, every parameter, the model's source and weight
hash, library versions, seed) and ``parameters`` (the AUTOMATIC1111 line format other tools read).
PNGs are written all-or-nothing: temp file in the same folder, fsync, rename.
"""

import functools
import json
import platform
from importlib.metadata import version
from pathlib import Path

from PIL import Image, PngImagePlugin

from .errors import BadImage
from .io.files import atomic_write

CHUNK = "recomposer"
FORMAT = 1


@functools.cache
def library_versions() -> dict:
    names = ("recomposer", "torch", "diffusers", "transformers", "numpy", "pillow")
    return {n: version(n) for n in names} | {"python": platform.python_version()}


def a1111_parameters(p: dict) -> str:
    """The AUTOMATIC1111 'parameters' text: prompt, negative, then 'Key: value' pairs."""
    params = p["params"]
    fields = [("Steps", params["steps"]), ("Sampler", p["sampler_label"]), ("CFG scale", params["guidance"]),
              ("Seed", p["seed"]), ("Size", f"{params['width']}x{params['height']}"),
              ("Model hash", p["model"]["sha256"][:10])]
    if params.get("strength") is not None:
        fields.append(("Denoising strength", params["strength"]))
    lines = [params["prompt"]]
    if params.get("negative"):
        lines.append(f"Negative prompt: {params['negative']}")
    lines.append(", ".join(f"{k}: {v}" for k, v in fields))
    return "\n".join(lines)


def write_png(path: str | Path, image: Image.Image, provenance: dict) -> Path:
    """Write image + provenance atomically: a reader sees the old file, or the whole new one."""
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    info.add_itxt(CHUNK, json.dumps(provenance, sort_keys=True))
    info.add_text("parameters", a1111_parameters(provenance))
    return atomic_write(path, lambda f: image.save(f, format="PNG", pnginfo=info))


def read_provenance(path: str | Path) -> dict:
    """The recomposer provenance of a PNG written by ``write_png``."""
    try:
        with Image.open(path, formats=("PNG",)) as im:
            text = im.text.get(CHUNK) if hasattr(im, "text") else None
    except (OSError, SyntaxError) as e:
        raise BadImage("image", f"{path} is not a readable PNG ({e})") from None
    if text is None:
        raise BadImage("image", f"{path} carries no recomposer provenance")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise BadImage("image", f"{path} has a damaged provenance chunk") from None
    if data.get("format") != FORMAT:
        raise BadImage("image", f"{path} has provenance format {data.get('format')!r}; this recomposer reads {FORMAT}")
    return data
