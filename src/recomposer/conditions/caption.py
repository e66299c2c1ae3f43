"""Caption: the text prompt. Its null is the empty string, as in classifier-free guidance training."""

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..errors import InvalidParameter
from .base import Condition


class Prompts(NamedTuple):
    """Encoded prompts: what a caption becomes for the model (``Backbone.encode_prompts``, ``Caption.prompts``)."""

    tokens: torch.Tensor  # (B, T, D) token states for cross-attention
    mask: torch.Tensor | None  # (B, T) 1 = attend, 0 = padding; None: attend to every token
    sentence: torch.Tensor  # (B, D) one embedding per prompt


@dataclass(frozen=True)
class Caption(Condition):
    """A caption (or a negative prompt when it sits in a guidance plan's base set)."""

    kind = "caption"
    text: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise InvalidParameter("caption", "a string", self.text)

    def meta(self) -> dict:
        return {"text": self.text}

    @classmethod
    def from_saved(cls, meta: dict, arrays: dict) -> "Caption":
        return cls(meta.get("text"))

    def picture(self):
        from .pictures import text_card

        return text_card(self.text or "(empty caption)")

    def prompts(self, backbone):
        """What the model attends to: the backbone's encoding of the text (models/backbone.py ``Prompts``)."""
        return backbone.encode_prompts([self.text])
