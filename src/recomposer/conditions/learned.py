"""A learned caption: token states found by optimisation rather than written (Visii's instruction c_T, Nguyen et al.
2023; tasks/visii.py), in the caption's slot. The model attends to the states as it attends to an encoded caption,
followed by the encoding of ``text`` when there is one (Visii's "learnt instruction + extra words")."""

from dataclasses import dataclass

import torch

from ..errors import InvalidParameter
from .caption import Caption


@dataclass(frozen=True, eq=False)
class LearnedCaption(Caption):
    """Token states (1, T, D) and their attention mask (1, T) or None (attend to all), then ``text``'s encoding."""

    states: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    source: str = ""  # the sha256 of the file the states came from (provenance)

    def __post_init__(self) -> None:
        super().__post_init__()
        s = self.states
        if not isinstance(s, torch.Tensor) or s.ndim != 3 or s.shape[0] != 1 or not s.is_floating_point():
            raise InvalidParameter("learned", "token states of shape (1, T, D)", getattr(s, "shape", s))
        if self.mask is not None and tuple(self.mask.shape) != tuple(s.shape[:2]):
            raise InvalidParameter("learned.mask", f"a mask of shape {tuple(s.shape[:2])}", tuple(self.mask.shape))

    def meta(self) -> dict:
        return {"text": self.text, "learned": self.source}

    @classmethod
    def from_saved(cls, meta: dict, arrays: dict) -> "LearnedCaption":
        raise InvalidParameter("caption", "a written caption (a learned one is kept in its own file)", meta)

    def picture(self):
        from .pictures import text_card

        return text_card(f"(learned instruction){' + ' + self.text if self.text else ''}")

    def prompts(self, backbone):
        """The states (and mask) on the backbone's device, then the text's encoding, joined along T."""
        from .caption import Prompts

        like = {"device": backbone.device, "dtype": backbone.dtype}
        states = self.states.to(**like)
        if states.shape[-1] != backbone.text_encoder.config.hidden_size:
            raise InvalidParameter("learned", f"token states {backbone.text_encoder.config.hidden_size} wide (this "
                                              "model's text encoder)", states.shape[-1])
        mask = None if self.mask is None else self.mask.to(**like)
        if not self.text:
            return Prompts(states, mask, None)
        extra = backbone.encode_prompts([self.text])
        if mask is None and extra.mask is None:
            joined = None
        else:
            joined = torch.cat([torch.ones(states.shape[:2], **like) if mask is None else mask,
                                torch.ones(extra.tokens.shape[:2], **like) if extra.mask is None else extra.mask], 1)
        return Prompts(torch.cat([states, extra.tokens.to(**like)], 1), joined, None)
