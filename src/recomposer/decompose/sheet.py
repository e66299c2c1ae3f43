"""A contact sheet of a decomposition: the input beside the picture of every condition."""

from PIL import Image

from ..conditions import ConditionSet
from ..io.sheets import titled_row


def decomposition_sheet(image: Image.Image, conditions: ConditionSet, tile: int = 256) -> Image.Image:
    """One row: the input, then each condition's picture, each fitted into a tile x tile cell and titled."""
    return titled_row([("input", image)] + [(kind, c.picture()) for kind, c in conditions.items()], tile)
