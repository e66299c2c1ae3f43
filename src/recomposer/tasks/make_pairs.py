"""InstructPix2Pix's data pipeline (Brooks et al. 2023, §3.1) on any backbone: (caption, instruction, edited caption)
triplets become (before, instruction, after) image pairs made with Prompt-to-Prompt (tasks/p2p.py), so that the two
images share their noise and attention and differ by the edit alone.

Where triplets come from:
    - a JSONL file of {"caption", "instruction", "edited_caption"} records (``read_triplets``);
    - the shapes world's own edit grammar (``world_triplets``): a training scene's caption, an edit of the scene
      (world/edits.py) and the caption of the edited scene, worded with the same dice; no language model is needed.
      Edits whose two captions Prompt-to-Prompt cannot pair (the same words: a move; or neither a word swap nor an
      added phrase: most adds and removes) are skipped, so the world gives recolours, swaps of shape, restyles,
      resizes and backgrounds;
    - a local causal language model (``lm_triplets``, transformers): shown a few of the world's triplets, it writes an
      instruction and an edited caption for each of your captions (the paper fine-tunes GPT-3 for this; here the
      model is only prompted). Replies that do not parse, or that P2P cannot pair, are skipped and counted.

Each pair is one ``prompt_to_prompt`` run (both rows in each forward) from seed ``seed + index``, with the typical
edit settings (cross-attention replaced for 80% of the steps, self-attention for 40%). The paper then keeps the best
of many seeds by CLIP directional similarity; no such filter runs here (there is no CLIP offline by default).
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidParameter
from ..requests import edit_kind

TRIPLET_FIELDS = ("caption", "instruction", "edited_caption")
PROMPT_HEAD = "Write an instruction that edits the image a caption describes, and the caption after the edit.\n\n"


@dataclass(frozen=True)
class Triplet:
    caption: str  # the image before
    instruction: str  # what to do
    edited_caption: str  # the image after


def pairable(t: Triplet) -> bool:
    """Whether Prompt-to-Prompt can make this pair: the captions differ, as a word swap or an added phrase."""
    if t.caption.strip().lower() == t.edited_caption.strip().lower() or not t.instruction.strip():
        return False
    try:
        edit_kind(t.caption, t.edited_caption)
    except InvalidParameter:
        return False
    return True


def read_triplets(path: str | Path) -> list[Triplet]:
    """Triplets from a JSONL file, one {"caption", "instruction", "edited_caption"} object per line (each checked)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidParameter("triplets", "a JSONL file of caption / instruction / edited_caption records", str(path))
    from ..io.files import jsonl_records

    triplets = []
    for record, where in jsonl_records(path, TRIPLET_FIELDS, "triplets"):
        if not all(record[k].strip() for k in TRIPLET_FIELDS):
            raise InvalidParameter("triplets", f"non-empty {', '.join(TRIPLET_FIELDS)} ({where})", record)
        triplets.append(Triplet(*(record[k].strip() for k in TRIPLET_FIELDS)))
    return triplets


def world_triplets(seed: int = 0) -> Iterator[Triplet]:
    """An endless stream of pairable triplets from training-stream scenes ``seed``, ``seed + 1``, …: for each
    scene, its caption and the first pairable edit of the kinds in a random order (scenes with none are skipped)."""
    from ..world.captions import caption
    from ..world.dataset import EVAL_SEED_BASE, make_sample
    from ..world.edits import EDIT_KINDS, make_edit

    for s in range(seed, EVAL_SEED_BASE):
        scene = make_sample(s).scene
        rng = np.random.default_rng([s, 3])
        for k in rng.permutation(len(EDIT_KINDS)):
            try:
                edit = make_edit(scene, EDIT_KINDS[k], rng)
            except InvalidParameter:  # this scene allows no such edit
                continue
            words = [caption(x, np.random.default_rng([s, 1])) for x in (edit.before, edit.after)]  # the same dice
            t = Triplet(words[0], edit.instruction, words[1])
            if pairable(t):
                yield t
                break


def lm_prompt(caption: str, examples: Sequence[Triplet]) -> str:
    """The few-shot prompt a causal LM completes for ``caption`` (``parse_reply`` reads its completion)."""
    shots = "".join(f"Caption: {t.caption}\nInstruction: {t.instruction}\nEdited caption: {t.edited_caption}\n\n"
                    for t in examples)
    return f"{PROMPT_HEAD}{shots}Caption: {caption}\nInstruction:"


def parse_reply(caption: str, reply: str) -> Triplet | None:
    """The triplet in an LM's completion of ``lm_prompt`` (" make it red\\nEdited caption: a red ..."), or None."""
    instruction, marker, rest = reply.partition("\nEdited caption:")
    edited = rest.strip().split("\n", 1)[0].strip()
    if not marker or not instruction.strip() or not edited:
        return None
    return Triplet(caption.strip(), instruction.strip(), edited)


def lm_triplets(captions: Sequence[str], lm: str | Path, max_new_tokens: int = 60, shots: int = 3,
                seed: int = 0) -> tuple[list[Triplet], int]:
    """(pairable triplets, how many replies were skipped) written by the causal LM in folder ``lm`` (transformers
    AutoModelForCausalLM through the library door: safetensors weights only, no remote code), greedy, prompted
    with ``shots`` world triplets."""
    import itertools

    import torch
    from transformers import AutoModelForCausalLM

    from ..models.local import check_model_dir, load_pretrained, load_tokenizer

    folder = check_model_dir(lm, "lm")  # config.json naming no code, safetensors weights (RELIABILITY R1)
    tokenizer = load_tokenizer(folder, "lm")
    model = load_pretrained(AutoModelForCausalLM, folder, "lm", "cpu", torch.float32).eval()
    examples = list(itertools.islice(world_triplets(seed), shots))
    kept, skipped = [], 0
    for caption in captions:
        ids = tokenizer(lm_prompt(caption, examples), return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else
                                 tokenizer.eos_token_id)
        t = parse_reply(caption, tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        if t is not None and pairable(t):
            kept.append(t)
        else:
            skipped += 1
    return kept, skipped


def make_pair(backbone, triplet: Triplet, seed: int, steps: int = 50, guidance: float = 7.5, size: int | None = None):
    """(before, after) Generated images of ``triplet`` by Prompt-to-Prompt from ``seed``'s noise."""
    from ..requests import P2PRequest
    from .p2p import prompt_to_prompt

    request = P2PRequest(triplet.caption, triplet.edited_caption, steps=steps, guidance=guidance, seed=seed,
                         width=size, height=size, allow_flat=True)
    return prompt_to_prompt(backbone, request)
