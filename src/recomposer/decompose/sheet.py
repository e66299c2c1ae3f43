"""A contact sheet of a decomposition: the input beside the picture of every condition."""

from PIL import Image, ImageDraw

from ..conditions import ConditionSet


def decomposition_sheet(image: Image.Image, conditions: ConditionSet, tile: int = 256) -> Image.Image:
    """One row: the input, then each condition's picture, each fitted into a tile x tile cell and titled."""
    pictures = [("input", image)] + [(kind, c.picture()) for kind, c in conditions.items()]
    sheet = Image.new("RGB", (tile * len(pictures), tile + 18), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, picture) in enumerate(pictures):
        picture = picture.convert("RGB")
        scale = min(tile / picture.width, tile / picture.height)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        sheet.paste(picture.resize(size, Image.Resampling.LANCZOS), (i * tile, 18))
        draw.text((i * tile + 4, 3), name, fill="black")
    return sheet
