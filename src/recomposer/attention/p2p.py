"""Prompt-to-Prompt (Hertz et al. 2022): edit an image by editing its prompt, keeping everything else.

The source prompt P and the edited prompt P* are sampled together from the same noise, in one batched
forward per step (their plans are rows of one batch, guidance.py); only the conditional rows are edited
(the unconditional ones are left alone, as in the reference). At every attention layer (a ``Control``):

- word swap (P, P* with the same number of words): P*'s cross-attention maps are P's, mapped word for word
  (token for token where the words have as many tokens, else each token takes the mean of its source word's
  maps), for the first ``cross_replace`` of
  the steps (a fraction, or one per word of P*), its own after;
- refinement (P* adds words): the tokens are aligned by a global alignment (match 1, mismatch −1, gap 0);
  aligned tokens take P's maps, new tokens keep their own;
- re-weighting: the maps of chosen words of P* are scaled by c (no renormalisation), after either edit;
- self-attention injection: P*'s self-attention maps are P's for the first ``self_replace`` of the steps,
  in layers with at most ``self_max_queries`` queries (the reference notebooks differ: 16² in one, 32² in
  the other; the default is 16², ``self_max_queries=32*32`` is the other);
- local blend (``blend`` words): after each step, outside the region the blend words attend to, P*'s
  latents are P's: x* ← x + m·(x* − x), m from the words' cross-attention maps in P and P* averaged over
  every layer at any resolution (resized to the latent grid), max-pooled 3×3, divided by their maximum and
  thresholded at ``blend_threshold``.
Samples 1 … B−1 are each an edit of sample 0 (the source).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import InvalidParameter
from ..requests import Edit  # noqa: F401 (re-exported)
from .processors import EDIT, READ, Call, Layer
from .store import AttentionStore


# ---------------------------------------------------------------- words and tokens

def word_tokens(tokenizer, prompt: str) -> tuple[list[str], list[list[int]], int]:
    """The prompt's words (split on spaces), each word's token positions in the tokenized prompt, and the
    position just after the last word (where the end token sits)."""
    words = prompt.split()
    ids = tokenizer(prompt, truncation=True).input_ids
    start = 1 if ids and ids[0] in (tokenizer.bos_token_id, tokenizer.cls_token_id) else 0
    positions, cursor = [], start
    for word in words:
        n = len(tokenizer(word, add_special_tokens=False).input_ids)
        positions.append(list(range(cursor, cursor + n)))
        cursor += n
    if cursor > len(ids):
        raise InvalidParameter("prompt", f"a prompt whose words the tokenizer keeps (it cut {prompt!r})", prompt)
    return words, positions, cursor


def find_words(tokenizer, prompt: str, chosen: Sequence[str], field_name: str) -> list[int]:
    """Token positions of the words ``chosen`` in ``prompt`` (every occurrence); a word not in it is an error."""
    words, positions, _ = word_tokens(tokenizer, prompt)
    found = []
    for word in chosen:
        hits = [p for w, ps in zip(words, positions) if _norm(w) == _norm(word) for p in ps]
        if not hits:
            raise InvalidParameter(field_name, f"words of the prompt ({' '.join(words)})", word)
        found += hits
    return found


def _norm(word: str) -> str:
    return word.strip(".,;:!?\"'").lower()


def swap_mapper(tokenizer, source: str, edited: str, width: int) -> torch.Tensor:
    """(K, K) M with edited maps = source maps @ M: word i of P* takes word i of P (the mean of its tokens);
    the start token and everything after the last word map to the same offset from the end of the words."""
    ws, ps, end_s = word_tokens(tokenizer, source)
    we, pe, end_e = word_tokens(tokenizer, edited)
    if len(ws) != len(we):
        raise InvalidParameter("edited", f"a prompt of {len(ws)} words like the source for a word swap (or a "
                                         "refinement that keeps every source word)", len(we))
    m = torch.zeros(width, width)
    for j in range(min(ps[0][0] if ps and ps[0] else 1, width)):  # the start token
        m[j, j] = 1
    for src, dst in zip(ps, pe):
        if len(src) == len(dst):  # token for token
            for s, t in zip(src, dst):
                if s < width and t < width:
                    m[s, t] = 1
            continue
        for t in dst:  # otherwise each token of the new word takes the mean of the old word's tokens
            if t < width:
                for s in src:
                    if s < width:
                        m[s, t] = 1 / len(src)
    for k in range(width - max(end_s, end_e)):  # the end token and what follows, aligned at the end of the words
        if end_e + k < width and end_s + k < width:
            m[end_s + k, end_e + k] = 1
    return m


def refine_mapper(tokenizer, source: str, edited: str, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M (K, K), alphas (K,)): tokens of P* aligned to tokens of P (global alignment, match 1, mismatch −1,
    gap 0) take P's map (alpha 1); tokens P* adds keep their own (alpha 0)."""
    a = tokenizer(source, truncation=True).input_ids
    b = tokenizer(edited, truncation=True).input_ids
    pairs = _align(a, b)
    m, alphas = torch.zeros(width, width), torch.zeros(width)
    for i, j in pairs:
        if i is not None and j is not None and i < width and j < width and a[i] == b[j]:
            m[i, j], alphas[j] = 1, 1
    for k in range(width - max(len(a), len(b))):  # padding after both prompts: one to one
        m[len(a) + k, len(b) + k], alphas[len(b) + k] = 1, 1
    return m, alphas


def _align(a: list[int], b: list[int]) -> list[tuple[int | None, int | None]]:
    """Needleman-Wunsch global alignment, match 1, mismatch −1, gap 0: (i, j) pairs, None for a gap."""
    n, k = len(a), len(b)
    score = [[0.0] * (k + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, k + 1):
            score[i][j] = max(score[i - 1][j], score[i][j - 1],
                              score[i - 1][j - 1] + (1 if a[i - 1] == b[j - 1] else -1))
    pairs, i, j = [], n, k
    while i > 0 or j > 0:
        if i > 0 and j > 0 and score[i][j] == score[i - 1][j - 1] + (1 if a[i - 1] == b[j - 1] else -1):
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i > 0 and score[i][j] == score[i - 1][j]:
            pairs.append((i - 1, None))
            i -= 1
        else:
            pairs.append((None, j - 1))
            j -= 1
    return pairs[::-1]


# ---------------------------------------------------------------- the control

class PromptToPrompt:
    """The attention control for one source (sample 0) and its edits (samples 1 …): see the module docstring.

    ``edits[e]`` for sample e ≥ 1: (mapper (K, K), alphas (K,) or None for a swap, the per-token replace shares
    (K,), the re-weighting scales (K,)). Built by ``prompt_to_prompt``; a store keeps the maps local blend needs.
    """

    def __init__(self, edit: Edit, per_sample: dict[int, dict], store: AttentionStore | None):
        self.edit_settings, self.per_sample, self.store = edit, per_sample, store

    def wants(self, layer: Layer, call: Call, queries: int) -> str | None:
        if call.rows is None:
            return None
        f = getattr(call.step, "fraction", 1.0)
        e = self.edit_settings
        if layer.cross:
            editing = any(f < s["share"].max().item() for s in self.per_sample.values()) or \
                any(bool((s["scale"] != 1).any()) for s in self.per_sample.values())
            return EDIT if editing else (READ if self.store is not None else None)
        return EDIT if f < e.self_replace and queries <= e.self_max_queries else None

    def edit(self, layer: Layer, call: Call, probs: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        rows = {(role.sample, role.set): r for r, role in enumerate(call.rows)}
        source = rows.get((0, 1))
        f = getattr(call.step, "fraction", 1.0)
        out = probs
        if source is not None:
            out = probs.clone()
            for sample, s in self.per_sample.items():
                r = rows.get((sample, 1))
                if r is None:
                    continue
                if not layer.cross:
                    out[r] = probs[source]
                    continue
                k = probs.shape[-1]
                replace = (f < s["share"][:k]).to(probs.dtype)  # (K,) tokens still taking the source's maps
                mapped = probs[source] @ s["mapper"][:k, :k].to(probs)  # (H, Q, K)
                alphas = replace if s["alphas"] is None else replace * s["alphas"][:k].to(probs)
                edited = alphas * mapped + (1 - alphas) * probs[r]
                out[r] = edited * s["scale"][:k].to(probs)
        if layer.cross and self.store is not None:
            self.store.record(call, out, grid)
        return out


def local_blend(store: AttentionStore, words: dict[int, list[int]], threshold: float, start: float):
    """After-hook: for each edited sample e, x_e ← x_0 + m_e·(x_e − x_0), m_e the blend mask (module docstring);
    ``words[sample]``: the blend words' token positions in that sample's prompt (sample 0 the source's)."""

    def hook(state) -> torch.Tensor:
        x = state.x_next
        if state.step.fraction < start:
            return x
        h, w = x.shape[-2:]
        source = _word_map(store, 0, words[0], (h, w))
        out = x.clone()
        for sample in range(1, x.shape[0]):
            m = torch.maximum(source, _word_map(store, sample, words[sample], (h, w)))
            m = F.max_pool2d(m[None, None], 3, stride=1, padding=1)[0, 0]
            m = (m / m.max().clamp(min=1e-12) > threshold).to(x.dtype)  # (h, w)
            out[sample] = x[0] + m * (x[sample] - x[0])
        return out

    return hook


def _word_map(store: AttentionStore, sample: int, positions: list[int], size: tuple[int, int]) -> torch.Tensor:
    maps = store.at(sample, size)  # (K, h, w)
    return maps[positions].mean(0)
