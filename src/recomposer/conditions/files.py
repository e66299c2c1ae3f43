"""Saving and loading conditions, the same way for every kind.

A condition of kind K saved in a folder is three files: ``K.json`` (format, kind, meta, the names
of its arrays), ``K.safetensors`` (its arrays, exact; absent for text-only kinds) and ``K.png``
(its picture, for people; never read back). Loading checks everything and refuses, naming the
file and key, anything malformed: nothing is half-loaded.
"""

import json
from pathlib import Path

import numpy as np

from ..errors import InvalidParameter
from ..io.files import png_about
from ..io.weights import check_safetensors
from .base import Condition, ConditionSet

FORMAT = 1


def save_condition(condition: Condition, folder: str | Path) -> None:
    from safetensors.numpy import save_file

    folder = Path(folder)
    arrays = {name: np.ascontiguousarray(a) for name, a in condition.arrays().items()}
    record = {"format": FORMAT, "kind": condition.kind, "meta": condition.meta(), "arrays": sorted(arrays)}
    (folder / f"{condition.kind}.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    if arrays:
        save_file(arrays, str(folder / f"{condition.kind}.safetensors"))
    about = png_about({"what": f"the picture of a saved {condition.kind} condition (never read back)"})
    condition.picture().save(folder / f"{condition.kind}.png", format="PNG", pnginfo=about)


def load_condition(folder: str | Path, kind: str) -> Condition:
    from safetensors.numpy import load_file

    from . import KINDS

    folder = Path(folder)
    if kind not in KINDS:
        raise InvalidParameter("kind", "one of " + ", ".join(KINDS), kind)
    path = folder / f"{kind}.json"
    where = str(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidParameter(where, "an existing file", "missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidParameter(where, "valid JSON", "unparseable") from None
    if not isinstance(record, dict) or set(record) != {"format", "kind", "meta", "arrays"}:
        raise InvalidParameter(where, "an object with format, kind, meta and arrays", sorted(record)
                               if isinstance(record, dict) else type(record).__name__)
    if record["format"] != FORMAT or record["kind"] != kind:
        raise InvalidParameter(f"{where}.kind", f"format {FORMAT} and kind {kind!r}",
                               (record["format"], record["kind"]))
    arrays = {}
    if record["arrays"]:
        tensors = folder / f"{kind}.safetensors"
        check_safetensors(tensors)
        arrays = load_file(str(tensors))
        if sorted(arrays) != sorted(record["arrays"]):
            raise InvalidParameter(f"{tensors}", f"arrays {record['arrays']}", sorted(arrays))
    if not isinstance(record["meta"], dict):
        raise InvalidParameter(f"{where}.meta", "a JSON object", record["meta"])
    try:
        return KINDS[kind].from_saved(record["meta"], arrays)
    except KeyError as e:
        raise InvalidParameter(f"{where}.meta.{e.args[0]}", "present", None) from None


def save_set(conditions: ConditionSet, folder: str | Path) -> None:
    for condition in conditions.values():
        save_condition(condition, folder)


def load_set(folder: str | Path) -> ConditionSet:
    """Every condition saved in a folder (each ``K.json`` whose K is a known kind)."""
    from . import KINDS

    folder = Path(folder)
    return ConditionSet(tuple(load_condition(folder, p.stem) for p in sorted(folder.glob("*.json"))
                              if p.stem in KINDS))
