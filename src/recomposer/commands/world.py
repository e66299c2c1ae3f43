"""`recomposer world ...`: sheets, samples and renders of the shapes world."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import RecomposerError
from ..progress import stage
from ..io.files import save_png, write_folder
from ..io.output import check_new_folder, check_output, output_paths
from .options import Device

world_app = typer.Typer(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
                        help="The shapes world: procedural scenes with exact ground truth.")
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
    check_output(output)
    config = WorldConfig(held_out=held_out).check()
    sheet = contact_sheet([make_sample(seed + i, config, size) for i in range(count)])
    typer.echo(str(save_png(sheet, output_paths(output, ["world-sheet"])[0])))


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

    from PIL import Image

    from .. import validation as v
    from ..conditions.layers import save_layer
    from ..world.dataset import make_sample
    from ..world.scene import WorldConfig

    v.seed("seed", seed)
    check_new_folder(output)
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
        **{f"{kind}.png": (lambda folder, kind=kind, values=values: save_layer(kind, values, folder / f"{kind}.png"))
           for kind, values in (("instances", r.labels), ("depth", r.depth), ("sketch", r.sketch),
                                ("intensity", r.intensity))},  # conditions/layers.py: read back as what they are
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
    check_output(output, (scene,))
    if not scene.is_file():
        raise RecomposerError("scene", f"no such file: {scene}")
    picture = Image.fromarray(render(Scene.from_json(scene.read_text()), size).image)
    typer.echo(str(save_png(picture, output_paths(output, [scene.stem])[0])))


@world_app.command("cache")
def world_cache(
    output: Annotated[Path, typer.Option("--output", "-o", help="The cache folder (a build into it resumes).")],
    parts: Annotated[Optional[Path], typer.Option(help="A folder of bundled-format parts whose VAE (and image "
                                                       "encoder) the cache is for; default: the bundled model.")]
    = None,
    scenes: Annotated[int, typer.Option(help="Training scenes to cache (world seeds 0 .. N - 1).")] = 100_000,
    size: Annotated[int, typer.Option(help="Render side in pixels.")] = 64,
    shard_size: Annotated[int, typer.Option(help="Scenes per shard file.")] = 4096,
    workers: Annotated[int, typer.Option(help="Processes building shards at once.")] = 1,
    device: Device = "cpu",  # where the encoders run; rendering stays on the CPU
) -> None:
    """Encode shapes-world scenes once for training (VAE moments, caption tokens, conditions) into a sharded,
    memory-mapped cache that `recomposer train base|composer --cache` read."""
    from functools import partial

    from .. import validation as v
    from ..training import world_cache as wc

    v.integer("scenes", scenes, 1, 10_000_000)
    v.integer("shard-size", shard_size, 1, 1 << 20)
    v.integer("workers", workers, 1, 64)
    v.multiple_of("size", size, 4, 16, 1024)
    if output.exists() and not output.is_dir():
        raise RecomposerError("output", f"{output} is a file; give a folder")
    from ..models.device import resolve_device

    make = partial(bundled_encoders, parts, str(resolve_device(device)))
    backbone, encoder = make()
    spec = wc.spec_for(backbone, encoder, size, scenes, shard_size)
    with stage("caching shards", total=spec.shards) as advance:
        wc.build(output, spec, make, workers=workers, progress=lambda done, total: advance(done))
    typer.echo(str(output))


def bundled_encoders(parts: Optional[Path], device: str = "cpu"):
    """(backbone, image encoder) of a bundled-format parts folder (or the bundled model): what a cache encodes with."""
    import torch

    from ..models.bundled import WEIGHTS, has_part, load_bundled_backbone, load_bundled_image_encoder

    folder = parts or WEIGHTS
    backbone = load_bundled_backbone(torch.device(device), torch.float32, folder, fresh_unet=("default", "epsilon"))
    encoder = load_bundled_image_encoder(device, folder=folder) if has_part("image_encoder", folder) else None
    return backbone, encoder

