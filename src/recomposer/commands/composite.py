"""`recomposer composite BACKGROUND --object OBJECT.png --mask MASK.png`: cross-domain compositing (tasks/composite.py).

    recomposer composite room.png --object cat.png --mask cat-mask.png -o out/              # immerse an object
    recomposer composite room.png --mask scribbled.png -o out/                      # scribbles painted on room.png
    recomposer composite room.png --object cat.png --mask cat-mask.png --augment --batch 8  # new backgrounds

Options left out take the application's defaults (immersion with --object, scribble without, augment with
--augment). Every parameter and image is checked before the model loads.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import AllowFlat, Batch, Config, Device, Dtype, Model, Scheduler, Seed, Steps, chosen_seed


def composite_command(
    background: Annotated[Path, typer.Argument(help="The scene (it sets the size).")],
    mask: Annotated[Path, typer.Option(help="White = the region (the object's place, or the scribbled part); the "
                                            "background's size.")],
    object_image: Annotated[Optional[Path], typer.Option("--object", help="The object pasted into the region (the "
                                                                          "background's size). Without it, the "
                                                                          "scribbles on BACKGROUND are the region's "
                                                                          "guide.")] = None,
    augment: Annotated[bool, typer.Option("--augment", help="Keep the object, draw new backgrounds (background "
                                                            "augmentation; use --batch).")] = False,
    prompt: Annotated[str, typer.Option(help="What the result shows.")] = "",
    negative: Annotated[str, typer.Option("--negative", "-n", help="Negative prompt.")] = "",
    t_in: Annotated[Optional[float], typer.Option(help="Share of the steps (from the noisiest) guided inside the "
                                                       "mask, 0 to 1.")] = None,
    t_out: Annotated[Optional[float], typer.Option(help="Share of the steps guided outside the mask.")] = None,
    n_in: Annotated[Optional[int], typer.Option(help="Low-pass factor inside the mask, in latent cells (1: every "
                                                     "detail); must divide the latent size.")] = None,
    n_out: Annotated[Optional[int], typer.Option(help="Low-pass factor outside the mask.")] = None,
    space: Annotated[str, typer.Option(help="x0: filter the predicted clean latents and re-noise (the aliasing "
                                            "fix); xt: the update on x_{t-1}.")] = "x0",
    blur: Annotated[Optional[float], typer.Option(help="Mask smoothing in pixels (default: VAE factor x max(N) / "
                                                       "2).")] = None,
    resample_start: Annotated[Optional[float], typer.Option(help="RePaint resampling from this share of the "
                                                                 "steps (immersion: 0.2).")] = None,
    jump: Annotated[int, typer.Option(help="RePaint jump length, in steps.")] = 10,
    resamples: Annotated[int, typer.Option(help="Times each jump is resampled (0: none).")] = 10,
    strength: Annotated[float, typer.Option(help="Share of the schedule run from the noised composite (1: from "
                                                 "noise).")] = 1.0,
    model: Model = None,
    config: Config = None,
    scheduler: Scheduler = "ddim", steps: Steps = 50,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 5.0,
    seed: Seed = None, batch: Batch = 1, allow_flat: AllowFlat = False,
    device: Device = "auto", dtype: Dtype = "fp32",
    output: Annotated[Path, typer.Option("--output", "-o", help="A .png file or a folder.")] = Path("composites"),
) -> None:
    """Cross-domain compositing (Hachnochi et al. 2023): masked ILVR towards the composite, RePaint resampling."""
    from ..errors import RecomposerError
    from ..io.output import check_output
    from ..requests import CompositeRequest, readable

    seed = chosen_seed(seed)
    if augment and object_image is None:
        raise RecomposerError("augment", "needs --object (the object kept while the background changes)")
    application = "augment" if augment else "immersion" if object_image is not None else "scribble"
    request = CompositeRequest(prompt, negative, application, t_in, t_out, n_in, n_out, space, blur, resample_start,
                               jump, resamples, strength, scheduler, steps, guidance, seed, batch,
                               allow_flat).filled()
    for field, path in (("background", background), ("mask", mask), ("object", object_image)):
        if path is not None:
            readable(field, path)
    check_output(output, (background, mask, object_image))
    from ..io.images import open_image
    from ..provenance import save_results
    from ..tasks.composite import composite
    from .p2p import _load

    pictures = {name: open_image(path, name) if path is not None else None
                for name, path in (("background", background), ("mask", mask), ("object", object_image))}
    from ..errors import BadImage

    for name in ("mask", "object"):
        if pictures[name] is not None and pictures[name].size != pictures["background"].size:
            im, bg = pictures[name], pictures["background"]
            raise BadImage(name, f"is {im.width}x{im.height}; it must have the background's size ({bg.width}x"
                                 f"{bg.height}): the background sets the size and nothing else is resized")
    import numpy as np

    marked = np.asarray(pictures["mask"].convert("L")) > 127
    if not marked.any():
        raise BadImage("mask", "marks no pixel (white = the region to composite)")
    if object_image is not None and marked.all():
        raise BadImage("mask", "covers the whole image: nothing of the background would be kept around the object")
    backbone = _load(model, config, device, dtype)
    results = composite(backbone, pictures["background"], pictures["mask"], request, pictures["object"])
    for path in save_results(results, output):
        typer.echo(str(path))
