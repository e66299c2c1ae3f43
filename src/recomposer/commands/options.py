"""Options that several commands share, each defined once with its check (issue 15, item 2).

A value that names a device or a dtype is checked by its form while the command line is parsed, so every command
that has the option refuses a bad one the same way (``error: device: must be ...``), before torch is imported or
anything loads. Whether this machine has the device is checked when a model loads (models/device.py).
"""

from typing import Annotated, Optional

import typer


def _device(value: str | None) -> str | None:
    from ..requests import check_device

    return value if value is None else check_device(value)


def _dtype(value: str) -> str:
    from ..requests import check_dtype

    return check_dtype(value)


def _model(value: str | None) -> str | None:
    """A model folder by its contents (diffusers, or bundled parts) or a single-file checkpoint, before loading."""
    from ..requests import model_kind

    if value is not None:
        model_kind(value)
    return value


def model_option(help: str):
    """A ``--model`` option with its own help, checked by its files while parsing (requests.model_kind)."""
    return Annotated[Optional[str], typer.Option("--model", help=help, callback=_model)]


Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", callback=_device)]
RecordedDevice = Annotated[Optional[str], typer.Option("--device", help="Override the recorded device: auto, cpu, "
                                                                        "cuda, cuda:N or mps.", callback=_device)]
Dtype = Annotated[str, typer.Option("--dtype", help="fp32, fp16 (GPU) or bf16.", callback=_dtype)]
Model = model_option("Diffusers model directory, or a .safetensors file (with --config). Default: the bundled model.")
Config = Annotated[Optional[str], typer.Option("--config", help="Diffusers-format directory with the configs "
                                                                 "for a single-file checkpoint.")]

# Sampling options every image-making command shares.
Scheduler = Annotated[str, typer.Option(help="ddim, ddpm, pndm, euler, euler_a, heun, dpmpp_2m, dpmpp_2m_karras, "
                                             "unipc.")]
Steps = Annotated[int, typer.Option(help="Sampling steps.")]
Seed = Annotated[Optional[int], typer.Option(help="Seed of the first image (image k uses seed + k); default: "
                                                   "random, recorded in the PNG.")]
Batch = Annotated[int, typer.Option(help="Number of images.")]
AllowFlat = Annotated[bool, typer.Option("--allow-flat", help="Keep images of one flat colour (otherwise an "
                                                               "error: the model drew nothing).")]


def chosen_seed(seed: int | None) -> int:
    """``--seed``, or a random one when it was left out, recorded so that a replay uses it."""
    import secrets

    from ..invocation import resolve

    if seed is None:
        seed = secrets.randbelow(2**32)
    resolve("seed", seed)
    return seed
