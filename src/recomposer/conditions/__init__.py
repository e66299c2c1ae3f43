"""Typed condition values, sets of them, and their files. One module per kind."""

from .base import EMPTY, Condition, ConditionSet
from .caption import Caption
from .blobs import Blobs
from .depth import Depth
from .image_embedding import ImageEmbedding
from .instances import Instances
from .intensity import Intensity
from .masked_image import MaskedImage
from .palette import Palette
from .sketch import Sketch
from .source_image import SourceImage

# kind -> class, for loading saved conditions (each class names its own kind).
KINDS: dict[str, type[Condition]] = {c.kind: c for c in (Caption, ImageEmbedding, Palette, Sketch, Instances, Depth,
                                                          Intensity, MaskedImage, Blobs, SourceImage)}

__all__ = ["EMPTY", "KINDS", "Blobs", "Caption", "Condition", "ConditionSet", "Depth", "ImageEmbedding",
           "Instances", "Intensity", "MaskedImage", "Palette", "Sketch", "SourceImage"]
