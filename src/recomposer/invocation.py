"""What command made a result, with which options: recorded in every PNG's provenance so ``recall`` can replay
any task, not only generate.

A command registered through ``recorded`` runs inside an ``Invocation``: its name and its options as the
user gave them (paths made absolute), each input file's sha256, and any value the command resolved itself
(a random seed, through ``resolve``). ``provenance.write_png`` stores the current invocation; ``recall``
re-runs the command with the same options into a temp folder (after checking that every input file still
has its recorded bytes) and compares the pixels.
"""

import functools
import hashlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

_current: ContextVar["Invocation | None"] = ContextVar("invocation", default=None)
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
                invocation.options[key], digest = _plain(Path(value) if key in PATH_OPTIONS and value else value)
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


def _plain(value):
    """(JSON form of an option value, the sha256 record of the input file(s) it names or None)."""
    if isinstance(value, Path):
        return str(value.resolve()), _digest(value)
    if isinstance(value, (list, tuple)):
        parts = [_plain(v) for v in value]
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


def check_inputs(record: dict) -> list[str]:
    """The recorded inputs that are gone or changed (empty: all as they were)."""
    problems = []
    for option, entry in record.get("inputs", {}).items():
        for e in entry if isinstance(entry, list) else [entry]:
            if not isinstance(e, dict) or not isinstance(e.get("path"), str):
                problems.append(f"--{option.replace('_', '-')}: no recorded path")
                continue
            now = _digest(Path(e["path"]))
            if now is None:
                problems.append(f"--{option.replace('_', '-')}: {e['path']} is gone")
            elif now["sha256"] != e.get("sha256"):
                problems.append(f"--{option.replace('_', '-')}: {e['path']} has changed")
    return problems
