"""Write a backbone as an original Stable Diffusion (LDM) single-file checkpoint, for the tests.

The inverse of what diffusers' single-file loader does (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint`` and ``convert_ldm_clip_checkpoint`` in
diffusers/loaders/single_file_utils.py): diffusers state-dict keys are renamed to the layout of
the CompVis ``ldm`` code that SD 1.x ``.ckpt``/``.safetensors`` files use,

- UNet: ``model.diffusion_model.{input_blocks,middle_block,output_blocks,time_embed,out}.*``
- VAE: ``first_stage_model.{encoder,decoder}.{down,mid,up}.*`` (+ ``quant_conv``, ``post_quant_conv``)
- CLIP text encoder: ``cond_stage_model.transformer.text_model.*``

The mapping is written out here by hand (not borrowed from diffusers), so a test that loads the
result through diffusers checks both directions against each other. Every key must be mapped
exactly once; anything unexpected raises instead of being dropped.
"""

from pathlib import Path

import torch
from safetensors.torch import save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {  # diffusers ResnetBlock2D -> ldm ResBlock
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_TOP = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_out": "encoder.conv_out",
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_out": "decoder.conv_out",
    "decoder.conv_norm_out": "decoder.norm_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _split(parts: list[str], table: dict[str, str]) -> str:
    """Map the module path ``parts[:-1]`` through ``table`` and keep the parameter name ``parts[-1]``."""
    module, param = ".".join(parts[:-1]), parts[-1]
    if module not in table:
        raise KeyError(module)
    return f"{table[module]}.{param}"


def unet_to_ldm(state_dict: dict, config) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel keys -> ldm ``openaimodel.UNetModel`` keys (no prefix)."""
    per_block = config["layers_per_block"] + 1  # resnets per down block in ldm's numbering (+ downsampler)
    has_attn = {int(k.split(".")[1]) for k in state_dict if k.startswith("up_blocks.") and ".attentions." in k}
    out = {}
    for key, tensor in state_dict.items():
        p = key.split(".")
        try:
            if p[0] == "down_blocks":
                b, kind = int(p[1]), p[2]
                if kind == "resnets":
                    new = f"input_blocks.{1 + b * per_block + int(p[3])}.0." + _split(p[4:], _UNET_RESNET)
                elif kind == "attentions":  # Transformer2DModel keys are the same in both layouts
                    new = f"input_blocks.{1 + b * per_block + int(p[3])}.1." + ".".join(p[4:])
                elif kind == "downsamplers" and p[4] == "conv":
                    new = f"input_blocks.{1 + b * per_block + per_block - 1}.0.op.{p[5]}"
                else:
                    raise KeyError(key)
            elif p[0] == "mid_block":
                if p[1] == "resnets":  # resnet 0, attention, resnet 1
                    new = f"middle_block.{2 * int(p[2])}." + _split(p[3:], _UNET_RESNET)
                elif p[1] == "attentions":
                    new = f"middle_block.{2 * int(p[2]) + 1}." + ".".join(p[3:])
                else:
                    raise KeyError(key)
            elif p[0] == "up_blocks":
                b, kind = int(p[1]), p[2]
                if kind == "resnets":
                    new = f"output_blocks.{b * per_block + int(p[3])}.0." + _split(p[4:], _UNET_RESNET)
                elif kind == "attentions":
                    new = f"output_blocks.{b * per_block + int(p[3])}.1." + ".".join(p[4:])
                elif kind == "upsamplers" and p[4] == "conv":
                    slot = 2 if b in has_attn else 1  # after the resnet, and the attention if there is one
                    new = f"output_blocks.{b * per_block + per_block - 1}.{slot}.conv.{p[5]}"
                else:
                    raise KeyError(key)
            else:
                new = _split(p, _UNET_TOP)
        except (KeyError, IndexError, ValueError):
            raise KeyError(f"no ldm name for UNet weight {key!r}") from None
        out[new] = tensor
    return out


def vae_to_ldm(state_dict: dict, config) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> ldm ``AutoencoderKL`` keys (no prefix)."""
    n_up = len(config["up_block_types"])
    out = {}
    for key, tensor in state_dict.items():
        p = key.split(".")
        try:
            if p[0] in ("encoder", "decoder") and p[1] in ("down_blocks", "up_blocks"):
                i = int(p[2])
                level = i if p[1] == "down_blocks" else n_up - 1 - i  # ldm numbers decoder levels bottom-up
                name = "down" if p[1] == "down_blocks" else "up"
                if p[3] == "resnets":
                    new = f"{p[0]}.{name}.{level}.block.{p[4]}." + _split(p[5:], _VAE_RESNET)
                elif p[3] in ("downsamplers", "upsamplers") and p[5] == "conv":
                    new = f"{p[0]}.{name}.{level}.{'downsample' if name == 'down' else 'upsample'}.conv.{p[6]}"
                else:
                    raise KeyError(key)
            elif p[0] in ("encoder", "decoder") and p[1] == "mid_block":
                if p[2] == "resnets":
                    new = f"{p[0]}.mid.block_{int(p[3]) + 1}." + _split(p[4:], _VAE_RESNET)
                elif p[2] == "attentions" and p[3] == "0":
                    new = f"{p[0]}.mid.attn_1." + _split(p[4:], _VAE_ATTENTION)
                    if tensor.ndim == 2:  # ldm's AttnBlock uses 1x1 convolutions where diffusers uses Linear
                        tensor = tensor[:, :, None, None]
                else:
                    raise KeyError(key)
            else:
                new = _split(p, _VAE_TOP)
        except (KeyError, IndexError, ValueError):
            raise KeyError(f"no ldm name for VAE weight {key!r}") from None
        out[new] = tensor
    return out


def clip_to_ldm(state_dict: dict) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel keys -> ``transformer.text_model.*`` (what FrozenCLIPEmbedder holds).

    transformers >= 5.6 flattened CLIPTextModel (no ``text_model.`` level); older versions have it.
    """
    out = {}
    for key, tensor in state_dict.items():
        out["transformer." + (key if key.startswith("text_model.") else "text_model." + key)] = tensor
    return out


def to_ldm_state_dict(backbone, position_ids: bool = True) -> dict[str, torch.Tensor]:
    """The backbone's UNet, VAE and CLIP text encoder as one original-layout SD state dict.

    ``position_ids``: also write ``...embeddings.position_ids`` as SD 1.x checkpoints carry it
    (a buffer the model does not keep in its state dict any more; loaders must tolerate it).
    """
    parts = (
        (UNET_PREFIX, unet_to_ldm(backbone.unet.state_dict(), backbone.unet.config)),
        (VAE_PREFIX, vae_to_ldm(backbone.vae.state_dict(), backbone.vae.config)),
        ("cond_stage_model.", clip_to_ldm(backbone.text_encoder.state_dict())),
    )
    ldm = {prefix + k: v.detach().to("cpu").clone().contiguous() for prefix, d in parts for k, v in d.items()}
    expected = sum(len(d) for _, d in parts)
    if len(ldm) != expected:
        raise AssertionError(f"{expected - len(ldm)} weights collided when renaming to the ldm layout")
    if position_ids:
        n = backbone.text_encoder.config.max_position_embeddings
        ldm[CLIP_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(n, dtype=torch.int64)[None]
    return ldm


def write_ldm_checkpoint(backbone, path: str | Path, position_ids: bool = True) -> Path:
    """Save ``to_ldm_state_dict(backbone)`` as one .safetensors file; return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(to_ldm_state_dict(backbone, position_ids=position_ids), str(path), metadata={"format": "pt"})
    return path
