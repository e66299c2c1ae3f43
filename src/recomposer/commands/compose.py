"""Composer's tasks on the command line (tasks/composer.py): compose, variations, interpolate, reconstruct,
edit, colourise, recolour, style.

Conditions come from images or from saved condition files, each named by its kind:

    recomposer compose --sketch-from a.png --palette-from b.png --caption "..." -o out/

``--KIND-from PATH`` and every image a task reads conditions from follow one rule (conditions/sources.py): PATH
is an image (decomposed), a folder holding a saved KIND.json (``recomposer decompose``) or a world sample's
KIND.png layer (``recomposer world sample``), that KIND.json, or such a layer PNG itself.

Sizes: a task generates at the model's native size (``compose`` and ``edit``: ``--width/--height``); every input,
image or saved condition, is fitted to it by one resize mode, a centre crop to the aspect and then a resize
(conditions/fitting.py), and a size off the model's native one is said once. Everything is read and checked
before the model loads; results are PNGs with their provenance, written all together at the end.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InvalidParameter
from . import control
from .options import AllowFlat, Batch, Device, Scheduler, Seed, Steps, chosen_seed, model_option

FROM_KINDS = ("image_embedding", "palette", "sketch", "instances", "depth", "intensity")

Model = model_option("Diffusers model directory (default: the bundled model with its own adapter).")
Adapter = Annotated[Optional[str], typer.Option("--adapter", help="Composer adapter file for --model.")]
Encoder = Annotated[Optional[str], typer.Option("--image-encoder", help="Local CLIP vision model directory (the "
                                                                        "adapter's); default: the bundled one.")]
Guidance = Annotated[float, typer.Option(help="Composer guidance w (1: none).")]
Rescale = Annotated[float, typer.Option("--guidance-rescale", help="Guidance rescale φ, 0 to 1 (Lin et al. 2024: "
                                                                   "0.7; default 0: none).")]
Start = Annotated[float, typer.Option("--guidance-start", help="Share of the steps before guidance starts (c1 "
                                                               "alone before; default 0).")]
End = Annotated[float, typer.Option("--guidance-end", help="Share of the steps after which guidance stops (c1 alone "
                                                           "after; default 1).")]
Caption = Annotated[Optional[str], typer.Option(help="The caption condition.")]
Output = Annotated[Path, typer.Option("--output", "-o", help="A folder for the images.")]
Kinds = Annotated[str, typer.Option(help="Comma-separated condition kinds.")]
Width = Annotated[Optional[int], typer.Option(help="Image width in pixels (default: the model's native size); "
                                                    "inputs are fitted to it.")]
Height = Annotated[Optional[int], typer.Option(help="Image height in pixels (default: the model's native size).")]


def _request(scheduler, steps, guidance: tuple[float, float, float, float], seed, batch,
             base: str | None = None, weights: list[str] | None = None, allow_flat: bool = False):
    """The ComposeRequest of a command's options; ``guidance``: (w, rescale φ, start, end)."""
    from ..requests import ComposeRequest, Weight

    seed = chosen_seed(seed)
    parsed = []
    for text in weights or ():
        parts = text.split(":")
        try:
            kind, numbers = parts[0], [float(x) for x in parts[1:]]
        except ValueError:
            numbers = []
        if len(numbers) not in (1, 3):
            raise InvalidParameter("weight", "KIND:SCALE or KIND:SCALE:START:END", text)
        parsed.append(Weight(kind, *numbers))
    w, rescale, start, end = guidance
    return ComposeRequest(scheduler=scheduler, steps=steps, guidance=w, guidance_rescale=rescale, guidance_start=start,
                          guidance_end=end, seed=seed, batch=batch, base=_split("base", base) if base else (),
                          weights=tuple(parsed), allow_flat=allow_flat).check()


def _split(field: str, text: str) -> tuple[str, ...]:
    from ..requests import GLOBAL_KINDS, LOCAL_KINDS

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    if not kinds:
        raise InvalidParameter(field, "comma-separated kinds from " + ", ".join(GLOBAL_KINDS + LOCAL_KINDS), text)
    for kind in kinds:
        if kind not in GLOBAL_KINDS + LOCAL_KINDS:
            raise InvalidParameter(field, "kinds from " + ", ".join(GLOBAL_KINDS + LOCAL_KINDS), kind)
    return kinds


def _source(field: str, kinds: str | tuple[str, ...], path: Path):
    """What PATH gives for ``kinds``: a PIL image to decompose, or the saved conditions (conditions/sources.py)."""
    from ..conditions.sources import read_source

    return read_source(path, (kinds,) if isinstance(kinds, str) else tuple(kinds), field)


def _size(width: int | None, height: int | None, composer) -> tuple[int, int]:
    """The generation size: the model's native square unless --width/--height say otherwise."""
    from .. import validation as v

    b = composer.backbone
    return (v.multiple_of("width", width or b.native_size, b.vae_factor),
            v.multiple_of("height", height or b.native_size, b.vae_factor))


def _model(model, adapter, image_encoder, device):
    from ..models.device import resolve_device
    from ..tasks.composer import load_composer

    torch_device = resolve_device(device)
    return load_composer(model, adapter, image_encoder, torch_device)


def _write(results, output: Path, extra: dict | None = None) -> list[Path]:
    """The images (with provenance) by the output policy (io/output.py), and any extra pictures beside them."""
    from ..io.files import save_png
    from ..provenance import save_results

    paths = save_results(results, output, grid=extra is None)
    base = paths[0].parent
    for name, picture in (extra or {}).items():
        stem = paths[0].stem
        paths.append(save_png(picture, base / f"{stem}-{name}"))
    return paths


def _guard(arguments: dict) -> None:
    """The output policy, checked before anything loads: ``arguments`` are a command's (its locals()); every path
    among them but the output is an input the output must not overwrite."""
    from ..io.output import check_output

    output = arguments["output"]
    given = [v for k, v in arguments.items() if k != "output" for v in (v if isinstance(v, list) else [v])]
    check_output(output, tuple(v for v in given if isinstance(v, Path)))


def _echo(paths, results=None) -> None:
    for k, path in enumerate(paths):
        note = ""
        if results is not None and k < len(results) and "psnr_outside_mask" in results[k].provenance:
            note = f"  (PSNR outside the mask {results[k].provenance['psnr_outside_mask']:.2f} dB)"
        typer.echo(f"{path}{note}")


def compose_command(
    caption: Caption = None,
    image_embedding_from: Annotated[Optional[Path], typer.Option(help="Semantics/style from this image or file.")]
    = None,
    palette_from: Annotated[Optional[Path], typer.Option(help="Colour histogram from this image or file.")] = None,
    sketch_from: Annotated[Optional[Path], typer.Option(help="Sketch from this image or file.")] = None,
    instances_from: Annotated[Optional[Path], typer.Option(help="Instance layout from this image or file.")] = None,
    depth_from: Annotated[Optional[Path], typer.Option(help="Depth from this image (needs a depth model) or "
                                                            "file.")] = None,
    intensity_from: Annotated[Optional[Path], typer.Option(help="Intensity from this image or file.")] = None,
    depth_map: Annotated[Optional[Path], typer.Option(help="A depth map image (bright = near), fitted to the "
                                                           "generation size.")] = None,
    image: Annotated[Optional[Path], typer.Option(help="Image to keep outside --mask (region editing).")] = None,
    mask: Annotated[Optional[Path], typer.Option(help="Region to generate, white = generate (with --image).")]
    = None,
    base: Annotated[Optional[str], typer.Option(help="Kinds forming Composer's c2 (guidance base); default none.")]
    = None,
    weight: Annotated[Optional[list[str]], typer.Option(help="Per-condition guidance KIND:SCALE[:START:END]; "
                                                             "repeatable.")] = None,
    model: Model = None, adapter: Adapter = None, image_encoder: Encoder = None,
    scheduler: Scheduler = "dpmpp_2m", steps: Steps = 20, guidance: Guidance = 3.0, guidance_rescale: Rescale = 0.0,
    guidance_start: Start = 0.0, guidance_end: End = 1.0, seed: Seed = None,
    batch: Batch = 1, device: Device = "auto", output: Output = Path("composed"), allow_flat: AllowFlat = False,
    width: Width = None, height: Height = None,
    controlnet: control.ControlNets = None, control_image: control.ControlImages = None,
    control_scale: control.ControlScales = None, control_start: control.ControlStarts = None,
    control_end: control.ControlEnds = None, control_mask: control.ControlMasks = None,
    control_mode: control.ControlModes = None, guess_mode: control.GuessMode = False,
) -> None:
    """Generate from any mix of conditions, each from its own image or file, and any ControlNets beside them."""
    from dataclasses import replace

    from ..invocation import resolve

    request = _request(scheduler, steps, (guidance, guidance_rescale, guidance_start, guidance_end),
                       seed, batch, base, weight, allow_flat)
    controls = control.control_requests(controlnet, control_image, control_scale, control_start, control_end,
                                        control_mask, control_mode, guess_mode)
    if controls:
        resolve("controlnet", [c.net for c in controls])  # absolute: a replay from elsewhere finds the nets
        request = replace(request, controls=controls).check()
    _guard(locals())
    from ..conditions import ConditionSet
    from ..io.images import open_image, open_mask
    from ..tasks.composer import recompose
    from ..tasks.controls import load_controls

    given = dict(zip(FROM_KINDS, (image_embedding_from, palette_from, sketch_from, instances_from, depth_from,
                                  intensity_from)))
    sources = {kind: _source(f"{kind.replace('_', '-')}-from", kind, path)
               for kind, path in given.items() if path is not None}
    if "depth" in sources and not isinstance(sources["depth"], ConditionSet):
        from ..decompose.depth import bundled_depth_estimator

        if bundled_depth_estimator() is None:  # compose takes no depth model: say what it does take
            raise InvalidParameter("depth-from", "a saved depth (a decompose folder or depth.json): compose has no "
                                                 "depth model to estimate one from an image; or use --depth-map FILE",
                                   str(depth_from))
    if depth_map is not None:
        if depth_from is not None:
            raise InvalidParameter("depth-map", "or --depth-from, not both", str(depth_map))
        from ..conditions import Depth

        sources["depth"] = ConditionSet.of(Depth.from_image(depth_map, "depth-map"))
    if (image is None) != (mask is None):
        raise InvalidParameter("mask", "given together with --image", "only one of them")
    picture = open_image(image, "image") if image is not None else None
    region = open_mask(mask, picture.size, "mask")[0, 0].numpy() > 0.5 if picture is not None else None
    if caption is None and not sources and picture is None and not controls:
        raise InvalidParameter("conditions", "at least one of --caption, --KIND-from, --image/--mask, --controlnet",
                               "none")

    composer = _model(model, adapter, image_encoder, device)
    size = _size(width, height, composer)
    nets = load_controls(controls, list(control_image or []), list(control_mask or []), size,
                                 composer.backbone)
    results = recompose(composer, sources, caption, request, size, picture, region, controls=nets)
    _echo(_write(results, output), results)


def variations_command(
    image: Annotated[Path, typer.Argument(help="The image to vary (or a decompose folder holding the kept kinds).")],
    keep: Kinds = "image_embedding,palette", caption: Caption = None,
    model: Model = None, adapter: Adapter = None, image_encoder: Encoder = None,
    scheduler: Scheduler = "dpmpp_2m", steps: Steps = 20, guidance: Guidance = 3.0, guidance_rescale: Rescale = 0.0,
    guidance_start: Start = 0.0, guidance_end: End = 1.0, seed: Seed = None,
    batch: Batch = 4, device: Device = "auto", output: Output = Path("variations"), allow_flat: AllowFlat = False,
) -> None:
    """New images that keep some of an image's conditions (default: semantics/style and palette)."""
    request = _request(scheduler, steps, (guidance, guidance_rescale, guidance_start, guidance_end),
                       seed, batch, allow_flat=allow_flat)
    _guard(locals())
    from ..tasks.composer import variations

    kinds = _split("keep", keep)
    picture = _source("image", kinds, image)
    results = variations(_model(model, adapter, image_encoder, device), picture, kinds, request, caption)
    _echo(_write(results, output))


def reconstruct_command(
    image: Annotated[Path, typer.Argument(help="The image to rebuild.")],
    kinds: Kinds = "palette,sketch,instances,intensity", caption: Caption = None,
    model: Model = None, adapter: Adapter = None, image_encoder: Encoder = None,
    scheduler: Scheduler = "dpmpp_2m", steps: Steps = 20, guidance: Guidance = 3.0, guidance_rescale: Rescale = 0.0,
    guidance_start: Start = 0.0, guidance_end: End = 1.0, seed: Seed = None,
    batch: Batch = 1, device: Device = "auto", output: Output = Path("reconstructed"), allow_flat: AllowFlat = False,
) -> None:
    """An image generated again from a subset of its own conditions."""
    request = _request(scheduler, steps, (guidance, guidance_rescale, guidance_start, guidance_end),
                       seed, batch, allow_flat=allow_flat)
    _guard(locals())
    from ..tasks.composer import reconstruct

    chosen = _split("kinds", kinds)
    picture = _source("image", chosen, image)
    results = reconstruct(_model(model, adapter, image_encoder, device), picture, chosen, request, caption)
    _echo(_write(results, output))


def interpolate_command(
    first: Annotated[Path, typer.Argument(help="The first image.")],
    last: Annotated[Path, typer.Argument(help="The last image.")],
    frames: Annotated[int, typer.Option(help="Frames, both ends included.")] = 8,
    kinds: Kinds = "image_embedding,palette", caption: Caption = None,
    sketch_from: Annotated[Optional[Path], typer.Option(help="A sketch shared by every frame (image or "
                                                             "file).")] = None,
    model: Model = None, adapter: Adapter = None, image_encoder: Encoder = None,
    scheduler: Scheduler = "dpmpp_2m", steps: Steps = 20, guidance: Guidance = 3.0, guidance_rescale: Rescale = 0.0,
    guidance_start: Start = 0.0, guidance_end: End = 1.0, seed: Seed = None,
    device: Device = "auto", output: Output = Path("interpolation"),
    fps: Annotated[int, typer.Option(help="Frames per second of the GIF.")] = 8, allow_flat: AllowFlat = False,
) -> None:
    """Frames between two images' embeddings and/or palettes: PNGs, a strip and an animated GIF."""
    from .. import validation as v

    request = _request(scheduler, steps, (guidance, guidance_rescale, guidance_start, guidance_end),
                       seed, 1, allow_flat=allow_flat)
    chosen = _split("kinds", kinds)
    _guard(locals())
    v.integer("frames", frames, 2, 256)
    v.integer("fps", fps, 1, 60)
    from ..conditions import Caption as CaptionCondition
    from ..conditions import ConditionSet
    from ..tasks.composer import interpolate

    a, b = _source("first", chosen, first), _source("last", chosen, last)
    shared = _source("sketch-from", "sketch", sketch_from) if sketch_from is not None else None
    composer = _model(model, adapter, image_encoder, device)
    fixed = [CaptionCondition(caption)] if caption is not None else []
    if shared is not None:
        fixed += list(composer.decompose(shared, ("sketch",)).values())
    results = interpolate(composer, a, b, frames, chosen, request, ConditionSet(tuple(fixed)))
    images = [r.image for r in results]
    paths = _write(results, output, {"strip.png": strip(images)})
    gif = paths[0].with_name(f"{paths[0].stem}-interpolation.gif")
    from ..io.files import atomic_write

    atomic_write(gif, lambda f: f.write(gif_bytes(images, fps)))
    _echo(paths + [gif])


def edit_command(
    image: Annotated[Path, typer.Argument(help="The image to edit (fitted to the generation size, as its mask).")],
    mask: Annotated[Path, typer.Option(help="Region to change, white = change; the image's size.")],
    caption: Caption = None,
    palette_from: Annotated[Optional[Path], typer.Option(help="Colours for the region from this image or file.")]
    = None,
    image_embedding_from: Annotated[Optional[Path], typer.Option(help="Semantics/style from this image or file.")]
    = None,
    model: Model = None, adapter: Adapter = None, image_encoder: Encoder = None,
    scheduler: Scheduler = "dpmpp_2m", steps: Steps = 20, guidance: Guidance = 3.0, guidance_rescale: Rescale = 0.0,
    guidance_start: Start = 0.0, guidance_end: End = 1.0, seed: Seed = None,
    batch: Batch = 1, device: Device = "auto", output: Output = Path("edited"), allow_flat: AllowFlat = False,
    width: Width = None, height: Height = None,
) -> None:
    """Change only the masked region (inpainting with conditions); pixels outside stay exactly as they were."""
    compose_command(caption=caption, image_embedding_from=image_embedding_from, palette_from=palette_from,
                    sketch_from=None, instances_from=None, depth_from=None, intensity_from=None, depth_map=None,
                    image=image,
                    mask=mask, base=None, weight=None, model=model, adapter=adapter, image_encoder=image_encoder,
                    scheduler=scheduler, steps=steps, guidance=guidance, guidance_rescale=guidance_rescale,
                    guidance_start=guidance_start, guidance_end=guidance_end, seed=seed, batch=batch, device=device,
                    output=output, allow_flat=allow_flat, width=width, height=height)


def colourise_command(
    image: Annotated[Path, typer.Argument(help="A greyscale (or any) image: its intensity is kept.")],
    palette_from: Annotated[Optional[Path], typer.Option(help="Colours from this image or file.")] = None,
    caption: Caption = None,
    model: Model = None, adapter: Adapter = None, image_encoder: Encoder = None,
    scheduler: Scheduler = "dpmpp_2m", steps: Steps = 20, guidance: Guidance = 3.0, guidance_rescale: Rescale = 0.0,
    guidance_start: Start = 0.0, guidance_end: End = 1.0, seed: Seed = None,
    batch: Batch = 1, device: Device = "auto", output: Output = Path("colourised"), allow_flat: AllowFlat = False,
) -> None:
    """Colourisation: the image's intensity, plus a palette and/or a caption."""
    request = _request(scheduler, steps, (guidance, guidance_rescale, guidance_start, guidance_end),
                       seed, batch, allow_flat=allow_flat)
    _guard(locals())
    from ..tasks.composer import colourise

    grey = _source("image", "intensity", image)
    reference = _source("palette-from", "palette", palette_from) if palette_from is not None else None
    results = colourise(_model(model, adapter, image_encoder, device), grey, reference, caption, request)
    _echo(_write(results, output))


def recolour_command(
    image: Annotated[Path, typer.Argument(help="The image whose layout is kept.")],
    palette_from: Annotated[Path, typer.Option(help="The new colours come from this image or file.")],
    keep: Kinds = "sketch,instances", caption: Caption = None,
    model: Model = None, adapter: Adapter = None, image_encoder: Encoder = None,
    scheduler: Scheduler = "dpmpp_2m", steps: Steps = 20, guidance: Guidance = 3.0, guidance_rescale: Rescale = 0.0,
    guidance_start: Start = 0.0, guidance_end: End = 1.0, seed: Seed = None,
    batch: Batch = 1, device: Device = "auto", output: Output = Path("recoloured"), allow_flat: AllowFlat = False,
) -> None:
    """Palette recolouring: the image's layout in another image's colours."""
    request = _request(scheduler, steps, (guidance, guidance_rescale, guidance_start, guidance_end),
                       seed, batch, allow_flat=allow_flat)
    _guard(locals())
    from ..tasks.composer import recolour

    kinds = _split("keep", keep)
    picture, reference = _source("image", kinds, image), _source("palette-from", "palette", palette_from)
    results = recolour(_model(model, adapter, image_encoder, device), picture, reference, kinds, request, caption)
    _echo(_write(results, output))


def style_command(
    content: Annotated[Path, typer.Argument(help="The image whose structure is kept.")],
    style: Annotated[Path, typer.Option(help="The image whose semantics/style and palette are taken.")],
    structure: Kinds = "sketch", caption: Caption = None,
    model: Model = None, adapter: Adapter = None, image_encoder: Encoder = None,
    scheduler: Scheduler = "dpmpp_2m", steps: Steps = 20, guidance: Guidance = 3.0, guidance_rescale: Rescale = 0.0,
    guidance_start: Start = 0.0, guidance_end: End = 1.0, seed: Seed = None,
    batch: Batch = 1, device: Device = "auto", output: Output = Path("styled"), allow_flat: AllowFlat = False,
) -> None:
    """Style transfer through the image embedding: content's structure, style's embedding and palette."""
    request = _request(scheduler, steps, (guidance, guidance_rescale, guidance_start, guidance_end),
                       seed, batch, allow_flat=allow_flat)
    _guard(locals())
    from ..tasks.composer import style_transfer

    kinds = _split("structure", structure)
    a, b = _source("content", kinds, content), _source("style", ("image_embedding", "palette"), style)
    results = style_transfer(_model(model, adapter, image_encoder, device), a, b, kinds, request, caption)
    _echo(_write(results, output))


def strip(images):
    """Images side by side, left to right."""
    from ..training import image_grid

    return image_grid(images, columns=len(images))


def gif_bytes(images, fps: int) -> bytes:
    """An endlessly looping animated GIF of the frames."""
    import io

    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                   loop=0)
    return buffer.getvalue()


COMMANDS = {"compose": compose_command, "variations": variations_command, "reconstruct": reconstruct_command,
            "interpolate": interpolate_command, "edit": edit_command, "colourise": colourise_command,
            "recolour": recolour_command, "style": style_command}
