"""`recomposer make-pairs`: InstructPix2Pix's pairs by Prompt-to-Prompt from your triplets, the world's edit grammar or
a local language model; written pair by pair, resumable, read back by `train instruct --data`."""

import json

import pytest
import torch

from recomposer.cli import main
from recomposer.tasks.make_pairs import Triplet, lm_prompt, pairable, parse_reply, world_triplets
from recomposer.training.instruct import read_pairs


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_world_triplets_are_pairable_edits_worded_alike():
    triplets = [t for _, t in zip(range(20), world_triplets(0))]
    assert len(triplets) == 20 and all(pairable(t) for t in triplets)
    assert all(t.caption != t.edited_caption for t in triplets)
    assert triplets == [t for _, t in zip(range(20), world_triplets(0))]  # a pure function of the seed


def test_pairable_refuses_what_prompt_to_prompt_cannot_draw():
    assert pairable(Triplet("a red circle", "make it blue", "a blue circle"))
    assert pairable(Triplet("a red circle", "add a star", "a red circle and a star"))
    assert not pairable(Triplet("a red circle", "move it", "a red circle"))  # the same words: nothing to edit
    assert not pairable(Triplet("a red circle", "x", "two blue squares on grass"))


def test_a_language_models_reply_is_parsed():
    prompt = lm_prompt("a dog", [Triplet("a cat", "make it a lion", "a lion")])
    assert prompt.endswith("Caption: a dog\nInstruction:") and "Edited caption: a lion" in prompt
    assert parse_reply("a dog", " make it a wolf\nEdited caption: a wolf\n\nCaption: more") == \
        Triplet("a dog", "make it a wolf", "a wolf")
    assert parse_reply("a dog", " make it a wolf and then") is None


def test_pairs_from_triplets_resume_and_train(capsys, tmp_path, tiny_dir):
    triplets = tmp_path / "edits.jsonl"
    triplets.write_text("".join(json.dumps({"caption": c, "instruction": i, "edited_caption": e}) + "\n" for c, i, e in
                                [("a red circle", "make it blue", "a blue circle"),
                                 ("a cat on grass", "put it on snow", "a cat on snow"),
                                 ("a tree", "add a house", "a tree and a house")]))
    out = tmp_path / "pairs"
    args = ("make-pairs", "-o", out, "--triplets", triplets, "--model", tiny_dir, "--steps", 3, "--size", 32)
    code, stdout, err = run(capsys, *args, "--count", 2)
    assert code == 0, err
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 2
    with (out / "metadata.jsonl").open("a") as f:
        f.write('{"input_image": "images/00002-bef')  # a line cut short by a crash
    code, stdout, err = run(capsys, *args)
    assert code == 0 and "pair 3/3" in err and "pair 1/3" not in err, err
    pairs = read_pairs(out)
    assert [p.instruction for p in pairs] == ["make it blue", "put it on snow", "add a house"]
    assert pairs[2].before.is_file() and pairs[2].after.is_file()
    code, stdout, err = run(capsys, *args[:-4], "--steps", 4, "--size", 32)
    assert code != 0 and "steps" in err and len(err.strip().splitlines()) == 1, err
    code, stdout, err = run(capsys, "train", "instruct", "-o", tmp_path / "run", "--model", tiny_dir, "--data", out,
                            "--steps", 1, "--batch-size", 2, "--size", 32)
    assert code == 0, err


def test_world_pairs_on_the_bundled_model(capsys, tmp_path):
    code, stdout, err = run(capsys, "make-pairs", "-o", tmp_path / "pairs", "--count", 2, "--steps", 2)
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "pairs" / "metadata.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1] and records[0]["caption"] != records[0]["edited_caption"]


def test_a_language_model_that_writes_nothing_usable_is_said(capsys, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from recomposer.models.tiny import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=4096, n_embd=16, n_layer=1, n_head=2))
    lm.save_pretrained(tmp_path / "lm", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "lm")
    (tmp_path / "captions.txt").write_text("a red circle\n")
    code, stdout, err = run(capsys, "make-pairs", "-o", tmp_path / "pairs", "--captions", tmp_path / "captions.txt",
                            "--lm", tmp_path / "lm", "--steps", 2)
    assert code != 0 and "wrote no edit" in err and "1 replies skipped" in err, err
    assert not (tmp_path / "pairs").exists()


@pytest.mark.parametrize("args, field", [
    (("--lm", "x"), "lm"),
    (("--triplets", "missing.jsonl"), "triplets"),
    (("--steps", 0), "steps"),
])
def test_bad_input_is_one_line_and_nothing_written(capsys, tmp_path, args, field):
    code, stdout, err = run(capsys, "make-pairs", "-o", tmp_path / "pairs", *args)
    assert code != 0 and field in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "pairs").exists(), err


def test_a_changed_triplets_file_is_another_run(capsys, tmp_path, tiny_dir):
    triplets = tmp_path / "edits.jsonl"
    record = {"caption": "a red circle", "instruction": "blue", "edited_caption": "a blue circle"}
    triplets.write_text(json.dumps(record) + "\n")
    args = ("make-pairs", "-o", tmp_path / "pairs", "--triplets", triplets, "--model", tiny_dir, "--steps", 2,
            "--size", 32)
    assert run(capsys, *args)[0] == 0
    triplets.write_text(json.dumps({**record, "caption": "a red square", "edited_caption": "a blue square"}) + "\n")
    code, _, err = run(capsys, *args)
    assert code != 0 and "triplets" in err and len(err.strip().splitlines()) == 1, err
