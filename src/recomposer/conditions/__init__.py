"""Typed condition values, sets of them, and their files. One module per kind."""

from .base import EMPTY, Condition, ConditionSet
from .caption import Caption
from .masked_image import MaskedImage

# kind -> class, for loading saved conditions (each class names its own kind).
KINDS: dict[str, type[Condition]] = {c.kind: c for c in (Caption, MaskedImage)}

__all__ = ["EMPTY", "KINDS", "Caption", "Condition", "ConditionSet", "MaskedImage"]
