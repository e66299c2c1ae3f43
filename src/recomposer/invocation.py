"""What command made a result, with which options: recorded in every PNG's provenance so ``recall`` can replay
any task, not only generate.

A command registered through ``recorded`` runs inside an ``Invocation``: its name and its options as the
user gave them, each input file's sha256, and any value the command resolved itself (a random seed, through
``resolve``). Input files are recorded by name and content hash only (a shared PNG does not tell where its
inputs lay), unless ``record_paths`` is on (``recomposer --record-paths ...``); model options keep their
absolute path (the model's weights are identified by their own sha256 too). ``provenance.write_png`` stores
the current invocation; ``recall`` finds every input again (the recorded path, or a file of that name and
content beside the PNG, in the current folder or in ``--inputs DIR``), re-runs the command with the same
options into a temp folder, and compares the pixels.
"""

import functools
import hashlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

_current: ContextVar["Invocation | None"] = ContextVar("invocation", default=None)
record_paths: ContextVar[bool] = ContextVar("record_paths", default=False)  # absolute input paths in provenance
OUTPUT = "output"  # the option every command writes to (never recorded: recall chooses its own)
PATH_OPTIONS = {"model", "config", "adapter", "image_encoder"}  # options given as text that name files or folders


@dataclass
class Invocation:
    command: str
    options: dict = field(default_factory=dict)  # option name -> JSON value (paths as absolute strings)
    inputs: dict = field(default_factory=dict)  # option name -> {"path", "sha256"} (or a list of them)

    def as_json(self) -> dict:
        return {"command": self.command, "options": dict(self.options), "inputs": dict(self.inputs)}


def recorded(name: str, command):
    """``command`` (a CLI function) run inside an Invocation of ``name`` with its keyword arguments."""

    @functools.wraps(command)
    def run(**options):
        invocation = Invocation(name)
        for key, value in options.items():
            if key != OUTPUT:
                model = key in PATH_OPTIONS
                invocation.options[key], digest = _plain(Path(value) if model and value else value,
                                                         absolute=model or record_paths.get())
                if digest is not None:
                    invocation.inputs[key] = digest
        token = _current.set(invocation)
        try:
            return command(**options)
        finally:
            _current.reset(token)

    return run


def current() -> dict | None:
    """The running command's invocation as JSON, or None outside a recorded command."""
    invocation = _current.get()
    return None if invocation is None else invocation.as_json()


def resolve(option: str, value) -> None:
    """Record a value the command chose itself (a random seed), so that a replay uses it."""
    invocation = _current.get()
    if invocation is not None:
        invocation.options[option] = value


def _plain(value, absolute: bool):
    """(JSON form of an option value, the sha256 record of the input file(s) it names or None)."""
    if isinstance(value, Path):
        digest = _digest(value)
        shown = str(value.resolve()) if absolute else value.name
        if digest is not None and not absolute:
            digest["path"] = value.name
        return shown, digest
    if isinstance(value, (list, tuple)):
        parts = [_plain(v, absolute) for v in value]
        digests = [d for _, d in parts if d is not None]
        return [p for p, _ in parts], (digests or None)
    return value, None


def _digest(path: Path) -> dict | None:
    if path.is_file():
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return {"path": str(path.resolve()), "sha256": h.hexdigest()}
    if path.is_dir():  # a folder of conditions or a model: its files' names and bytes, small files first
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            if p.stat().st_size > 64 * 2**20:  # weights are checked by the model's own sha256 instead
                h.update(f"{p.relative_to(path)}:{p.stat().st_size}".encode())
                continue
            h.update(str(p.relative_to(path)).encode() + p.read_bytes())
        return {"path": str(path.resolve()), "sha256": h.hexdigest()}
    return None


def find_inputs(record: dict, search: list[Path]) -> tuple[dict, list[str]]:
    """Each recorded input found again: ({option: path or [paths]}, problems). A recorded absolute path is taken
    if its bytes are the recorded ones; otherwise a file (or folder) of that name with those bytes in one of the
    ``search`` folders."""
    found, problems = {}, []
    for option, entry in record.get("inputs", {}).items():
        flag = f"--{option.replace('_', '-')}"
        located = []
        for e in entry if isinstance(entry, list) else [entry]:
            if not isinstance(e, dict) or not isinstance(e.get("path"), str) or not isinstance(e.get("sha256"), str):
                problems.append(f"{flag}: no recorded name and sha256")
                continue
            recorded = Path(e["path"])
            candidates = ([recorded] if recorded.is_absolute() else []) + [folder / recorded.name for folder in search]
            hit = next((c for c in candidates if (d := _digest(c)) is not None and d["sha256"] == e["sha256"]), None)
            if hit is None:
                near = next((c for c in candidates if c.exists()), None)
                problems.append(f"{flag}: {near} has changed" if near else
                                f"{flag}: {recorded.name} is not beside the PNG, here, or in --inputs")
            located.append(hit)
        found[option] = located if isinstance(entry, list) else (located[0] if located else None)
    return found, problems
