"""Caption: the user's text, or, optionally, what a local captioning model says about the image.

``Captioner`` is the interface; ``TransformersCaptioner`` runs an image-to-text model saved in a
local directory. Without a captioner the caption is simply absent (the decomposition leaves the
``caption`` kind out of its ConditionSet): a caption is never invented.
"""

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from ..conditions.caption import Caption
from ..errors import InvalidParameter, ModelError
from ..models.local import check_model_dir, load_image_processor, load_pretrained, load_tokenizer, read_model_type
from .depth import check_rgb

# Captioning models that need no prompt: the image alone starts generation.
# (Chat-style vision-language models need a prompt template per family; not supported here.)
SUPPORTED = {"blip": "BLIP (BlipForConditionalGeneration)", "git": "GIT (GitForCausalLM)",
             "vision-encoder-decoder": "VisionEncoderDecoderModel (e.g. ViT + GPT-2)"}
MAX_NEW_TOKENS = 128


@runtime_checkable
class Captioner(Protocol):
    def __call__(self, image: Image.Image) -> Caption:
        ...


def load_captioner(path: str | Path | None = None, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> Captioner | None:
    """``--captioner DIR`` if given; None otherwise (then the caption is absent, never invented)."""
    return None if path is None else TransformersCaptioner(path, device, dtype)


class TransformersCaptioner:
    """A local image-to-text model (``AutoModelForImageTextToText``) with its image processor (PIL
    backend) and tokenizer, decoded greedily (no sampling, one beam) for at most ``max_new_tokens``
    tokens. Deterministic: the same image gives the same caption."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 max_new_tokens: int = 40):
        from transformers import AutoModelForImageTextToText

        field = "caption-model"
        if type(max_new_tokens) is not int or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise InvalidParameter("max_new_tokens", f"an integer in 1..{MAX_NEW_TOKENS}", max_new_tokens)
        self.max_new_tokens = max_new_tokens
        self.root = check_model_dir(path, field)
        self.model_type = read_model_type(self.root, field)
        if self.model_type not in SUPPORTED:
            raise ModelError(field, f"{self.root} is a {self.model_type!r} model; supported captioners: "
                                    + ", ".join(SUPPORTED.values()))
        self.processor = load_image_processor(self.root, field)
        self.tokenizer = load_tokenizer(self.root, field)
        self.model = load_pretrained(AutoModelForImageTextToText, self.root, field, device, dtype)

    def describe(self) -> dict:
        return {"backend": "transformers", "path": str(self.root), "model_type": self.model_type,
                "max_new_tokens": self.max_new_tokens}

    @torch.inference_mode()
    def __call__(self, image: Image.Image) -> Caption:
        check_rgb(image)
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"]  # (1, 3, S, S)
        pixels = pixels.to(self.model.device, self.model.dtype)
        ids = self.model.generate(pixel_values=pixels, do_sample=False, num_beams=1,
                                  max_new_tokens=self.max_new_tokens)  # (1, T)
        text = self.tokenizer.batch_decode(ids, skip_special_tokens=True)[0]
        return Caption(" ".join(text.split()))
