"""Contact sheets: titled pictures in rows, each fitted into a square tile (for people, never read back)."""

from PIL import Image, ImageDraw

TITLE = 18  # pixels above each tile for its title


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
        draw.text((i * tile + 4, 3), name, fill="black")
    return row


def stacked(rows: list[tuple[str, Image.Image]], label_width: int = 170) -> Image.Image:
    """Rows one under another, each with its label on the left."""
    width = label_width + max(row.width for _, row in rows)
    sheet = Image.new("RGB", (width, sum(row.height for _, row in rows)), "white")
    draw, y = ImageDraw.Draw(sheet), 0
    for label, row in rows:
        sheet.paste(row, (label_width, y))
        for k, line in enumerate(label.split("\n")):
            draw.text((6, y + TITLE + 4 + 14 * k), line, fill="black")
        y += row.height
    return sheet
