"""Tiny Stable-Diffusion-shaped components with random weights, built offline in a second.

Same architecture family as SD 1.x (UNet2DConditionModel with cross-attention, AutoencoderKL,
CLIP text encoder and BPE tokenizer), shrunk to diffusers' own test sizes. Used by the tests
(parity with diffusers' pipelines), the benchmarks and ``recomposer demo``. The tokenizer is a
byte-level BPE with no merges: every byte is a token, so any text encodes, and nothing is
downloaded. Outputs of random weights are noise-like pictures; only the machinery is real.
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .backbone import Backbone
from .inpainting import InpaintingChannels
from .instruct import InstructChannels

SCHEDULER_CONFIG = {  # SD 1.x's scheduler settings (scaled-linear betas), as in its scheduler_config.json
    "_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "clip_sample": False, "prediction_type": "epsilon",
}


def byte_symbols() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each of the 256 bytes (printable bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def byte_level_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols, alone and word-final, plus specials."""
    symbols = byte_symbols()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(s, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_sd(seed: int = 0, prediction_type: str = "epsilon", in_channels: int = 4, sample_size: int = 32) -> Backbone:
    """A random tiny SD backbone; the same seed gives the same weights on every machine."""
    tokenizer = byte_level_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=sample_size // 2,
            in_channels=in_channels, out_channels=4, norm_num_groups=32, cross_attention_dim=32,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4))
        vae = AutoencoderKL(
            block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"))
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
            num_hidden_layers=5, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
            layer_norm_eps=1e-5))
    for module in (unet, vae, text_encoder):
        module.eval()
    # SD-inpainting's mask + masked latents (9), InstructPix2Pix's source-image latents (8)
    adapters = {9: (InpaintingChannels(4),), 8: (InstructChannels(4),)}.get(in_channels, ())
    return Backbone(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                    scheduler_config={**SCHEDULER_CONFIG, "prediction_type": prediction_type}, adapters=adapters)


def save_diffusers_dir(backbone: Backbone, path: str | Path) -> Path:
    """Write a backbone as a diffusers-format directory (safetensors weights) that ``--model`` can load."""
    import json

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    backbone.unet.save_pretrained(root / "unet", safe_serialization=True)
    backbone.vae.save_pretrained(root / "vae", safe_serialization=True)
    backbone.text_encoder.save_pretrained(root / "text_encoder", safe_serialization=True)
    backbone.tokenizer.save_pretrained(root / "tokenizer")
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(backbone.scheduler_config, indent=2))
    pipeline = "StableDiffusionInpaintPipeline" if backbone.adapter(InpaintingChannels) else \
        "StableDiffusionInstructPix2PixPipeline" if backbone.adapter(InstructChannels) else "StableDiffusionPipeline"
    index = {"_class_name": pipeline, "_diffusers_version": "0.42.1",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", type(backbone.text_encoder).__name__],
             "tokenizer": ["transformers", type(backbone.tokenizer).__name__],
             "scheduler": ["diffusers", backbone.scheduler_config.get("_class_name", "DDIMScheduler")],
             "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root
