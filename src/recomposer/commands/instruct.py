"""`recomposer instruct IMAGE INSTRUCTION`: InstructPix2Pix (tasks/instruct.py) on the command line.

    recomposer instruct photo.png "make it look like winter" --model ip2p/ -o out/

The defaults are the reference's (Euler ancestral, 100 steps, s_T 7.5, s_I 1.5). The model must be an instruction
model (its model_index.json names StableDiffusionInstructPix2PixPipeline); the image is edited at its own size,
which must be a multiple of the model's VAE factor. Everything is checked before the model loads.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import AllowFlat, Batch, Config, Device, Dtype, Scheduler, Seed, Steps, chosen_seed, model_option


def instruct_command(
    image: Annotated[Path, typer.Argument(help="The image to edit.")],
    instruction: Annotated[Optional[str], typer.Argument(help="What to do to it, e.g. \"make the circle blue\" "
                                                              "(not with --learned: use --with-text).")] = None,
    model: model_option("An InstructPix2Pix model: a diffusers directory, or bundled-format parts with an instruct "
                         "part. Default: the bundled instruction model.") = None,
    config: Config = None,
    guidance: Annotated[float, typer.Option(help="s_T: how far towards the instruction.")] = 7.5,
    image_guidance: Annotated[float, typer.Option(help="s_I: how close to the image (below 1 pushes away from "
                                                       "it, as the formula says).")] = 1.5,
    guidance_rescale: Annotated[float, typer.Option(help="Guidance rescale φ, 0 to 1, towards the spread of the "
                                                         "image-and-instruction prediction (Lin et al. 2024: 0.7; "
                                                         "default 0: none).")] = 0.0,
    scheduler: Scheduler = "euler_a", steps: Steps = 100, seed: Seed = None, batch: Batch = 1,
    allow_flat: AllowFlat = False,
    learned: Annotated[Optional[Path], typer.Option(help="An instruction learnt from example pairs by `recomposer "
                                                         "visii` (on this model) instead of INSTRUCTION.")] = None,
    with_text: Annotated[str, typer.Option(help="With --learned: words that follow the learnt instruction.")] = "",
    device: Device = "auto", dtype: Dtype = "fp32",
    output: Annotated[Path, typer.Option("--output", "-o", help="A .png file or a folder.")] = Path("instructed"),
) -> None:
    """InstructPix2Pix: edit an image by an instruction (Brooks et al. 2023), with dual guidance in one forward."""
    from ..errors import RecomposerError
    from ..io.output import check_output
    from ..requests import InstructRequest, readable

    seed = chosen_seed(seed)
    if learned is not None and instruction is not None:
        raise RecomposerError("instruction", "not with --learned (give extra words with --with-text)")
    if learned is None and with_text:
        raise RecomposerError("with-text", "only with --learned (otherwise it is the INSTRUCTION argument)")
    if learned is None and instruction is None:
        raise RecomposerError("instruction", "an instruction (the second argument), or --learned FILE")
    taught = None
    if learned is not None:
        from ..tasks.visii import load_learned

        readable("learned", learned)
        taught = load_learned(learned)
    request = InstructRequest(instruction if learned is None else with_text, guidance=guidance,
                              image_guidance=image_guidance, guidance_rescale=guidance_rescale, scheduler=scheduler,
                              steps=steps, seed=seed, batch=batch,
                              allow_flat=allow_flat, learned=taught.info["sha256"] if taught else "").check()
    readable("image", image)
    check_output(output, (image,))
    from ..models.loading import open_instruction_model

    backbone = open_instruction_model(model, config, device, dtype)
    if taught is not None:
        from ..tasks.visii import check_learned

        check_learned(taught.info, backbone, str(learned))
    from ..io.images import open_image
    from ..provenance import save_results
    from ..tasks.instruct import instruct

    picture = open_image(image, "image")
    for path in save_results(instruct(backbone, picture, request, learned=taught), output):
        typer.echo(str(path))
