"""Small drawing helpers shared by the conditions' pictures."""

import textwrap

import numpy as np
from PIL import Image, ImageDraw

CARD = 256  # side of a text card, pixels


def gray(values: np.ndarray) -> Image.Image:
    """(H, W) floats in [0, 1] -> an RGB picture."""
    a = np.clip(np.rint(np.asarray(values, np.float32) * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(a, "L").convert("RGB")


def text_card(text: str, size: int = CARD) -> Image.Image:
    card = Image.new("RGB", (size, size), "white")
    lines = textwrap.wrap(text, width=max(12, size // 7))
    ImageDraw.Draw(card).multiline_text((6, 6), "\n".join(lines[: size // 12]), fill="black", spacing=2)
    return card
