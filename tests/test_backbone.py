"""The Backbone: any transformers text encoder, dtypes and devices, loading round trips."""

import string

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from recomposer.errors import InvalidParameter
from recomposer.models.backbone import Backbone
from recomposer.models.device import resolve_device, resolve_dtype
from recomposer.models.loading import load_diffusers_dir
from recomposer.models.tiny import save_diffusers_dir, tiny_sd
from recomposer.tasks.generate import GenerateRequest, generate

CPU = torch.device("cpu")


def bert_backbone(max_tokens=16):
    """The tiny SD UNet/VAE with a BERT-style encoder (as the bundled MiniLM model will have)."""
    base = tiny_sd(seed=3)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, "red", "circle", "blue"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=4, intermediate_size=37), add_pooling_layer=False).eval()
    return Backbone(vae=base.vae, unet=base.unet, text_encoder=encoder, tokenizer=tokenizer,
                    scheduler_config=base.scheduler_config, text_attention_mask=True, max_text_tokens=max_tokens)


def test_bert_style_text_encoder_uses_the_padding_mask():
    short, long = bert_backbone(8), bert_backbone(16)
    a, b = short.encode_text(["red circle"]), long.encode_text(["red circle"])
    assert a.shape == (1, 8, 32) and b.shape == (1, 16, 32)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-5)  # [CLS] red circle [SEP]: padding is not attended
    assert len(generate(long, GenerateRequest("red circle", steps=2, seed=0))) == 1


def test_bert_backbone_saves_and_loads_with_the_mask_rule(tmp_path):
    backbone = bert_backbone()
    loaded = load_diffusers_dir(save_diffusers_dir(backbone, tmp_path / "m"), CPU, torch.float32)
    assert loaded.text_attention_mask is True
    assert loaded.identity() == backbone.identity()


def test_clip_backbone_round_trips_through_a_directory(tiny, tiny_dir):
    loaded = load_diffusers_dir(tiny_dir, CPU, torch.float32)
    assert loaded.identity() == tiny.identity() and loaded.text_attention_mask is False
    assert loaded.source.kind == "diffusers-dir" and loaded.vae_factor == 2 and loaded.native_size == 32
    request = GenerateRequest("x", steps=3, seed=2)
    assert torch.equal(generate(loaded, request)[0].pixels, generate(tiny, request)[0].pixels)


def test_bf16_on_cpu_generates_finite_images(tiny_dir):
    backbone = load_diffusers_dir(tiny_dir, CPU, torch.bfloat16)
    assert backbone.dtype == torch.bfloat16
    (out,) = generate(backbone, GenerateRequest("x", steps=3, seed=0))
    assert torch.isfinite(out.pixels).all() and out.provenance["model"]["dtype"] == "bf16"


@pytest.mark.parametrize("device,dtype,field", [("cuda", "fp32", "device"), ("tpu", "fp32", "device"),
                                                ("mps", "fp32", "device"), ("cpu", "fp16", "dtype"),
                                                ("cpu", "int8", "dtype")])
def test_unavailable_devices_and_dtypes_are_clear_errors(device, dtype, field):
    if device == "cuda" and torch.cuda.is_available() or device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has that device")
    with pytest.raises(InvalidParameter, match=f"^{field}"):
        resolve_dtype(dtype, resolve_device(device) if field == "dtype" else resolve_device(device))


def test_identity_changes_with_any_weight(tiny_dir):
    a = load_diffusers_dir(tiny_dir, CPU, torch.float32)
    before = a.identity()
    with torch.no_grad():
        next(a.vae.parameters()).view(-1)[0] += 1e-3
    a._identity.clear()
    changed = a.identity()
    assert changed != before
    a.to(CPU, torch.float32)  # forgets the identity; the remembered hash is still this one, not the stale one
    assert a.identity() == changed
    import copy
    from dataclasses import replace

    other = replace(a, unet=copy.deepcopy(a.unet))  # a copy shares the remembered identities, keyed by its modules
    with torch.no_grad():
        next(other.unet.parameters()).view(-1)[0] += 1e-3
    assert other.identity() not in (before, changed) and a.identity() == changed
    with torch.no_grad():
        next(a.text_encoder.parameters()).view(-1)[0] += 1e-3
    a._identity.clear()
    assert a.identity() not in (before, changed)
