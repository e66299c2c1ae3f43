"""The contact sheet: scenes with each ground-truth layer side by side, so a person can see the world."""

import textwrap

import numpy as np
from PIL import Image, ImageDraw

from .dataset import WorldSample
from ..conditions.instances import label_colours
from ..ellipse import ellipse_mask
from ..io.sheets import label_font

COLUMNS = ("image", "instances", "depth", "sketch", "intensity", "blobs")


def layers(sample: WorldSample) -> list[np.ndarray]:
    r = sample.rendered
    gray = lambda a: np.repeat((np.clip(a, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)  # noqa: E731
    instances = label_colours(len(sample.scene.objects))[r.labels]
    overlay = r.image.copy()
    size = r.image.shape[0]
    for k, e in enumerate(sample.blobs):
        m = ellipse_mask(e, size, size)
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        overlay[edge] = label_colours(len(sample.blobs))[k + 1]
    return [r.image, instances, gray(r.depth), gray(r.sketch.astype(np.float32)), gray(r.intensity), overlay]


def contact_sheet(samples: list[WorldSample], text_height: int = 54) -> Image.Image:
    """One row per sample: the six layers, then its caption underneath."""
    size = samples[0].rendered.image.shape[0]
    width = size * len(COLUMNS)
    sheet = Image.new("RGB", (width, 16 + len(samples) * (size + text_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, name in enumerate(COLUMNS):
        draw.text((j * size + 4, 2), name, fill="black", font=label_font())
    for i, sample in enumerate(samples):
        top = 16 + i * (size + text_height)
        sheet.paste(Image.fromarray(np.concatenate(layers(sample), axis=1)), (0, top))
        lines = textwrap.wrap(f"#{sample.seed}: {sample.caption}", width=max(20, width // 6))
        draw.multiline_text((4, top + size + 2), "\n".join(lines[:4]), fill="black", spacing=1)
    return sheet
