"""Every task by name, run from JSON as the HTTP API, the web app and ``recomposer batch`` run it (issue 19).

A job is one JSON object:

    {"task": "generate", "request": {...the task's request fields...}, "inputs": {"image": "a.png"}, "model": null}

``request`` holds the fields of the task's request dataclass (requests.py: the same ones the command line fills;
unknown fields are refused by name, missing ones take their defaults), ``inputs`` the paths of its files (images,
read by the one image reader, io/images.py; compose's inputs by kind also take a saved KIND.json, as ``--KIND-from``
does), ``model`` a model path (None: the bundled model for the task). ``parse_job`` checks all of it before any
model loads; ``run_job`` returns the task's results (tasks/generate.py ``Generated``, each with its provenance, or a
decomposition's ``Files``), and ``job_files`` names them for a folder. A later method joins by one entry in TASKS
and its runner (tasks/runners.py).
"""

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidParameter
from ..requests import (ComposeJobRequest, CompositeRequest, DecomposeRequest, GenerateRequest, InstructRequest,
                        InterpolateRequest, InvertRequest, P2PRequest, from_json)
from .runners import (CONTROL_INPUTS, PAIR_INPUTS, SOURCE_KINDS, Files, compose_job, composite_job, decompose_job,
                      generate_job, instruct_job, interpolate_job, invert_job, p2p_job, visii_job)
from .visii import VisiiRequest


@dataclass(frozen=True)
class Task:
    request: type  # the request dataclass
    inputs: tuple[str, ...]  # files it may take
    required: tuple[str, ...]  # ... and those it must have
    run: Callable  # (model, request, paths: dict[str, Path], cancel, callback) -> list[Generated] | Files
    model: str = "backbone"  # what it runs on: "backbone", "instruction" (an instruction model), "composer", "none"


TASKS = {
    "generate": Task(GenerateRequest, ("image", "mask") + CONTROL_INPUTS, (), generate_job),
    "compose": Task(ComposeJobRequest, SOURCE_KINDS + ("image", "mask") + CONTROL_INPUTS, (), compose_job,
                    model="composer"),
    "interpolate": Task(InterpolateRequest, ("first", "last", "sketch"), ("first", "last"), interpolate_job,
                        model="composer"),
    "decompose": Task(DecomposeRequest, ("image", "mask"), ("image",), decompose_job, model="none"),
    "instruct": Task(InstructRequest, ("image", "learned"), ("image",), instruct_job, model="instruction"),
    "visii": Task(VisiiRequest, PAIR_INPUTS, ("before", "after"), visii_job, model="instruction"),
    "invert": Task(InvertRequest, ("image",), ("image",), invert_job),
    "composite": Task(CompositeRequest, ("background", "mask", "object"), ("background", "mask"), composite_job),
    "p2p": Task(P2PRequest, ("inversion",), (), p2p_job),
}


@dataclass(frozen=True)
class Job:
    """A checked job: its task, request, input paths and model."""

    task: str
    request: object
    inputs: dict[str, Path]
    model: str | None

    def digest(self) -> str:
        """sha256 of what the job is: the task, the request, the model path and each input's bytes."""
        h = hashlib.sha256(json.dumps({"task": self.task, "request": _plain(self.request), "model": self.model},
                                      sort_keys=True).encode())
        for name in sorted(self.inputs):
            h.update(name.encode() + hashlib.sha256(self.inputs[name].read_bytes()).digest())
        return h.hexdigest()


def parse_job(data: object, source: str = "job", root: Path | None = None,
              locate: Callable[[str, str], Path] | None = None) -> Job:
    """A job from its JSON (module docstring), every field checked; input paths relative to ``root``, or found by
    ``locate(name, field)`` (the server's confinement: server/confine.py)."""
    from ..requests import model_kind, readable

    if not isinstance(data, dict):
        raise InvalidParameter(source, "a JSON object with task, request, inputs and model", type(data).__name__)
    if unknown := sorted(set(data) - {"task", "request", "inputs", "model"}):
        raise InvalidParameter(source, "the fields task, request, inputs, model", unknown)
    name = data.get("task")
    if name not in TASKS:
        raise InvalidParameter(f"{source}.task", "one of " + ", ".join(TASKS), name)
    task = TASKS[name]
    request = from_json(task.request, data.get("request") or {}, f"{source}.request")
    given = data.get("inputs") or {}
    if not isinstance(given, dict) or (unknown := sorted(set(given) - set(task.inputs))):
        raise InvalidParameter(f"{source}.inputs", f"{name}'s inputs ({', '.join(task.inputs) or 'none'})",
                               unknown if isinstance(given, dict) else given)
    if missing := [k for k in task.required if k not in given]:
        raise InvalidParameter(f"{source}.inputs", f"{', '.join(task.required)} for {name}", f"missing {missing}")
    inputs = {}
    for key, value in given.items():
        if not isinstance(value, str):
            raise InvalidParameter(f"{source}.inputs.{key}", "a path", value)
        if locate is not None:
            inputs[key] = locate(value, f"{source}.inputs.{key}")
            continue
        path = Path(value) if root is None or Path(value).is_absolute() else root / value
        inputs[key] = readable(f"{source}.inputs.{key}", path)
    model = data.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise InvalidParameter(f"{source}.model", "a model path or null (the bundled model)", model)
        model_kind(model, f"{source}.model")
    return Job(name, request, inputs, model)


class Models:
    """Models loaded once per (model path, what the task runs on) for a run of many jobs; at most ``keep`` at once
    (the one used longest ago goes first)."""

    def __init__(self, device: str = "auto", dtype: str = "fp32", keep: int = 2):
        self.device, self.dtype, self.keep, self.loaded = device, dtype, keep, {}

    def get(self, job: Job):
        key = (job.model, TASKS[job.task].model)
        if key[1] == "none":
            return None
        if key in self.loaded:
            self.loaded[key] = self.loaded.pop(key)  # now the most recently used
        else:
            while len(self.loaded) >= self.keep:
                self.loaded.pop(next(iter(self.loaded)))
            from ..models.device import resolve_device, resolve_dtype
            from ..models.loading import open_instruction_model, open_model
            from .composer import load_composer

            if key[1] == "composer":
                device = resolve_device(self.device)
                self.loaded[key] = load_composer(job.model, None, None, device, resolve_dtype(self.dtype, device))
            else:
                opener = open_instruction_model if key[1] == "instruction" else open_model
                self.loaded[key] = opener(job.model, None, self.device, self.dtype)
        return self.loaded[key]


def run_job(job: Job, models: Models, cancel=None, callback=None) -> "list | Files":
    """The job's results: Generated images (each with its provenance), or the Files of a decomposition."""
    return TASKS[job.task].run(models.get(job), job.request, dict(job.inputs), cancel=cancel, callback=callback)


def job_files(results: "list | Files") -> dict:
    """A job's results as the files of its folder (io/files.write_folder): each image a PNG named by its seed (its
    batch index after a repeated seed) with its provenance, or a decomposition's files."""
    from ..provenance import write_png

    if isinstance(results, Files):
        return dict(results.files)
    names = [f"{r.seed}.png" for r in results]
    if len(set(names)) < len(names):
        names = [f"{k:03d}-{r.seed}.png" for k, r in enumerate(results)]
    return {name: (lambda folder, r=r, name=name: write_png(folder / name, r.image, r.provenance))
            for name, r in zip(names, results)}


def _plain(value):
    from dataclasses import asdict, is_dataclass

    return asdict(value) if is_dataclass(value) else value
