"""`recomposer visii BEFORE AFTER [BEFORE2 AFTER2 ...] -o instruction.safetensors`: an edit learnt from example pairs
(Visii, tasks/visii.py), then applied with `recomposer instruct IMAGE --learned instruction.safetensors`.

    recomposer visii before.png after.png -o redder.safetensors
    recomposer instruct other.png --learned redder.safetensors --with-text "and the background too" -o out.png

Every parameter and image is checked before the model loads; the file is written all or nothing at the end.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import Config, Device, Dtype, model_option


def visii_command(
    images: Annotated[list[Path], typer.Argument(metavar="BEFORE AFTER [BEFORE2 AFTER2 ...]",
                                                 help="Example pairs: each image before the edit, then after it.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The instruction file to write (.safetensors, "
                                                                "new).")],
    model: model_option("The instruction model to learn for: a diffusers InstructPix2Pix directory, or parts with "
                        "an instruct part. Default: the bundled instruction model.") = None,
    config: Config = None,
    init: Annotated[str, typer.Option(help="The plain instruction the learnt one starts from (its word count is the "
                                           "learnt tokens' count).")] = "make it look like this",
    search: Annotated[bool, typer.Option("--search", help="Start instead from the best of candidate instructions "
                                                          "(--candidates, or the shapes world's edit grammar), "
                                                          "scored by the same loss.")] = False,
    candidates: Annotated[Optional[Path], typer.Option(help="With --search: a text file of candidate "
                                                            "instructions, one per line.")] = None,
    steps: Annotated[int, typer.Option(help="Optimisation iterations, each at its own timestep (the reference: "
                                            "1000).")] = 1000,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    mse_weight: Annotated[float, typer.Option(help="λ_mse, the denoising loss's weight.")] = 4.0,
    clip_weight: Annotated[float, typer.Option(help="λ_clip, the CLIP direction term's weight (with --clip).")]
    = 0.1,
    clip: Annotated[Optional[Path], typer.Option(help="A local CLIP model (both towers) whose text tower matches the "
                                                      "model's text encoder: turns the direction term on.")] = None,
    guidance: Annotated[float, typer.Option(help="s_T of the guided prediction in the loss.")] = 7.5,
    image_guidance: Annotated[float, typer.Option(help="s_I of the guided prediction in the loss.")] = 1.5,
    seed: Annotated[int, typer.Option(help="Seeds the fixed noise and the order of timesteps.")] = 0,
    device: Device = "auto", dtype: Dtype = "fp32",
) -> None:
    """Visii (Nguyen et al. 2023): learn an instruction from before/after examples, for `instruct --learned`."""
    from ..errors import InvalidParameter, RecomposerError
    from ..requests import readable
    from ..tasks.visii import VisiiRequest

    # 1. Every parameter and file, before the model loads.
    if len(images) < 2 or len(images) % 2:
        raise InvalidParameter("images", "before/after pairs: an even number of images, at least two", len(images))
    for path in images:
        readable("images", path)
    if output.suffix.lower() != ".safetensors":
        raise InvalidParameter("output", "a .safetensors file", str(output))
    if output.exists():
        raise InvalidParameter("output", "a new file (an instruction file is never overwritten)", f"{output} exists")
    if candidates is not None and not search:
        raise RecomposerError("candidates", "only with --search")
    words = ()
    if candidates is not None:
        readable("candidates", candidates)
        words = tuple(line.strip() for line in candidates.read_text(encoding="utf-8").splitlines() if line.strip())
        if not words:
            raise InvalidParameter("candidates", "a file with at least one instruction", str(candidates))
    elif search:
        words = _world_instructions()
    request = VisiiRequest(init=init, candidates=words, steps=steps, lr=lr, mse_weight=mse_weight,
                           clip_weight=clip_weight, guidance=guidance, image_guidance=image_guidance, seed=seed).check()
    if clip is not None:
        readable("clip", clip, folder=True)
    from ..io.images import open_image

    pictures = [open_image(path, "images") for path in images]
    pairs = list(zip(pictures[::2], pictures[1::2]))
    for k, (before, after) in enumerate(pairs):
        if before.size != after.size:
            raise InvalidParameter("images", "before and after images of one size",
                                   f"pair {k + 1}: {before.width}x{before.height} and {after.width}x{after.height}")

    # 2. The model, then the optimisation, then the file.
    from ..decompose.embedding import load_clip
    from ..tasks.visii import learn_instruction, save_learned
    from ..models.loading import open_instruction_model

    backbone = open_instruction_model(model, config, device, dtype)
    clip_model = load_clip(clip) if clip is not None else None
    every = max(1, steps // 10)

    def report(i: int, loss: float) -> None:
        if (i + 1) % every == 0 or i + 1 == steps:
            typer.echo(f"visii: {i + 1}/{steps}, loss {loss:.4g}", err=True)

    learned = learn_instruction(backbone, pairs, request, clip=clip_model, callback=report)
    if not learned.info["clip"]:
        typer.echo("visii: the CLIP direction term is off (no --clip model)", err=True)
    if learned.info["searched"]:
        typer.echo(f"visii: started from {learned.info['init']!r} (the best of {len(words)} candidates)", err=True)
    typer.echo(str(save_learned(learned, output)))
    typer.echo(f"visii: {learned.info['seconds']} s, loss {learned.info['loss_first']:.4g} -> "
               f"{learned.info['loss_last']:.4g}", err=True)


def _world_instructions(count: int = 64) -> tuple[str, ...]:
    """Distinct instructions of the shapes world's edit grammar (training scenes): the default search list."""
    import numpy as np

    from ..world.dataset import make_sample
    from ..world.edits import random_edit

    seen = dict.fromkeys(random_edit(make_sample(s).scene, np.random.default_rng([s, 3])).instruction
                         for s in range(2 * count))
    return tuple(seen)[:count]
