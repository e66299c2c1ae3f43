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
    """The AUTOMATIC1111 'parameters' text: prompt, negative, then 'Key: value' pairs (those the task has)."""
    params = p["params"]
    fields = [("Steps", params.get("steps")), ("Sampler", p.get("sampler_label")), ("CFG scale", params.get("guidance")),
              ("Seed", p.get("seed")), ("Size", f"{params['width']}x{params['height']}" if "width" in params else None),
              ("Model hash", p["model"]["sha256"][:10]), ("Denoising strength", params.get("strength"))]
    lines = [p.get("prompt", params.get("prompt", ""))]
    if params.get("negative"):
        lines.append(f"Negative prompt: {params['negative']}")
    lines.append(", ".join(f"{k}: {v}" for k, v in fields if v is not None))
    return "\n".join(lines)


def write_png(path: str | Path, image: Image.Image, provenance: dict) -> Path:
    """Write image + provenance atomically: a reader sees the old file, or the whole new one. Inside a recorded
    command the provenance also says which command, with which options, made the image (invocation.py)."""
    from .invocation import current

    path = Path(path)
    if current() is not None and "invocation" not in provenance:
        provenance = {**provenance, "invocation": current()}
    info = PngImagePlugin.PngInfo()
    info.add_itxt(CHUNK, json.dumps(standard(provenance), sort_keys=True, allow_nan=False))
    info.add_text("parameters", a1111_parameters(provenance))
    return atomic_write(path, lambda f: image.save(f, format="PNG", pnginfo=info))


def standard(value):
    """The value with every non-finite float written as a string ("inf", "-inf", "nan"): standard JSON that any
    reader parses (JSON.parse rejects Infinity)."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: standard(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [standard(v) for v in value]
    return value


def save_results(results, output: str | Path, stems: list[str] | None = None, grid: bool = True) -> list[Path]:
    """Each result's image with its provenance where the output policy puts it (io/output.py: ``-o FILE.png`` or
    a folder of seed-named files that never overwrite), and a grid beside a batch of several. ``stems``: the
    names in a folder (default the seeds). Returns the paths written, the grid last."""
    from .io.files import save_png
    from .io.output import grid_path, output_paths
    from .io.sheets import image_grid

    paths = output_paths(Path(output), stems or [str(r.seed) for r in results])
    written = [write_png(path, r.image, r.provenance) for path, r in zip(paths, results)]
    if grid and len(results) > 1 and len({r.image.size for r in results}) == 1:
        written.append(save_png(image_grid([r.image for r in results]), grid_path(paths)))
    return written


def read_provenance(path: str | Path) -> dict:
    """The recomposer provenance of a PNG written by ``write_png``, checked by ``check_record``.

    Provenance is untrusted input like any other (a PNG can be edited): whatever it holds is one
    clear error, and the model it names goes through the same checks as ``--model``."""
    try:
        with Image.open(path, formats=("PNG",)) as im:
            text = im.text.get(CHUNK) if hasattr(im, "text") else None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage("image", f"{path} is not a readable PNG ({e})") from None
    if text is None:
        raise BadImage("image", f"{path} carries no recomposer provenance")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise BadImage("image", f"{path} has a damaged provenance chunk (not JSON, or nested too deep)") from None
    return check_record(data, str(path))


MODEL_KINDS = ("diffusers-dir", "single-file", "bundled", "memory")
_RECORD = {"format": int, "task": str, "params": dict, "model": dict, "seed": int, "batch_index": int}
_MODEL = {"kind": str, "path": (str, type(None)), "config": (str, type(None)), "sha256": str, "dtype": str,
          "device": str}


def check_record(data: object, source: str) -> dict:
    """The shape every provenance record has, or a BadImage naming the first thing that is wrong."""
    def bad(what: str) -> BadImage:
        return BadImage("image", f"{source} has provenance that {what}")

    if not isinstance(data, dict):
        raise bad(f"is a JSON {_json_type(data)}, not an object")
    if data.get("format") != FORMAT:
        raise bad(f"is in format {data.get('format')!r}; this recomposer reads {FORMAT}")
    for key, kind in _RECORD.items():
        if key not in data:
            raise bad(f"lacks {key!r}")
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            raise bad(f"has a JSON {_json_type(data[key])} for {key!r}")
    model = data["model"]
    for key, kind in _MODEL.items():
        if key not in model or not isinstance(model[key], kind):
            raise bad(f"records no valid model.{key}")
    if model["kind"] not in MODEL_KINDS:
        raise bad(f"names an unknown model kind {model['kind']!r} (known: {', '.join(MODEL_KINDS)})")
    batch = data["params"].get("batch", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 0 <= data["batch_index"] < batch:
        raise bad(f"has batch_index {data['batch_index']!r} outside a batch of {batch!r}")
    if not isinstance(data.setdefault("inputs", {}), dict):
        raise bad(f"has a JSON {_json_type(data['inputs'])} for 'inputs'")
    for name, entry in data["inputs"].items():  # one input, or a list of them (one hint per ControlNet)
        for one in entry if isinstance(entry, list) else [entry]:
            if not isinstance(one, dict) or not isinstance(one.get("sha256"), str):
                raise bad(f"records input {name!r} without a sha256")
            if "path" in one and not isinstance(one["path"], str):
                raise bad(f"records input {name!r} with a path that is not a string")
    return data


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
