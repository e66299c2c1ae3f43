"""The backbone: one object holding a latent diffusion model's VAE, UNet, text encoder and scheduler.

Every method in recomposer runs on a Backbone, whether it is the bundled shapes-world model or a
Stable Diffusion checkpoint; it carries a stack of adapters (models/adapter.py: Composer, ControlNet,
inpainting channels, ...), each declaring what it hears and where it writes. How a backbone was loaded
is kept in ``source`` so that a result's provenance can load it again.
"""

import weakref
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from ..conditions.caption import Prompts
from .device import dtype_name


@dataclass(frozen=True)
class ModelSource:
    """Where a backbone came from: enough to load it again."""

    kind: Literal["diffusers-dir", "single-file", "bundled", "memory"]
    path: str | None = None  # the model directory or the .safetensors checkpoint
    config: str | None = None  # for single files: the diffusers-format directory holding the configs

    def describe(self) -> dict:
        return {"kind": self.kind, "path": self.path, "config": self.config}


@dataclass(eq=False)
class Backbone:
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: torch.nn.Module  # any transformers encoder whose first output is (B, T, D) token states
    tokenizer: object  # the matching transformers tokenizer
    scheduler_config: dict  # a diffusers scheduler config; samplers are built from it by name
    source: ModelSource = field(default_factory=lambda: ModelSource("memory"))
    text_attention_mask: bool = False  # pass the padding mask to the text encoder (BERT-style yes, SD's CLIP no)
    max_text_tokens: int | None = None  # prompt length in tokens; None: the tokenizer's model_max_length
    mask_padding: bool = False  # the UNet ignores padding tokens (BERT-style encoders; SD's CLIP attends all)
    adapters: tuple = ()  # the adapter stack (models/adapter.py), in the order their doors are filled
    _identity: dict = field(default_factory=dict, repr=False, compare=False)  # shared with with_adapters' copies

    def __post_init__(self) -> None:
        from .adapter import check_stack

        check_stack(self.adapters, self.unet.config.in_channels, self.latent_channels)

    def with_adapters(self, *adapters) -> "Backbone":
        """This backbone (the same modules) with ``adapters`` on top of its stack: each is attached (its doors
        installed, its sizes checked), moved to the backbone's device and dtype, and the stack's declared
        input channels are checked against the UNet's."""
        for adapter in adapters:
            if hasattr(adapter, "attach"):
                adapter.attach(self)
            if isinstance(adapter, torch.nn.Module):
                adapter.to(self.device, self.dtype).eval()
        return replace(self, adapters=self.adapters + tuple(adapters))

    def adapter(self, cls):
        """The first adapter of class ``cls`` in the stack, or None."""
        return next((a for a in self.adapters if isinstance(a, cls)), None)

    # --- facts about the model -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device  # diffusers' unet.device walks every module: ~4 ms a call

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def vae_factor(self) -> int:
        """Pixels per latent cell along each side (8 for Stable Diffusion)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def prompt_length(self) -> int:
        """T of ``encode_prompts``' tokens (B, T, D): every prompt is padded to it."""
        return self.max_text_tokens or self.tokenizer.model_max_length

    @property
    def native_size(self) -> int:
        """The image side the UNet was configured for, in pixels."""
        sample = self.unet.config.sample_size
        return (sample if isinstance(sample, int) else sample[0]) * self.vae_factor

    # --- the three encoders ------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, texts: list[str]) -> Prompts:
        """Prompts -> token states, the UNet's padding mask and sentence embeddings, from one encoder forward.

        tokens (B, T, D): padded to the fixed prompt length T, as SD pipelines do. With ``mask_padding``
        the encoder runs on the real tokens only (padded to the longest prompt of the call, padding
        masked out of its attention), the padding slots hold zeros and ``mask`` (B, T) tells the UNet to
        ignore them: real-token states are the same numbers as a full-length forward gives.
        sentence (B, D): CLIP text encoders: the pooled output (the final-norm state at the end-of-text
        token), as unCLIP and Composer use it; other encoders (BERT-style, e.g. MiniLM): the mean of the
        token states over the real tokens, as sentence-transformers pools them.
        """
        self._warn_if_cut(texts)
        if self.mask_padding:
            return self._encode_real_tokens(texts)
        length = self.prompt_length
        tokens = self.tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        out = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(
            self.device) if self.text_attention_mask else None)
        if getattr(self.text_encoder.config, "model_type", "").startswith("clip"):
            sentence = out.pooler_output  # (B, D)
        else:
            sentence = _mean_over(out[0], tokens.attention_mask.to(self.device))
        return Prompts(out[0].to(self.dtype), None, sentence.to(self.dtype))

    def _warn_if_cut(self, texts: list[str]) -> None:
        """A prompt longer than the text encoder's window is cut to it: say so once per prompt, with its length."""
        import warnings

        from ..errors import Notice

        length = self.prompt_length
        for text in set(texts):
            n = len(self.tokenizer(text, truncation=False).input_ids)
            if n > length:
                warnings.warn(Notice(f"prompt: {n} tokens; the text encoder reads the first {length}, the rest is cut "
                                     f"({text[:40]!r}...)"), stacklevel=3)

    def _encode_real_tokens(self, texts: list[str]) -> Prompts:
        """``encode_prompts`` for ``mask_padding`` backbones: each distinct text once, texts of similar length
        together (sorted, in groups of 8), each group padded only to its own longest text. Padding is masked
        in the encoder's attention, so every real token's state is what one full-length forward gives."""
        length = self.prompt_length
        unique = sorted(set(texts))
        lengths = [len(ids) for ids in self.tokenizer(unique, truncation=True, max_length=length).input_ids]
        distinct = [t for _, t in sorted(zip(lengths, unique))]  # one tokenizer call to sort by length
        tokens = torch.zeros(len(distinct), length, self.text_encoder.config.hidden_size, device=self.device)
        mask = torch.zeros(len(distinct), length, device=self.device)
        sentence = torch.zeros(len(distinct), self.text_encoder.config.hidden_size, device=self.device)
        for start in range(0, len(distinct), 8):
            group = self.tokenizer(distinct[start:start + 8], padding="longest", max_length=length, truncation=True,
                                   return_tensors="pt")
            real = group.attention_mask.to(self.device)  # (G, T') 1 on real tokens
            states = self.text_encoder(group.input_ids.to(self.device), attention_mask=real)[0]  # (G, T', D)
            rows, width = slice(start, start + len(real)), real.shape[1]
            tokens[rows, :width] = states.float() * real[..., None]
            mask[rows, :width] = real.float()
            sentence[rows] = _mean_over(states, real).float()
        index = torch.tensor([distinct.index(t) for t in texts], device=self.device)
        return Prompts(tokens[index].to(self.dtype), mask[index].to(self.dtype), sentence[index].to(self.dtype))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> token states (B, T, D) (``encode_prompts``; mind its mask when ``mask_padding``)."""
        return self.encode_prompts(texts).tokens

    def encode_sentence(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> one sentence embedding each (B, D) (``encode_prompts``)."""
        return self.encode_prompts(texts).sentence

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> "torch.distributions.Distribution":
        """Image (1, 3, H, W) in [-1, 1] -> the VAE posterior (diffusers' DiagonalGaussianDistribution)."""
        return self.vae.encode(image.to(self.device, self.vae.dtype)).latent_dist

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> images (B, 3, H, W) in about [-1, 1]."""
        return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]

    # --- identity and placement --------------------------------------------------------------
    def identity(self) -> str:
        """sha256 over every weight of the UNet, VAE and text encoder (names, dtypes, shapes, bytes)."""
        modules = {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}
        key = tuple(map(id, modules.values()))  # one dict for this backbone and its copies (replace() shares it)
        known = self._identity.get(key)
        if known is None or any(ref() is not m for ref, m in zip(known[0], modules.values())):  # (ids get reused)
            from .local import weights_sha256

            known = self._identity[key] = (tuple(map(weakref.ref, modules.values())), weights_sha256(modules))
        return known[1]

    def describe(self) -> dict:
        return {**self.source.describe(), "sha256": self.identity(), "dtype": dtype_name(self.dtype),
                "device": str(self.device), "prediction_type": self.prediction_type}

    def to(self, device: torch.device, dtype: torch.dtype) -> "Backbone":
        for module in (self.unet, self.vae, self.text_encoder):
            if module.dtype != dtype:
                module.to(dtype=dtype)
            module.to(device=device)
            module.eval()
        for adapter in self.adapters:
            if isinstance(adapter, torch.nn.Module):
                adapter.to(device, dtype).eval()
        self._identity.clear()
        return self


def _mean_over(states: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean of token states (B, T, D) over the real tokens (mask (B, T)) -> (B, D)."""
    weights = real[..., None].to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1)
