"""The denoiser contract: ``prediction = denoiser(x_t, t, inputs)``, one call per batched UNet forward.

A denoiser first ``encode``s a ConditionSet into ``ModelInputs``: the tensors that enter the model
at declared doors (cross-attention context, extra input channels). Encoding happens once per
sampling run; the per-step call only stacks and runs. The prediction is in the model's own
parameterisation (epsilon or v): every guidance rule is an affine combination whose weights
sum to one, and such combinations commute with the affine map between epsilon and v at fixed
x_t, so guiding in either space gives the same step.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from .conditions import Caption, ConditionSet, MaskedImage
from .errors import InvalidParameter
from .models.backbone import Backbone


@dataclass(frozen=True)
class ModelInputs:
    """What one or more condition sets become at the model's doors, batch-first."""

    context: torch.Tensor  # (B, T, D) cross-attention tokens
    concat: torch.Tensor | None = None  # (B, C, h, w) channels appended to x_t after input scaling

    @staticmethod
    def cat(parts: Sequence["ModelInputs"]) -> "ModelInputs":
        """Stack several inputs along the batch for one forward."""
        concats = [p.concat for p in parts]
        if any(c is None for c in concats) and not all(c is None for c in concats):
            raise ValueError("cannot batch inputs with and without extra channels")
        return ModelInputs(context=torch.cat([p.context for p in parts]),
                           concat=None if concats[0] is None else torch.cat(concats))

    def repeat(self, n: int) -> "ModelInputs":
        """The same inputs for n samples."""
        return replace(self, context=self.context.repeat_interleave(n, 0),
                       concat=None if self.concat is None else self.concat.repeat_interleave(n, 0))


class Denoiser(Protocol):
    prediction_type: str

    def encode(self, conds: ConditionSet) -> ModelInputs: ...

    def __call__(self, x: torch.Tensor, t: torch.Tensor, inputs: ModelInputs) -> torch.Tensor: ...


class BackboneDenoiser:
    """A plain backbone: it hears the caption (cross-attention) and, for 9-channel inpainting
    UNets, the masked image (mask + masked-image latents as extra input channels).

    Null caption = the empty string. On a 4-channel UNet the masked image is not heard by the
    model; the loop's inpainting blend (sampling.inpaint_blend) uses it instead.
    """

    consumes = frozenset({"caption", "masked_image"})

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self.prediction_type = backbone.prediction_type

    def encode(self, conds: ConditionSet) -> ModelInputs:
        unknown = set(conds) - self.consumes
        if unknown:
            allowed = "kinds this model has adapters for: " + ", ".join(sorted(self.consumes))
            raise InvalidParameter("conditions", allowed, sorted(unknown))
        caption = conds.get("caption", Caption(""))
        context = self.backbone.encode_text([caption.text])  # (1, T, D)
        concat = None
        if self.backbone.is_inpainting:
            if "masked_image" not in conds:
                raise InvalidParameter("mask", "given: this is an inpainting model (9 input channels)", None)
            concat = self._inpainting_channels(conds["masked_image"])
        return ModelInputs(context=context, concat=concat)

    def _inpainting_channels(self, masked: MaskedImage) -> torch.Tensor:
        """mask (1) + masked-image latents (4) at latent size; latents are the posterior mean (diffusers samples it)."""
        b = self.backbone
        latents = b.encode_image(masked.masked).mode() * b.vae.config.scaling_factor  # (1, 4, h, w)
        mask = torch.nn.functional.interpolate(masked.mask, size=latents.shape[-2:])  # (1, 1, h, w), nearest
        return torch.cat([mask.to(latents), latents], dim=1).to(b.dtype)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, inputs: ModelInputs) -> torch.Tensor:
        if inputs.concat is not None:
            x = torch.cat([x, inputs.concat], dim=1)
        return self.backbone.unet(x, t, encoder_hidden_states=inputs.context, return_dict=False)[0]
