"""Contact sheets: titled pictures in rows, each fitted into a square tile (for people, never read back), and
plain grids of equally sized images. Labels use Pillow's own scalable font (the bitmap default drops spaces)."""

import functools
import math

from PIL import Image, ImageDraw, ImageFont

TITLE = 18  # pixels above each tile for its title


@functools.cache
def label_font(size: int = 13):
    """Pillow's bundled scalable font at ``size`` pixels (the same on every machine; no font file needed)."""
    return ImageFont.load_default(size)


def titled_row(pictures: list[tuple[str, Image.Image]], tile: int = 256, nearest: bool = False) -> Image.Image:
    """One row: each picture fitted into a tile × tile cell under its title. ``nearest``: no smoothing when
    enlarging (small generated images stay crisp)."""
    row = Image.new("RGB", (tile * len(pictures), tile + TITLE), "white")
    draw = ImageDraw.Draw(row)
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    for i, (name, picture) in enumerate(pictures):
        picture = picture.convert("RGB")
        scale = min(tile / picture.width, tile / picture.height)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        row.paste(picture.resize(size, resample), (i * tile, TITLE))
        draw.text((i * tile + 4, 2), name, fill="black", font=_fitting_font(draw, name, tile - 8))
    return row


def _fitting_font(draw, text: str, width: int):
    """The label font at the largest size (13 px down to 8) at which ``text`` fits ``width`` pixels."""
    for size in range(13, 8, -1):
        font = label_font(size)
        if draw.textlength(text, font=font) <= width:
            return font
    return label_font(8)


def stacked(rows: list[tuple[str, Image.Image]], label_width: int = 170) -> Image.Image:
    """Rows one under another, each with its label on the left."""
    width = label_width + max(row.width for _, row in rows)
    sheet = Image.new("RGB", (width, sum(row.height for _, row in rows)), "white")
    draw, y = ImageDraw.Draw(sheet), 0
    for label, row in rows:
        sheet.paste(row, (label_width, y))
        for k, line in enumerate(label.split("\n")):
            draw.text((6, y + TITLE + 4 + 15 * k), line, fill="black", font=label_font())
        y += row.height
    return sheet


def image_grid(images: list, columns: int | None = None):
    """Tile equally sized PIL images into one grid image, row by row (columns: ceil(sqrt(n)) by default)."""
    from ..errors import InvalidParameter

    if not images:
        raise InvalidParameter("images", "at least one image", images)
    columns = columns or math.ceil(math.sqrt(len(images)))
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, math.ceil(len(images) / columns) * h))
    for i, image in enumerate(images):
        if image.size != (w, h):
            raise InvalidParameter(f"images[{i}]", f"the size of images[0], {w}x{h}", "{}x{}".format(*image.size))
        grid.paste(image.convert("RGB"), ((i % columns) * w, (i // columns) * h))
    return grid
