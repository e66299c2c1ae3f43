"""Training checkpoints: written all or nothing, found again only when complete (RELIABILITY.md R1, R6, R7).

A checkpoint is a folder ``<output_dir>/checkpoints/step-XXXXXX/``:

    model.safetensors      the trainable parameters and every persistent buffer (see below)
    ema.safetensors        the EMA of the trainable parameters (only when EMA is on)
    optimizer.safetensors  every tensor of the optimizer's state_dict, named by its path ("state.3.exp_avg")
    optimizer.json         the rest of that state_dict (param groups, hyper-parameters), tensors as references
    state.json             step, config, versions, trainable names, frozen-weights fingerprint, loss window
    COMPLETE               written last: the byte size and SHA-256 of each file above

Why trainable parameters and not all: an adapter trains a few percent of a backbone it does not
change; saving the frozen rest at every checkpoint would multiply the disk cost by ten or more for
nothing. The frozen parameters are fingerprinted instead (state.json), so resuming on a different
backbone is an error rather than a silently different curve. Buffers are saved whole because they
change without gradients (BatchNorm statistics) and are small.

Writing: every file goes into a hidden temp folder ``.step-XXXXXX.*.tmp`` and is fsynced; COMPLETE
is written last; the folder is fsynced and renamed into place and its parent fsynced; the new
checkpoint is read back and verified; only then are older ones pruned. A kill at any moment leaves
the previous checkpoints intact and at worst a temp folder, which the next ``latest_complete``
removes. Reading: the marker's sizes and digests are checked, every .safetensors file is judged by
its bytes (a pickle is refused unread), tensors are loaded by safetensors alone, never by pickle.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import ModelError, RecomposerError
from ..io.files import umask
from ..io.weights import check_safetensors, load_safetensors, sniff

FOLDER = "checkpoints"
MARKER = "COMPLETE"
FORMAT = 1  # bumped when the layout changes; older formats are refused with a clear error
_STEP = re.compile(r"^step-(\d{6,})$")
_TEMP = re.compile(r"^\.step-\d{6,}\..*\.tmp$")


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint folder holds, validated and loaded."""

    path: Path
    step: int
    model: dict[str, torch.Tensor]  # trainable parameters and persistent buffers, by module name
    ema: dict[str, torch.Tensor] | None  # EMA shadow of the trainable parameters, or None
    optimizer: dict  # a torch optimizer state_dict, ready for ``load_state_dict``
    state: dict  # state.json


def step_folder(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / FOLDER / f"step-{step:06d}"


# ---------------------------------------------------------------- writing

def save_checkpoint(output_dir: str | Path, step: int, *, model: dict[str, torch.Tensor],
                    ema: dict[str, torch.Tensor] | None, optimizer: dict, state: dict, keep: int) -> Path:
    """Write checkpoint ``step`` atomically, verify it, then prune to the newest ``keep`` complete ones."""
    final = step_folder(output_dir, step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        digests = {}
        tensors, structure = flatten_state(optimizer)
        digests["model.safetensors"] = _write_file(tmp, "model.safetensors", _safetensors(model))
        if ema is not None:
            digests["ema.safetensors"] = _write_file(tmp, "ema.safetensors", _safetensors(ema))
        digests["optimizer.safetensors"] = _write_file(tmp, "optimizer.safetensors", _safetensors(tensors))
        digests["optimizer.json"] = _write_file(tmp, "optimizer.json", _text(json.dumps(structure, indent=1)))
        state = {**state, "format": FORMAT, "step": step}
        digests["state.json"] = _write_file(tmp, "state.json", _text(json.dumps(state, indent=2)))
        marker = {"format": FORMAT, "step": step, "files": digests}
        _write_file(tmp, MARKER, _text(json.dumps(marker, indent=2)))  # last: its presence means all is written
        os.chmod(tmp, 0o777 & ~umask())
        _fsync_folder(tmp)
        if final.exists():  # an unusable folder of the same step (skipped on resume): set it aside, then replace
            aside = root / f".{final.name}.{uuid.uuid4().hex}.tmp"
            final.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        tmp.rename(final)
        _fsync_folder(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # each file was hashed from disk after its fsync (_write_file): the marker already vouches for it
    prune_checkpoints(output_dir, keep, through_step=step)
    return final


def _write_file(folder: Path, name: str, write: Callable[[Path], None]) -> dict:
    """Write one file of a checkpoint, fsync it, and return its size and SHA-256."""
    path = folder / name
    write(path)
    os.chmod(path, 0o666 & ~umask())  # safetensors writes 0600; a checkpoint is as readable as any result
    with path.open("rb") as f:
        os.fsync(f.fileno())
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def _safetensors(tensors: dict[str, torch.Tensor]) -> Callable[[Path], None]:
    # clone: safetensors refuses tensors sharing memory (tied weights), and wants them contiguous on the CPU
    plain = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}
    return lambda path: save_file(plain, str(path))


def _text(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text + "\n", encoding="utf-8")


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune_checkpoints(output_dir: str | Path, keep: int, through_step: int | None = None) -> list[Path]:
    """Delete complete checkpoints beyond the newest ``keep`` (>= 1), and folders without a marker that are
    older than the newest complete one (they can never be resumed from). Returns what was deleted.

    With ``through_step`` (the checkpoint just written), only folders up to that step are considered: a
    newer one can only be an unusable leftover that resuming skipped, and must not count as the newest
    complete checkpoint, or it could push the new, verified one out (it is replaced when the run gets there)."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (got {keep})")
    folders = [(s, p) for s, p in _step_folders(Path(output_dir) / FOLDER) if through_step is None or s <= through_step]
    complete = [(s, p) for s, p in folders if (p / MARKER).is_file()]
    if not complete:
        return []
    newest = complete[0][0]
    doomed = [p for _, p in complete[keep:]] + [p for s, p in folders if s < newest and not (p / MARKER).is_file()]
    for path in doomed:
        aside = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"  # renamed first: never half a step folder
        path.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    return doomed


def _step_folders(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) for every step-XXXXXX folder under root, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP.match(p.name))]
    return sorted(found, reverse=True)


# ---------------------------------------------------------------- reading

def latest_complete(output_dir: str | Path) -> Path | None:
    """The newest checkpoint that verifies, or None. Stale temp folders of interrupted saves are removed;
    incomplete or corrupt checkpoints are skipped with a warning naming the fault."""
    root = Path(output_dir) / FOLDER
    if not root.is_dir():
        return None
    for path in root.iterdir():
        if _TEMP.match(path.name):
            shutil.rmtree(path, ignore_errors=True)
    for _, path in _step_folders(root):
        try:
            verify_checkpoint(path)
        except RecomposerError as e:
            warnings.warn(f"skipping an unusable checkpoint: {e}", stacklevel=2)
            continue
        return path
    return None


def verify_checkpoint(path: str | Path) -> dict:
    """Check a checkpoint folder without loading its tensors: marker, files, sizes, digests, safetensors
    structure (pickles refused unread). Returns the marker."""
    path = Path(path)
    marker_path = path / MARKER
    if not marker_path.is_file():
        raise ModelError(str(path), f"has no {MARKER} marker: the save did not finish")
    marker = _json(marker_path)
    if marker.get("format") != FORMAT or not isinstance(marker.get("files"), dict):
        raise ModelError(str(marker_path), f"is not a format-{FORMAT} checkpoint marker")
    required = {"model.safetensors", "optimizer.safetensors", "optimizer.json", "state.json"}
    if missing := required - marker["files"].keys():
        raise ModelError(str(marker_path), f"does not list {', '.join(sorted(missing))}")
    for name, expected in marker["files"].items():
        file = path / name
        if "/" in name or "\\" in name or name.startswith("."):
            raise ModelError(str(marker_path), f"lists a file outside the checkpoint: {name!r}")
        if not file.is_file():
            raise ModelError(str(file), "is missing")
        tensors = name.endswith(".safetensors")
        with file.open("rb") as f:
            if tensors and sniff(f.read(9)) != "safetensors":
                check_safetensors(file)  # judged by its bytes: a pickle is refused unread, whatever the digests say
            size = file.stat().st_size
            if size != expected.get("bytes"):
                raise ModelError(str(file), f"has {size} bytes, the marker says {expected.get('bytes')}: truncated?")
            f.seek(0)
            if hashlib.file_digest(f, "sha256").hexdigest() != expected.get("sha256"):
                raise ModelError(str(file), "does not match the SHA-256 in its marker: corrupt")
        if tensors:
            check_safetensors(file)
    return marker


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Verify a checkpoint folder and load it (safetensors and JSON only)."""
    path = Path(path)
    marker = verify_checkpoint(path)
    state = _json(path / "state.json")
    if state.get("step") != marker["step"]:
        raise ModelError(str(path / "state.json"), f"is for step {state.get('step')}, the marker for {marker['step']}")
    ema = load_safetensors(path / "ema.safetensors") if "ema.safetensors" in marker["files"] else None
    optimizer = unflatten_state(_json(path / "optimizer.json"), load_safetensors(path / "optimizer.safetensors"),
                                str(path / "optimizer.safetensors"))
    return Checkpoint(path, marker["step"], load_safetensors(path / "model.safetensors"), ema, optimizer, state)


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(str(path), f"is not valid JSON ({e.__class__.__name__})") from None


def copy_into(targets: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], source: str) -> None:
    """Copy loaded tensors into the model's tensors of the same names; every name must be there with its shape."""
    if missing := sorted(targets.keys() - loaded.keys()):
        raise ModelError(source, f"lacks {len(missing)} tensors the model needs, e.g. {', '.join(missing[:3])}")
    if unexpected := sorted(loaded.keys() - targets.keys()):
        raise ModelError(source, f"holds {len(unexpected)} tensors the model lacks, e.g. {', '.join(unexpected[:3])}")
    for name, target in targets.items():
        if loaded[name].shape != target.shape:
            raise ModelError(source, f"tensor {name!r} has shape {list(loaded[name].shape)}, "
                                     f"the model's is {list(target.shape)}")
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(loaded[name])


# ---------------------------------------------------------------- optimizer state without pickle

def flatten_state(state, prefix: str = "") -> tuple[dict[str, torch.Tensor], object]:
    """Split a nested state (dicts, lists, tuples, tensors, JSON scalars) into named tensors and a JSON
    structure that refers to them: ``{"__tensor__": name}``. Tuples and dicts whose keys are not plain
    strings are tagged, so ``unflatten_state`` rebuilds exactly what went in (int keys stay ints)."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value, path: str):
        if isinstance(value, torch.Tensor):
            if path in tensors:
                raise ValueError(f"optimizer state has two tensors named {path!r}")
            tensors[path] = value
            return {"__tensor__": path}
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: walk(v, f"{path}.{k}" if path else k) for k, v in value.items()}
            return {"__items__": [[walk(k, f"{path}.key{i}"), walk(v, f"{path}.{k}" if path else str(k))]
                                  for i, (k, v) in enumerate(value.items())]}
        if isinstance(value, tuple):
            return {"__tuple__": [walk(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"optimizer state at {path or '<root>'!r} holds a {type(value).__name__}, "
                        "which a checkpoint cannot store without pickle")

    return tensors, walk(state, prefix)


def unflatten_state(structure, tensors: dict[str, torch.Tensor], source: str):
    """The inverse of ``flatten_state``; a tensor the structure names but the file lacks is an error naming it."""
    used = set()

    def walk(value):
        if isinstance(value, dict):
            if value.keys() == {"__tensor__"}:
                name = value["__tensor__"]
                if name not in tensors:
                    raise ModelError(source, f"lacks tensor {name!r} that optimizer.json refers to")
                used.add(name)
                return tensors[name]
            if value.keys() == {"__tuple__"}:
                return tuple(walk(v) for v in value["__tuple__"])
            if value.keys() == {"__items__"}:
                return {walk(k): walk(v) for k, v in value["__items__"]}
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    state = walk(structure)
    if extra := sorted(tensors.keys() - used):
        raise ModelError(source, f"holds tensors optimizer.json does not refer to, e.g. {', '.join(extra[:3])}")
    return state
