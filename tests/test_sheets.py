"""Pictures that read (issue 15, item 9): labels keep their spaces in every sheet recomposer draws."""

import numpy as np
from PIL import Image, ImageDraw

from recomposer.io.sheets import TITLE, label_font, titled_row


def _inked_width(text: str) -> int:
    image = Image.new("L", (400, 30), 0)
    ImageDraw.Draw(image).text((2, 2), text, fill=255, font=label_font())
    columns = np.nonzero(np.asarray(image).max(0))[0]
    return int(columns.max() - columns.min() + 1)


def test_the_label_font_keeps_spaces():
    # Pillow's bitmap default font draws "a cup of coffee" as "acupofcoffee"; the label font must not
    assert _inked_width("a cup of coffee") > _inked_width("acupofcoffee") + 3 * 2


def test_a_titled_row_draws_its_titles_with_spaces():
    spaced = titled_row([("a cup of coffee", Image.new("RGB", (8, 8)))], tile=200)
    joined = titled_row([("acupofcoffee", Image.new("RGB", (8, 8)))], tile=200)
    assert not np.array_equal(np.asarray(spaced), np.asarray(joined))
    ink = lambda im: np.nonzero(np.asarray(im.convert("L"))[:TITLE].min(0) < 128)[0]  # noqa: E731 (title band)
    assert np.ptp(ink(spaced)) > np.ptp(ink(joined))
