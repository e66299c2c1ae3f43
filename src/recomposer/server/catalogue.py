"""What the ``--models`` folders hold, by their files alone (nothing is loaded, no code runs): models (diffusers
folders, bundled-format parts folders, single-file checkpoints), the adapters a parts folder carries (Composer,
ControlNet, instruction delta) and diffusers ControlNets. Folders are searched three levels deep."""

import json
from pathlib import Path

from ..requests import is_parts_dir

DEPTH = 3
PART_ADAPTERS = {"composer.json": "composer", "controlnet.json": "controlnet", "instruct.json": "instruct"}


def catalogue(roots) -> dict:
    from ..models.bundled import WEIGHTS

    found = {"models": [{"name": None, "label": "bundled", "kind": "parts",
                         "adapters": _part_adapters(WEIGHTS)}], "controlnets": [], "adapters": []}
    for root in roots:
        for folder in _folders(Path(root), DEPTH):
            name = str(folder)
            if (folder / "model_index.json").is_file():
                found["models"].append({"name": name, "label": folder.name, "kind": "diffusers", "adapters": []})
            elif is_parts_dir(folder):
                found["models"].append({"name": name, "label": folder.name, "kind": "parts",
                                        "adapters": _part_adapters(folder)})
            elif _class_name(folder / "config.json") == "ControlNetModel":
                found["controlnets"].append({"name": name, "label": folder.name})
            for file in sorted(folder.glob("*.safetensors")):
                if (file.with_suffix(".json")).is_file() and file.stem in ("composer",) and not is_parts_dir(folder):
                    found["adapters"].append({"name": str(file), "label": file.name, "kind": "composer"})
                elif folder == Path(root) and not (folder / "model_index.json").is_file():
                    found["models"].append({"name": str(file), "label": file.name, "kind": "single-file",
                                            "adapters": []})
    return found


def _folders(root: Path, depth: int):
    if not root.is_dir():
        return
    yield root
    if depth > 0:
        for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not child.is_symlink():
                yield from _folders(child, depth - 1)


def _part_adapters(folder: Path) -> list[str]:
    return [kind for name, kind in PART_ADAPTERS.items() if (folder / name).is_file()]


def _class_name(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("_class_name") if path.is_file() else None
    except (ValueError, OSError, AttributeError):
        return None
