"""`recomposer train instruct`: a widened UNet starts as its base, hears the source through the new channels, drops
conditions as the reference does, trains on world edits or your pairs, on SD-shaped models and on bundled parts,
and what it writes is an instruction model `recomposer instruct` runs (a whole folder, or a low-rank delta)."""

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from recomposer.cli import main
from recomposer.denoiser import ModelInputs, forward_unet
from recomposer.models.delta import extract, merge
from recomposer.models.instruct import InstructChannels, widen
from recomposer.models.tiny import save_diffusers_dir, tiny_sd
from recomposer.training.base import BaseTraining, denoising_loss
from recomposer.training.instruct import (
    InstructTraining,
    changed_share,
    edit_positions,
    instruct_dropout,
    pair_batches,
    read_pairs,
    world_edit,
    world_edit_batches,
)


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def base():
    return tiny_sd(seed=5)


def widened(backbone):
    unet = widen(copy.deepcopy(backbone.unet), backbone.latent_channels)
    return replace(backbone, unet=unet, adapters=(InstructChannels(backbone.latent_channels),))


def test_a_widened_unet_is_its_base_whatever_the_source(base):
    wide = widened(base)
    assert wide.unet.config.in_channels == 8 and wide.unet.conv_in.weight.shape[1] == 8
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        plain = forward_unet(base.unet, x, t, ModelInputs(context=context))
        heard = forward_unet(wide.unet, x, t, ModelInputs(context=context, concat=torch.randn(2, 4, 16, 16)))
    assert torch.allclose(plain, heard, atol=1e-5)


def test_dropout_is_the_reference_split():
    keep_text, keep_image = instruct_dropout(200_000, 0.05, torch.Generator().manual_seed(0))
    shares = {"text alone": (~keep_text & keep_image).float().mean(), "both": (~keep_text & ~keep_image).float().mean(),
              "image alone": (keep_text & ~keep_image).float().mean()}
    for name, share in shares.items():
        assert abs(share - 0.05) < 0.003, (name, share)


def test_the_first_step_is_the_base_step_and_the_new_channels_learn(base):
    """Zero new input weights: the widened model's loss is the base model's for the same draws (one U[0,1) per
    example decides the caption in both: r ≥ 0.1 keeps it), and the gradient reaches the new channels."""
    batch = world_edit_batches(base, 3, 32)(0)
    assert batch["source"].shape == batch["latent_mean"].shape == (3, 4, 16, 16)
    wide = widened(base)
    ours = InstructTraining(wide).step(batch, torch.Generator().manual_seed(7))
    plain = BaseTraining(base, caption_drop=0.1)
    try:
        want = plain(batch, torch.Generator().manual_seed(7))
    finally:
        base.unet.requires_grad_(False).eval()
    assert torch.allclose(ours.loss, want, atol=1e-6)
    ours.loss.backward()
    assert wide.unet.conv_in.weight.grad[:, 4:].abs().sum() > 0


def test_world_edits_differ_by_the_edit_alone():
    edit, before, after = world_edit(123, 32)
    outside = ~edit.changed_mask(32)
    assert np.array_equal(before[outside], after[outside]) and not np.array_equal(before, after)
    assert edit.instruction and edit.instruction == world_edit(123, 32)[0].instruction  # a pure function of the seed


def test_the_changed_share_is_where_the_pair_differs_at_latent_size():
    edit, before, after = world_edit(123, 32)
    to = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 127.5 - 1  # noqa: E731
    share = changed_share(to(before), to(after), (16, 16))
    mask = torch.from_numpy(edit.changed_mask(32)).float()
    differ = torch.from_numpy(np.abs(after.astype(int) - before.astype(int)).max(2) > 4).float()
    assert share.shape == (1, 1, 16, 16) and 0 < share.sum() and differ.sum() <= mask.sum()
    assert torch.allclose(share[0, 0], differ.reshape(16, 2, 16, 2).mean((1, 3)))  # each position's 2x2 pixels
    assert changed_share(to(before), to(before), (16, 16)).sum() == 0


def test_edit_weights_move_each_examples_loss_toward_its_edit():
    changed = torch.zeros(2, 1, 4, 4)
    changed[0, 0, :2, :2] = 1  # example 0 changed a quarter of its positions; example 1 nothing
    m = edit_positions(changed, 9.0)
    assert torch.allclose(m.mean((1, 2, 3)), torch.ones(2))  # neither example counts more in the batch
    assert torch.allclose(m[0, 0, 0, 0] / m[0, 0, 3, 3], torch.tensor(10.0)) and torch.equal(m[1], torch.ones(1, 4, 4))


def test_the_weighted_step_is_the_step_with_those_weights(base):
    batch = world_edit_batches(base, 3, 32)(0)
    assert batch["changed"].shape == (3, 1, 16, 16) and batch["changed"].sum() > 0
    wide = widened(base)
    plain = InstructTraining(wide).step(batch, torch.Generator().manual_seed(7))
    weighted = InstructTraining(wide, edit_weight=4.0).step(batch, torch.Generator().manual_seed(7))
    assert torch.equal(weighted.prediction, plain.prediction)  # the same draws; only the loss's weights differ
    want = denoising_loss(plain.prediction, plain.target, torch.ones(3), edit_positions(batch["changed"], 4.0))
    assert torch.allclose(weighted.loss, want) and not torch.allclose(weighted.loss, plain.loss)
    with pytest.raises(Exception, match="edit_weight"):
        InstructTraining(wide, edit_weight=float("nan"))


def test_a_delta_merges_back_to_the_tuned_weights():
    g = torch.Generator().manual_seed(0)
    base = {"a.weight": torch.randn(32, 48, generator=g), "c.weight": torch.randn(16, 8, 3, 3, generator=g),
            "a.bias": torch.randn(32, generator=g), "same.weight": torch.randn(4, 4, generator=g)}
    tuned = dict(base)
    tuned["a.weight"] = base["a.weight"] + torch.randn(32, 2, generator=g) @ torch.randn(2, 48, generator=g) * 0.1
    tuned["c.weight"] = base["c.weight"] + 0.01 * torch.randn(16, 8, 3, 3, generator=g)
    tuned["a.bias"] = base["a.bias"] + 1
    delta, energy = extract(base, tuned, rank=2)
    assert "same.weight" not in delta and "a.bias" in delta and "a.weight.delta_up" in delta
    assert energy["a.weight"] > 0.999 and energy["c.weight"] < 0.9  # a rank-2 change is kept whole; noise is not
    merged = merge(base, delta)
    assert torch.allclose(merged["a.weight"], tuned["a.weight"], atol=2e-3)
    assert torch.equal(merged["same.weight"], base["same.weight"])
    with pytest.raises(Exception, match="do not fit"):
        merge({**base, "a.weight": torch.zeros(32, 40)}, delta)


@pytest.fixture(scope="module")
def pairs_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    with (folder / "metadata.jsonl").open("w") as f:
        for s in range(3):
            edit, before, after = world_edit(s, 32)
            Image.fromarray(before).save(folder / f"{s}-before.png")
            Image.fromarray(after).save(folder / f"{s}-after.png")
            f.write(json.dumps({"input_image": f"{s}-before.png", "edit_prompt": edit.instruction,
                                "edited_image": f"{s}-after.png"}) + "\n")
    return folder


def test_pairs_are_read_and_batched(pairs_folder, base, tmp_path):
    pairs = read_pairs(pairs_folder)
    assert len(pairs) == 3 and pairs[0].before.is_file()
    batch = pair_batches(base, pairs, 2, 32)(1)
    assert batch["source"].shape == (2, 4, 16, 16)
    (tmp_path / "metadata.jsonl").write_text('{"input_image": "x.png", "edit_prompt": "y", "edited_image": "z.png"}\n')
    with pytest.raises(Exception, match="files that exist"):
        read_pairs(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"input_image": "x.png"}\n')
    with pytest.raises(Exception, match="edit_prompt"):
        read_pairs(tmp_path)


def test_train_instruct_on_an_sd_model_writes_an_instruction_model(capsys, tmp_path, tiny_dir, pairs_folder, photo):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", "instruct", "-o", out, "--model", tiny_dir, "--data", pairs_folder,
                            "--steps", 2, "--batch-size", 2, "--size", 32)
    assert code == 0, err
    model = out / "model"
    assert json.loads((model / "model_index.json").read_text())["_class_name"] == \
        "StableDiffusionInstructPix2PixPipeline"
    assert json.loads((model / "unet" / "config.json").read_text())["in_channels"] == 8
    photo.save(tmp_path / "photo.png")
    code, stdout, err = run(capsys, "instruct", tmp_path / "photo.png", "make it blue", "--model", model,
                            "--steps", 2, "--seed", 1, "-o", tmp_path / "edit.png")
    assert code == 0 and (tmp_path / "edit.png").is_file(), err
    code, stdout, err = run(capsys, "train", "instruct", "-o", out, "--model", tiny_dir, "--data", pairs_folder,
                            "--steps", 3, "--batch-size", 2, "--size", 32, "--lr", 3e-4)
    assert code != 0 and "lr" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("weight", ["nan", "-1", "1e9"])
def test_train_instruct_refuses_an_edit_weight_out_of_range(capsys, tmp_path, weight):
    code, stdout, err = run(capsys, "train", "instruct", "-o", tmp_path / "run", "--steps", 1, "--edit-weight", weight)
    assert code == 2 and "edit-weight" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_train_instruct_refuses_an_inpainting_model(capsys, tmp_path):
    model = save_diffusers_dir(tiny_sd(seed=1, in_channels=9), tmp_path / "inpaint")
    code, stdout, err = run(capsys, "train", "instruct", "-o", tmp_path / "run", "--model", model, "--steps", 1)
    assert code == 2 and "StableDiffusionInpaintPipeline" in err and not (tmp_path / "run").exists(), err


def test_train_instruct_on_parts_ships_a_delta_that_instruct_runs(capsys, tmp_path):
    import shutil

    from recomposer.models.bundled import WEIGHTS
    from recomposer.world.dataset import make_sample

    parts = tmp_path / "parts"
    shutil.copytree(WEIGHTS, parts, ignore=shutil.ignore_patterns("instruct.*"))
    code, stdout, err = run(capsys, "train", "instruct", "-o", tmp_path / "run", "--parts", parts, "--steps", 2,
                            "--batch-size", 2, "--rank", 4)
    assert code == 0 and "going on" not in err, err
    settings = json.loads((parts / "instruct.json").read_text())
    assert settings["rank"] == 4 and settings["base_unet"] == json.loads((parts / "unet.json").read_text())[
        "weights_sha256"]
    assert settings["steps"] == 2 and settings["run"]["start"] is None
    # a parts folder with an instruct part goes on from it (weighted toward the edits), counting every step
    code, stdout, err = run(capsys, "train", "instruct", "-o", tmp_path / "run-2", "--parts", parts, "--steps", 1,
                            "--batch-size", 2, "--rank", 4, "--edit-weight", 9)
    assert code == 0 and "going on from" in err, err
    went_on = json.loads((parts / "instruct.json").read_text())
    assert went_on["steps"] == 3 and went_on["run"]["start"] == {k: settings[k] for k in ("steps", "weights_sha256")}
    assert went_on["run"]["edit_weight"] == 9
    code, stdout, err = run(capsys, "train", "instruct", "-o", tmp_path / "run-2", "--parts", parts, "--steps", 2,
                            "--batch-size", 2, "--rank", 4)  # a resume with another weighting
    assert code != 0 and "edit-weight" in err and json.loads((parts / "instruct.json").read_text()) == went_on, err
    settings = went_on
    assert (parts / "instruct.safetensors").stat().st_size < (parts / "unet.safetensors").stat().st_size / 4
    Image.fromarray(make_sample(5).rendered.image).save(tmp_path / "scene.png")
    code, stdout, err = run(capsys, "instruct", tmp_path / "scene.png", "make the star red", "--model", parts,
                            "--steps", 2, "--seed", 0, "-o", tmp_path / "edit.png")
    assert code == 0 and (tmp_path / "edit.png").is_file(), err
    (parts / "instruct.json").write_text(json.dumps({**settings, "base_unet": "0" * 64}))
    code, stdout, err = run(capsys, "instruct", tmp_path / "scene.png", "make the star red", "--model", parts,
                            "--steps", 2, "-o", tmp_path / "edit2.png")
    assert code != 0 and "delta of another UNet" in err and not (tmp_path / "edit2.png").exists(), err
    code, stdout, err = run(capsys, "train", "instruct", "-o", tmp_path / "run-3", "--parts", parts, "--steps", 1,
                            "--batch-size", 2, "--rank", 4)  # such a part is trained again, as the error says
    assert code == 0 and "not going on" in err and "delta of another UNet" in err, err
    assert json.loads((parts / "instruct.json").read_text())["steps"] == 1
