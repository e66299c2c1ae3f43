"""Training the bundled image encoder: CLIP's contrastive objective against frozen caption embeddings.

One step (``EncoderTraining.step``) over a batch of B scenes (renders x_i, captions y_i):
    u_i = f(x_i)                      unit image embeddings (models/image_encoder.py)      (B, 256)
    w_i = normalize(P · s(y_i))       s: all-MiniLM-L6-v2 sentence embedding (frozen), P trained
    L = ½ [CE(τ⁻¹ U Wᵀ, I) + CE(τ⁻¹ W Uᵀ, I)]     symmetric InfoNCE, log τ⁻¹ learned (CLIP, init ln(1/0.07))

Scenes are drawn fresh from the world, so a batch rarely repeats a caption; augmentations are none
(the renders are what the encoder will see; real photos are out of its domain and say so in the docs).
Retrieval accuracy on held-out scenes (``retrieval``) is the figure: the share of images whose own
caption is the nearest of a batch of 100.
"""

import math
from pathlib import Path

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from .. import validation as v
from ..models.image_encoder import DIM, SIZE, WorldImageEncoder
from ..models.minilm import HIDDEN, sentence_embedding
from ..world.dataset import eval_seeds, make_sample
from ..world.scene import WorldConfig


class EncoderTraining(nn.Module):
    def __init__(self, encoder: WorldImageEncoder):
        super().__init__()
        self.encoder = encoder.train()
        self.text_head = nn.Linear(HIDDEN, DIM)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        u = self.encoder(batch["image"])  # (B, D)
        w = F.normalize(self.text_head(batch["sentence"]), dim=1)  # (B, D)
        logits = self.log_scale.clamp(max=math.log(100)).exp() * u @ w.T  # (B, B)
        labels = torch.arange(len(u), device=u.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def encoder_step(model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
    return model(batch, generator)


def caption_pool(text_model, tokenizer, count: int, cache: Path | None = None, chunk: int = 64) -> torch.Tensor:
    """MiniLM sentence embeddings (count, 384) of the captions of world seeds 0 … count − 1, computed once
    (the text encoder costs 5× the image encoder's step) and kept in ``cache`` (safetensors) if given."""
    from ..io.files import atomic_write
    from ..io.weights import load_safetensors

    v.integer("count", count, 2)
    if cache is not None and cache.is_file():
        pool = load_safetensors(cache)["sentence"]
        if pool.shape == (count, HIDDEN):
            return pool
    captions = [make_sample(s, WorldConfig(), SIZE).caption for s in range(count)]
    pool = torch.cat([sentence_embedding(text_model, tokenizer, captions[i:i + chunk])
                      for i in range(0, count, chunk)]).contiguous()
    if cache is not None:
        atomic_write(cache, lambda f: f.write(_safetensors_bytes({"sentence": pool})))
    return pool


def _safetensors_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def caption_batches(pool: torch.Tensor, batch_size: int):
    """``batches(index)``: renders (B, 3, 64, 64) and sentence embeddings (B, 384) of pool scenes.

    Position k of the endless stream is scene ``order_e[k mod N]`` with e = k div N and order_e a
    permutation of the N pool seeds drawn from e alone: every epoch visits every scene once, in its
    own order, and batch ``index`` is a pure function of the index (exact resumption).
    """
    count = len(pool)
    v.integer("batch_size", batch_size, 2, count)

    def batches(index: int) -> dict:
        positions = range(v.integer("index", index, 0) * batch_size, (index + 1) * batch_size)
        seeds = [int(_order(k // count, count)[k % count]) for k in positions]
        return {"image": torch.stack([make_sample(s, WorldConfig(), SIZE).tensors()["image"] for s in seeds]),
                "sentence": pool[seeds]}

    return batches


def _order(epoch: int, count: int):
    return np.random.default_rng([epoch, count, 7]).permutation(count)


@torch.no_grad()
def retrieval(training: EncoderTraining, text_model, tokenizer, count: int = 100) -> dict:
    """Held-out image -> caption and caption -> image top-1 accuracy among ``count`` evaluation scenes."""
    training.eval()
    samples = [make_sample(s, WorldConfig(), SIZE) for s in eval_seeds(count)]
    p = next(training.parameters())
    u = training.encoder(torch.stack([s.tensors()["image"] for s in samples]).to(p))
    s = sentence_embedding(text_model, tokenizer, [x.caption for x in samples]).to(p)
    w = F.normalize(training.text_head(s), dim=1)
    similarity = u @ w.T
    target = torch.arange(count, device=p.device)
    return {"image_to_caption_top1": float((similarity.argmax(1) == target).float().mean()),
            "caption_to_image_top1": float((similarity.argmax(0) == target).float().mean()), "scenes": count}
