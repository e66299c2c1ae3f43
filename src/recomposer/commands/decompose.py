"""`recomposer decompose IMAGE -o DIR`: every representation of an image, as files and pictures."""

import json
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from ..errors import InvalidParameter
from .options import Device

Folder = Annotated[Optional[Path], typer.Option(help="A local model directory (transformers format).")]


def decompose_command(
    image: Annotated[Path, typer.Argument(help="The image to decompose.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="A new folder for the conditions.")]
    = Path("decomposition"),
    only: Annotated[Optional[str], typer.Option(help="Comma-separated kinds (default: all available).")] = None,
    caption: Annotated[Optional[str], typer.Option(help="The caption (text condition).")] = None,
    caption_model: Folder = None,
    image_encoder: Folder = None,
    depth_model: Folder = None,
    segmentation_model: Folder = None,
    depth: Annotated[Optional[Path], typer.Option(help="Your own depth map image (bright = near).")] = None,
    sketch: Annotated[Optional[Path], typer.Option(help="Your own sketch (lines on plain paper).")] = None,
    palette_from: Annotated[Optional[Path], typer.Option(help="Take the palette from this image instead.")] = None,
    mask: Annotated[Optional[Path], typer.Option(help="Mask image, white = region to generate.")] = None,
    box: Annotated[Optional[str], typer.Option(help="Region to generate: x0,y0,x1,y1 in pixels.")] = None,
    ellipse: Annotated[Optional[str], typer.Option(help="Region to generate: cx,cy,a,b,theta (pixels, "
                                                        "radians).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Draw the intensity weights from the predefined set "
                                                     "with this seed (default: luminance).")] = None,
    device: Device = "cpu",
) -> None:
    """Decompose an image into caption, image embedding, palette, sketch, instances, depth, intensity,
    masked image and blobs; write each (JSON + safetensors + PNG) and a contact sheet."""
    from .. import validation as v
    from ..conditions import Depth, Palette
    from ..conditions.files import save_condition
    from ..conditions.sketch import Sketch
    from ..decompose.captioner import TransformersCaptioner
    from ..decompose.decomposer import KINDS, Backends, decompose
    from ..decompose.depth import TransformersDepth, bundled_depth_estimator
    from ..decompose.embedding import ClipImageEncoder
    from ..decompose.instances import ClassicalSegmenter
    from ..decompose.segmentation import TransformersSegmenter
    from ..decompose.masking import box_mask
    from ..decompose.sheet import decomposition_sheet
    from ..io.files import write_folder
    from ..io.images import open_image, open_mask
    from ..ellipse import Ellipse, ellipse_mask

    # 1. Everything the user gave is read and checked before any model loads.
    from ..io.output import check_new_folder

    check_new_folder(output, (image, depth, sketch, palette_from, mask))
    kinds = None if only is None else tuple(k.strip() for k in only.split(",") if k.strip())
    if kinds is not None:
        for k in kinds:
            v.choice("only", k, KINDS)
    if seed is not None:
        v.seed("seed", seed)
    picture = open_image(image, "image")
    if sum(x is not None for x in (mask, box, ellipse)) > 1:
        raise InvalidParameter("mask", "one of --mask, --box, --ellipse", "several")
    region = None
    if mask is not None:
        region = open_mask(mask, picture.size, "mask")[0, 0].numpy() > 0.5
    elif box is not None:
        region = box_mask(picture.width, picture.height, _numbers("box", box, 4))
    elif ellipse is not None:
        cx, cy, a, b, theta = _numbers("ellipse", ellipse, 5)
        region = ellipse_mask(Ellipse.canonical(cx, cy, a, b, theta), picture.height, picture.width)
    given = {}
    if depth is not None:
        given["depth"] = Depth.from_image(depth)
        if given["depth"].values.shape != (picture.height, picture.width):
            raise InvalidParameter("depth", f"a {picture.width}x{picture.height} image like the input",
                                   f"{given['depth'].values.shape[1]}x{given['depth'].values.shape[0]}")
    if sketch is not None:
        given["sketch"] = Sketch.from_image(sketch)
        if given["sketch"].lines.shape != (picture.height, picture.width):
            raise InvalidParameter("sketch", f"a {picture.width}x{picture.height} image like the input",
                                   f"{given['sketch'].lines.shape[1]}x{given['sketch'].lines.shape[0]}")
    if palette_from is not None:
        given["palette"] = Palette.from_image(np.asarray(open_image(palette_from, "palette-from")))

    # 2. Backends, then the decomposition; files given by the user replace what was computed.
    backends = Backends(
        captioner=TransformersCaptioner(caption_model, device) if caption_model is not None else None,
        depth=TransformersDepth(depth_model, device) if depth_model is not None else
        (_Given(given["depth"]) if "depth" in given else bundled_depth_estimator()),
        segmenter=TransformersSegmenter(segmentation_model, device) if segmentation_model is not None else
        ClassicalSegmenter(),
        **({"encoder": ClipImageEncoder(image_encoder, device)} if image_encoder is not None else {}))
    result = decompose(picture, kinds, caption=caption, mask=region, backends=backends,
                       rng=None if seed is None else np.random.default_rng(seed))
    conditions = result.conditions.with_(*[c for k, c in given.items() if k in result.conditions])

    # 3. All files or none.
    summary = {"image": str(image), "size": list(picture.size), "kinds": list(conditions),
               "skipped": result.skipped, "user_files": {k: str(p) for k, p in
                                                         (("depth", depth), ("sketch", sketch),
                                                          ("palette", palette_from)) if p is not None}}
    files = {"input.png": picture, "sheet.png": decomposition_sheet(picture, conditions),
             "decomposition.json": json.dumps(summary, indent=2),
             **{f"{k}-files": (lambda folder, c=c: save_condition(c, folder)) for k, c in conditions.items()}}
    write_folder(output, files)
    for kind, why in result.skipped.items():
        typer.echo(f"note: {kind} skipped: {why}", err=True)
    typer.echo(str(output))


class _Given:
    """A depth 'estimator' that returns the user's own depth map."""

    def __init__(self, depth):
        self.depth = depth

    def __call__(self, image):
        return self.depth


def _numbers(field: str, text: str, count: int) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count or not all(np.isfinite(values)):
        raise InvalidParameter(field, f"{count} comma-separated numbers", text)
    return values

