"""Blobs (BlobGEN): one tilted ellipse per object plus a free-text description of its appearance.

Ellipses are in pixels of an image of ``size`` (width, height), with ellipse.py's conventions;
``scaled_to`` moves them to another image size. Descriptions may be absent (None) for a blob.
"""

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidParameter
from ..ellipse import Ellipse
from .base import Condition
from ..io.sheets import label_font


@dataclass(frozen=True)
class Blobs(Condition):
    kind = "blobs"
    ellipses: tuple[Ellipse, ...]
    descriptions: tuple[str | None, ...]
    size: tuple[int, int]  # (width, height) of the image the ellipses are measured on

    def __post_init__(self) -> None:
        if not all(isinstance(e, Ellipse) for e in self.ellipses):
            raise InvalidParameter("blobs.ellipses", "Ellipse values", [type(e).__name__ for e in self.ellipses])
        if len(self.descriptions) != len(self.ellipses):
            raise InvalidParameter("blobs.descriptions", f"one per ellipse ({len(self.ellipses)})",
                                   len(self.descriptions))
        if not all(d is None or isinstance(d, str) for d in self.descriptions):
            raise InvalidParameter("blobs.descriptions", "strings or null", self.descriptions)
        if len(self.size) != 2 or not all(isinstance(s, int) and s > 0 for s in self.size):
            raise InvalidParameter("blobs.size", "(width, height) in pixels", self.size)

    def scaled_to(self, width: int, height: int) -> "Blobs":
        sx, sy = width / self.size[0], height / self.size[1]
        return Blobs(tuple(e.scaled(sx, sy) for e in self.ellipses), self.descriptions, (width, height))

    def meta(self) -> dict:
        return {"size": list(self.size), "blobs": [{"ellipse": e.to_json(), "description": d}
                                                   for e, d in zip(self.ellipses, self.descriptions)]}

    @classmethod
    def from_saved(cls, meta: dict, arrays: dict) -> "Blobs":
        blobs = meta["blobs"]
        if not isinstance(blobs, list):
            raise InvalidParameter("blobs.blobs", "a list", type(blobs).__name__)
        return cls(tuple(Ellipse.from_json(b["ellipse"]) for b in blobs),
                   tuple(b.get("description") for b in blobs), tuple(meta["size"]))

    def picture(self):
        """Each ellipse's outline in its own colour on white, numbered."""
        from PIL import Image, ImageDraw

        from ..ellipse import ellipse_mask
        from .instances import label_colours

        w, h = self.size
        canvas = np.full((h, w, 3), 255, np.uint8)
        colours = label_colours(len(self.ellipses))
        for k, e in enumerate(self.ellipses):
            m = ellipse_mask(e, h, w)
            edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
            canvas[edge] = colours[k + 1]
        image = Image.fromarray(canvas)
        draw = ImageDraw.Draw(image)
        for k, e in enumerate(self.ellipses):
            draw.text((e.cx, e.cy), str(k), fill=tuple(int(c) for c in colours[k + 1]), font=label_font())
        return image
