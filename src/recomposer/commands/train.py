"""`recomposer train ...`: train adapters on the shapes world (training/), resumable from their output folder.

    recomposer train composer --model DIR -o OUT [--steps N --batch-size B --lr LR --size S ...]

Every parameter is checked before a model loads; a run resumes from OUT's newest complete checkpoint
(``--no-resume`` refuses a folder that has one). At the end the adapter is written, all or nothing, to
OUT/composer.safetensors (``ComposerAdapter.load`` reads it back).
"""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InvalidParameter, RecomposerError

train_app = typer.Typer(no_args_is_help=True, help="Train adapters on the shapes world (resumable).")

ADAPTER_FILE = "composer.safetensors"
RUN_FILE = "composer-run.json"  # the settings that must not change when a run is resumed


@train_app.command("composer")
def train_composer(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for checkpoints, samples, loss.jsonl "
                                                                "and the adapter; a run resumes from it.")],
    model: Annotated[Optional[str], typer.Option("--model", help="Diffusers model directory (the frozen "
                                                                 "backbone). Default: the bundled model.")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer updates in all (a resumed run continues up to it).")]
    = 10_000,
    batch_size: Annotated[int, typer.Option(help="Shapes-world scenes per step (per process).")] = 8,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    size: Annotated[Optional[int], typer.Option(help="Image side in pixels: a multiple of the VAE factor "
                                                     "(default: the backbone's native size).")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="A checkpoint every this many steps (and at the end).")]
    = 500,
    sample_every: Annotated[int, typer.Option(help="A sample grid every this many steps (0: never).")] = 0,
    seed: Annotated[int, typer.Option(help="Seeds the adapter's initial weights and every step's draws.")] = 0,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from the newest checkpoint "
                                                                      "in --output.")] = True,
    image_encoder: Annotated[Optional[str], typer.Option(help="A local CLIP vision model directory: trains "
                                                              "the image-embedding door too.")] = None,
    train_unet: Annotated[bool, typer.Option("--train-unet", help="Train the UNet with the adapter (the "
                                                                  "paper's setting); written to OUT/unet.")]
    = False,
    mixed_precision: Annotated[str, typer.Option(help="no, fp16 (GPU) or bf16.")] = "no",
    cpu: Annotated[bool, typer.Option("--cpu", help="Train on the CPU even where a GPU is present.")] = False,
) -> None:
    """Train a Composer adapter on a frozen backbone with the shapes world's exact conditions."""
    from .. import validation as v
    from ..training import TrainConfig, latest_complete

    # 1. Every parameter, before anything loads.
    config = TrainConfig(output_dir=output, steps=steps, batch_size=batch_size, lr=lr,
                         checkpoint_every=checkpoint_every, sample_every=sample_every, seed=seed,
                         mixed_precision=mixed_precision, cpu=cpu).check()
    if size is not None:
        v.integer("size", size, 16, 4096)
    if output.exists() and not output.is_dir():
        raise InvalidParameter("output", "a folder (new, or one this command wrote)", str(output))
    if image_encoder is not None and not Path(image_encoder).is_dir():
        raise RecomposerError("image-encoder", f"no such directory: {image_encoder}")
    if model is not None:
        size = _check_size(model, size)
    if not resume and output.is_dir() and latest_complete(output) is not None:
        raise RecomposerError("output", f"{output} holds checkpoints of an earlier run; resume it (--resume) "
                                        "or choose a new folder")

    # 2. Load, then train.
    import torch

    from ..decompose.embedding import ClipImageEncoder
    from ..models.loading import load_bundled, load_model
    from ..training import train
    from ..training.composer import (WORLD_KINDS, ComposerTraining, composer_step, new_adapter, save_adapter,
                                     world_batches, world_sampler)

    cpu_device = torch.device("cpu")  # the trainer moves everything to its device
    backbone = load_bundled(cpu_device, torch.float32) if model is None else load_model(model, cpu_device,
                                                                                        torch.float32)
    size = size if size is not None else backbone.native_size
    v.multiple_of("size", size, backbone.vae_factor, 16, 4096)
    encoder = ClipImageEncoder(image_encoder) if image_encoder is not None else None
    kinds = WORLD_KINDS + (("image_embedding",) if encoder is not None else ())
    run = {"model": str(Path(model).resolve()) if model else "bundled", "size": size, "kinds": list(kinds),
           "image_encoder": encoder.identity if encoder else None, "train_unet": train_unet}
    _check_run(output, run)
    adapter = new_adapter(backbone, encoder.dim if encoder else 768, encoder.identity if encoder else None, seed=seed)
    trainee = ComposerTraining(backbone, adapter, kinds, train_unet=train_unet)
    batches = world_batches(adapter, batch_size, size, image_encoder=encoder)
    sampler = world_sampler(size, image_encoder=encoder) if sample_every else None
    summary = train(config, trainee, composer_step, batches, sampler, resume=resume)

    # 3. The results, each all or nothing.
    typer.echo(str(save_adapter(adapter, output / ADAPTER_FILE)))
    if train_unet:
        typer.echo(str(_save_unet(backbone.unet, output / "unet")))
    loss = "n/a" if summary.loss is None else f"{summary.loss:.4g}"
    typer.echo(f"step {summary.step}, loss {loss}", err=True)


def _not_yet(name: str) -> None:
    @train_app.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                       help="Not available yet (arrives with the bundled-model issue).")
    def stub(ctx: typer.Context) -> None:
        raise RecomposerError(name, f"`recomposer train {name}` is not available yet: "
                                    "arrives with the bundled-model issue")


for _name in ("vae", "base", "encoder"):
    _not_yet(_name)


# --- helpers ---------------------------------------------------------------------------------

def _check_size(model: str, size: int | None) -> int | None:
    """Read the model's VAE factor from its configs (no weights) and check ``size`` against it."""
    from diffusers import AutoencoderKL

    from .. import validation as v
    from ..errors import ModelError
    from ..models.loading import check_diffusers_dir

    if not Path(model).is_dir():
        raise ModelError("model", f"{model} is not a directory (train needs a diffusers model directory)")
    root = check_diffusers_dir(model)
    try:
        factor = 2 ** (len(AutoencoderKL.load_config(root / "vae", local_files_only=True)["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError("model", f"{root / 'vae'} has no readable config ({e.__class__.__name__})") from None
    if size is not None:
        v.multiple_of("size", size, factor, 16, 4096)
    return size


def _check_run(output: Path, run: dict) -> None:
    """Write the run's settings on a fresh start; on a resume, refuse changed ones (the checkpoint cannot tell)."""
    from ..io.files import atomic_write

    path = output / RUN_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise RecomposerError("output", f"{path} is not valid JSON; choose a new folder") from None
        for key, value in run.items():
            if key != "model" and old.get(key) != value:
                raise RecomposerError(key.replace("_", "-"), f"was {old.get(key)!r} in the run in {output}, "
                                                             f"now {value!r}; resume with the same or choose a new "
                                                             "folder")
        return
    output.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write((json.dumps(run, indent=2) + "\n").encode()))


def _save_unet(unet, folder: Path) -> Path:
    """The trained UNet as a diffusers folder (safetensors), written beside and renamed into place."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        unet.save_pretrained(tmp, safe_serialization=True)
        if folder.exists():
            aside = folder.with_name(f".{folder.name}.old.tmp")
            shutil.rmtree(aside, ignore_errors=True)
            folder.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
