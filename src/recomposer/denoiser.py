"""The denoiser contract: ``prediction = denoiser(x_t, t, inputs)``, one call per batched UNet forward.

A denoiser first ``encode``s a ConditionSet into ``ModelInputs``: the tensors that enter the model
at declared doors (cross-attention context, extra input channels, additions to the timestep
embedding and to the first conv). Encoding happens once per sampling run; the per-step call only
stacks and runs. The prediction is in the model's own parameterisation (epsilon or v): every
guidance rule is an affine combination whose weights sum to one, and such combinations commute
with the affine map between epsilon and v at fixed x_t, so guiding in either space gives the same step.
"""

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Protocol

import torch

from . import validation as v
from .conditions import Caption, ConditionSet, MaskedImage
from .errors import InvalidParameter, ModelError
from .models.backbone import Backbone, Prompts
from .models.composer import AdapterOutputs, ComposerAdapter, is_attached, local_size


@dataclass(frozen=True)
class ModelInputs:
    """What one or more condition sets become at the model's doors, batch-first.

    Optional doors are None when a denoiser does not use them; inputs batched together must
    agree on which doors they use (a Composer denoiser always fills all of its own).
    """

    context: torch.Tensor  # (B, T, D) cross-attention tokens
    concat: torch.Tensor | None = None  # (B, C, h, w) channels appended to x_t after input scaling
    context_mask: torch.Tensor | None = None  # (B, T) 1 = attend to the token, 0 = ignore it; None: attend to all
    time_addition: torch.Tensor | None = None  # (B, D_time) added to the UNet's timestep embedding
    input_addition: torch.Tensor | None = None  # (B, C_in, h, w) added to the output of the UNet's conv_in

    @staticmethod
    def cat(parts: Sequence["ModelInputs"]) -> "ModelInputs":
        """Stack several inputs along the batch for one forward."""
        columns = {f.name: [getattr(p, f.name) for p in parts] for f in fields(ModelInputs)}
        for name, values in columns.items():
            if any(value is None for value in values) and not all(value is None for value in values):
                raise ValueError(f"cannot batch inputs with and without {name}")
        return ModelInputs(**{name: None if values[0] is None else torch.cat(values)
                              for name, values in columns.items()})

    def repeat(self, n: int) -> "ModelInputs":
        """The same inputs for n samples."""
        return replace(self, **{f.name: getattr(self, f.name).repeat_interleave(n, 0)
                                for f in fields(self) if getattr(self, f.name) is not None})


def forward_unet(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, inputs: ModelInputs) -> torch.Tensor:
    """One UNet forward with every door of ``inputs``: x_t (B, C, h, w) -> the prediction (B, C, h, w).

    The input is [x_t | concat | input_addition] along channels (a Composer-attached conv_in adds
    the last part to its output); ``time_addition`` goes in as ``class_labels`` (Composer's slot).
    A plain denoiser's inputs run unchanged on a UNet with the Composer doors attached.
    """
    parts = [x] + [a for a in (inputs.concat, inputs.input_addition) if a is not None]
    for part in parts[1:]:
        if part.shape[-2:] != x.shape[-2:]:
            raise InvalidParameter("size", f"latents of the size the conditions were encoded for "
                                   f"({part.shape[-1]}x{part.shape[-2]})", f"{x.shape[-1]}x{x.shape[-2]}")
    sample = torch.cat(parts, dim=1) if len(parts) > 1 else x
    time = inputs.time_addition
    if time is None and is_attached(unet):  # diffusers wants class_labels once the slot is set: add nothing
        time = x.new_zeros(x.shape[0], unet.time_embedding.linear_2.out_features)
    return unet(sample, t, encoder_hidden_states=inputs.context, encoder_attention_mask=inputs.context_mask,
                class_labels=time, return_dict=False)[0]


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
        return self._encode(conds)[0]

    def _encode(self, conds: ConditionSet) -> tuple[ModelInputs, Prompts]:
        """The plain doors' inputs, and the caption's encoding (which subclasses use further)."""
        unknown = set(conds) - self.consumes
        if unknown:
            allowed = "kinds this model has adapters for: " + ", ".join(sorted(self.consumes))
            raise InvalidParameter("conditions", allowed, sorted(unknown))
        caption = conds.get("caption", Caption(""))
        prompt = self.backbone.encode_prompts([caption.text])  # tokens (1, T, D), mask (1, T) or None
        concat = None
        if self.backbone.is_inpainting:
            if "masked_image" not in conds:
                raise InvalidParameter("mask", "given: this is an inpainting model (9 input channels)", None)
            concat = inpainting_channels(self.backbone, conds["masked_image"])
        return ModelInputs(context=prompt.tokens, concat=concat, context_mask=prompt.mask), prompt

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, inputs: ModelInputs) -> torch.Tensor:
        return forward_unet(self.backbone.unet, x, t, inputs)


class ComposerDenoiser(BackboneDenoiser):
    """A backbone with a Composer adapter attached (models/composer.py says which kind enters where).

    The caption's word tokens reach cross-attention as in the plain backbone (null: the empty
    string; never masked, as in SD pipelines); its sentence embedding, the other global kinds and
    the local kinds go through the adapter. An absent kind adds nothing, and the empty caption has
    no sentence embedding (it is the caption's null at every door). Local conditions must be of the
    generation ``size`` (width, height in pixels; default the backbone's native square; see
    ``composer.generation_size`` to take it from the conditions). On a 9-channel inpainting
    backbone the masked image also fills the backbone's own inpainting channels.
    """

    consumes = frozenset({"caption", *ComposerAdapter.DOORS})

    def __init__(self, backbone: Backbone, adapter: ComposerAdapter, size: tuple[int, int] | None = None):
        if not is_attached(backbone.unet):
            raise ModelError("adapter", "is not attached to this backbone: call adapter.attach(backbone.unet) first")
        c = adapter.config
        hidden = getattr(backbone.text_encoder.config, "hidden_size", c.sentence_dim)
        if (c.vae_factor, c.sentence_dim) != (backbone.vae_factor, hidden):
            raise ModelError("adapter", f"was made for vae_factor {c.vae_factor} and sentence_dim {c.sentence_dim}, "
                                        f"the backbone has {backbone.vae_factor} and {hidden}")
        width, height = size or (backbone.native_size, backbone.native_size)
        f = backbone.vae_factor
        self.size = (v.multiple_of("width", width, f), v.multiple_of("height", height, f))  # pixels
        super().__init__(backbone)
        self.adapter = adapter

    @torch.no_grad()
    def encode(self, conds: ConditionSet) -> ModelInputs:
        plain, prompt = self._encode(conds)  # kinds checked; caption tokens; inpainting channels
        b, adapter, (width, height) = self.backbone, self.adapter, self.size
        caption = conds.get("caption", Caption(""))
        features = {"caption": prompt.sentence} if caption.text else {}  # (1, D_s)
        for kind in conds:
            if kind in adapter.LOCAL_INPUTS and local_size(conds[kind]) != self.size:
                w, h = local_size(conds[kind])
                raise InvalidParameter(kind, f"{width}x{height} pixels (the generation size)", f"{w}x{h}")
            if kind != "caption":
                features[kind] = adapter.features(conds[kind])  # (1, D) or (1, C, H, W)
        outputs = adapter(features, 1, (height // b.vae_factor, width // b.vae_factor))
        return composer_inputs(plain.context, outputs, plain.concat, plain.context_mask)


def composer_inputs(context: torch.Tensor, outputs: AdapterOutputs, concat: torch.Tensor | None = None,
                    text_mask: torch.Tensor | None = None) -> ModelInputs:
    """Text tokens (B, T, D) and a Composer adapter's additions as ModelInputs, on the context's device and dtype.

    The text tokens are attended as the plain backbone attends them (all of them, padding included,
    unless ``text_mask`` (B, T) masks the padding); the adapter's token slots where their kind is present.
    """
    like = {"device": context.device, "dtype": context.dtype}
    text = torch.ones(context.shape[:2], **like) if text_mask is None else text_mask.to(**like)
    mask = torch.cat([text, outputs.token_mask.to(**like)], dim=1)  # (B, T + K)
    return ModelInputs(context=torch.cat([context, outputs.tokens.to(**like)], dim=1), concat=concat,
                       context_mask=mask, time_addition=outputs.time_addition.to(**like),
                       input_addition=outputs.input_addition.to(**like))


def inpainting_channels(backbone: Backbone, masked: MaskedImage) -> torch.Tensor:
    """mask (1) + masked-image latents (4) at latent size; latents are the posterior mean (diffusers samples it)."""
    b = backbone
    latents = b.encode_image(masked.masked).mode() * b.vae.config.scaling_factor  # (1, 4, h, w)
    mask = torch.nn.functional.interpolate(masked.mask, size=latents.shape[-2:])  # (1, 1, h, w), nearest
    return torch.cat([mask.to(latents), latents], dim=1).to(b.dtype)
