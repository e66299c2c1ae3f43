"""Typed condition values and sets of them."""

from .base import EMPTY, Condition, ConditionSet
from .caption import Caption
from .masked_image import MaskedImage

__all__ = ["EMPTY", "Caption", "Condition", "ConditionSet", "MaskedImage"]
