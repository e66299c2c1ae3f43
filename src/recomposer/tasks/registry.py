"""Every task by name, run from JSON as the HTTP API, the web app and ``recomposer batch`` run it (issue 19).

A job is one JSON object:

    {"task": "generate", "request": {...the task's request fields...}, "inputs": {"image": "a.png"}, "model": null}

``request`` holds the fields of the task's request dataclass (requests.py: the same ones the command line fills;
unknown fields are refused by name, missing ones take their defaults), ``inputs`` the paths of its images (read by
the one image reader, io/images.py), ``model`` a model path (None: the bundled model for the task). ``run_job``
checks all of it before any model loads, then returns the task's results (tasks/generate.py ``Generated``, each with
its provenance). A later method joins by one entry in TASKS.
"""

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidParameter
from ..requests import CompositeRequest, GenerateRequest, InstructRequest, P2PRequest, from_json


@dataclass(frozen=True)
class Task:
    request: type  # the request dataclass
    inputs: tuple[str, ...]  # image inputs it may take
    required: tuple[str, ...]  # ... and those it must have
    run: Callable  # (backbone, request, images: dict[str, PIL.Image], cancel, callback) -> list[Generated]
    instruction_model: bool = False  # the model is an instruction model (commands/instruct.py's loader)


def _generate(backbone, request, images, cancel=None, callback=None):
    import numpy as np
    import torch

    from .generate import generate

    mask = images.get("mask")
    if mask is not None:
        mask = torch.from_numpy(np.asarray(mask.convert("L")) > 127).float()[None, None]
    return generate(backbone, request, image=images.get("image"), mask=mask, cancel=cancel, callback=callback)


def _instruct(backbone, request, images, cancel=None, callback=None):
    from .instruct import instruct

    return instruct(backbone, images["image"], request, cancel=cancel, callback=callback)


def _composite(backbone, request, images, cancel=None, callback=None):
    from .composite import composite

    return composite(backbone, images["background"], images["mask"], request, images.get("object"),
                     callback=callback, cancel=cancel)


def _p2p(backbone, request, images, cancel=None, callback=None):
    from .p2p import prompt_to_prompt

    return list(prompt_to_prompt(backbone, request, callback=callback, cancel=cancel))


TASKS = {
    "generate": Task(GenerateRequest, ("image", "mask"), (), _generate),
    "instruct": Task(InstructRequest, ("image",), ("image",), _instruct, instruction_model=True),
    "composite": Task(CompositeRequest, ("background", "mask", "object"), ("background", "mask"), _composite),
    "p2p": Task(P2PRequest, (), (), _p2p),
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


def parse_job(data: object, source: str = "job", root: Path | None = None) -> Job:
    """A job from its JSON (module docstring), every field checked; input paths relative to ``root``."""
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
        path = Path(value) if root is None or Path(value).is_absolute() else root / value
        inputs[key] = readable(f"{source}.inputs.{key}", path)
    model = data.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise InvalidParameter(f"{source}.model", "a model path or null (the bundled model)", model)
        model_kind(model, f"{source}.model")
    return Job(name, request, inputs, model)


class Models:
    """Backbones loaded once per (model, instruction model?) for a run of many jobs."""

    def __init__(self, device: str = "auto", dtype: str = "fp32"):
        self.device, self.dtype, self.loaded = device, dtype, {}

    def get(self, job: Job):
        key = (job.model, TASKS[job.task].instruction_model)
        if key not in self.loaded:
            from ..models.loading import open_instruction_model, open_model

            opener = open_instruction_model if key[1] else open_model
            self.loaded[key] = opener(job.model, None, self.device, self.dtype)
        return self.loaded[key]


def run_job(job: Job, models: Models, cancel=None, callback=None) -> list:
    """The job's results (each a Generated with its provenance)."""
    from ..io.images import open_image

    images = {name: open_image(path, name) for name, path in job.inputs.items()}
    return TASKS[job.task].run(models.get(job), job.request, images, cancel=cancel, callback=callback)


def _plain(value):
    from dataclasses import asdict, is_dataclass

    return asdict(value) if is_dataclass(value) else value
