"""`recomposer world ...`: sheets, samples and renders of the shapes world."""

from pathlib import Path
from typing import Annotated

import typer

from ..errors import RecomposerError
from ..io.files import save_png, write_folder

world_app = typer.Typer(no_args_is_help=True, help="The shapes world: procedural scenes with exact ground truth.")
HeldOut = Annotated[str, typer.Option("--held-out", help="exclude (training), only (held-out combinations), allow.")]


@world_app.command("sheet")
def world_sheet(
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("world-sheet.png"),
    count: Annotated[int, typer.Option(help="Scenes (rows).")] = 6,
    size: Annotated[int, typer.Option(help="Render size in pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="First scene's seed.")] = 0,
    held_out: HeldOut = "exclude",
) -> None:
    """A contact sheet: each scene beside its instances, depth, sketch, intensity and blobs."""
    from .. import validation as v
    from ..world.dataset import make_sample
    from ..world.scene import WorldConfig
    from ..world.sheet import contact_sheet

    v.integer("count", count, 1, 64)
    v.integer("size", size, 16, 1024)
    v.seed("seed", seed)
    config = WorldConfig(held_out=held_out).check()
    sheet = contact_sheet([make_sample(seed + i, config, size) for i in range(count)])
    save_png(sheet, output)
    typer.echo(str(output))


@world_app.command("sample")
def world_sample(
    seed: Annotated[int, typer.Argument(help="The scene's seed.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="A new folder for the files.")] = Path("world-sample"),
    size: Annotated[int, typer.Option(help="Render size in pixels.")] = 256,
    held_out: HeldOut = "exclude",
) -> None:
    """Write one scene with every ground-truth layer: scene.json, image, instances, depth, sketch, intensity,
    caption, blobs."""
    import json

    import numpy as np
    from PIL import Image

    from .. import validation as v
    from ..world.dataset import make_sample
    from ..world.scene import WorldConfig

    v.seed("seed", seed)
    v.integer("size", size, 16, 4096)
    sample = make_sample(seed, WorldConfig(held_out=held_out).check(), size)
    r = sample.rendered
    files = {
        "scene.json": sample.scene.to_json(),
        "caption.txt": sample.caption + "\n",
        "objects.json": json.dumps([{"shape": o.shape, "colour": o.colour, "style": o.style, "description": d,
                                     "blob": e.to_json()} for o, d, e in
                                    zip(sample.scene.objects, sample.descriptions, sample.blobs)], indent=2),
        "image.png": Image.fromarray(r.image),
        "instances.png": Image.fromarray(r.labels.astype(np.uint8), "L"),  # pixel value = object index + 1
        "depth.png": Image.fromarray(np.rint(r.depth * 65535).astype(np.uint16)),  # 16-bit, 0 nearest
        "sketch.png": Image.fromarray(r.sketch.astype(np.uint8) * 255, "L"),
        "intensity.png": Image.fromarray(np.rint(r.intensity * 255).astype(np.uint8), "L"),
    }
    write_folder(output, files)
    typer.echo(str(output))


@world_app.command("render")
def world_render(
    scene: Annotated[Path, typer.Argument(help="A scene.json (from `world sample`, or written by hand).")],
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("scene.png"),
    size: Annotated[int, typer.Option(help="Render size in pixels.")] = 256,
) -> None:
    """Render a scene description at any size."""
    from PIL import Image

    from .. import validation as v
    from ..world.render import render
    from ..world.scene import Scene

    v.integer("size", size, 16, 4096)
    if not scene.is_file():
        raise RecomposerError("scene", f"no such file: {scene}")
    save_png(Image.fromarray(render(Scene.from_json(scene.read_text()), size).image), output)
    typer.echo(str(output))
