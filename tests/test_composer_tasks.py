"""Composer's tasks (tasks/composer.py) and their commands, on a tiny SD backbone with a randomised adapter."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from recomposer.cli import main
from recomposer.conditions import Caption, ConditionSet, ImageEmbedding, Sketch
from recomposer.errors import InvalidParameter, RecomposerError
from recomposer.models.image_encoder import BundledImageEncoder, WorldImageEncoder
from recomposer.tasks import composer as tasks
from recomposer.tasks.composer import ComposeRequest, ComposerModel, Weight
from recomposer.training.composer import new_adapter, save_adapter
from recomposer.world.dataset import make_sample

FAST = ComposeRequest(steps=3, scheduler="euler")
ENCODER = "test:world-encoder"


def randomised_adapter(backbone, seed=0):
    """An adapter whose zero-initialised doors are given weights, so every condition changes the output."""
    adapter = new_adapter(backbone, 256, ENCODER, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for p in adapter.parameters():
            torch.nn.init.normal_(p, std=0.05)
    return adapter


@pytest.fixture(scope="module")
def model():
    from recomposer.models.tiny import tiny_sd

    torch.manual_seed(0)
    return ComposerModel.of(tiny_sd(seed=0), randomised_adapter(tiny_sd(seed=0)),
                            BundledImageEncoder(WorldImageEncoder(), ENCODER))


@pytest.fixture(scope="module")
def scenes():
    return [Image.fromarray(make_sample(seed, size=64).rendered.image) for seed in (1, 2)]


def pixels(results):
    return np.stack([np.asarray(r.image) for r in results])


def test_compose_obeys_each_condition_and_is_seeded(model, scenes):
    a, _ = scenes
    sketch = model.decompose(a, ("sketch",))
    one = pixels(tasks.compose(model, sketch, FAST))
    assert one.shape == (1, 32, 32, 3)
    assert np.array_equal(one, pixels(tasks.compose(model, sketch, FAST)))  # same seed, same pixels
    assert not np.array_equal(one, pixels(tasks.compose(model, ConditionSet(), FAST)))  # the sketch is heard
    other = model.decompose(scenes[1], ("sketch",))
    assert not np.array_equal(one, pixels(tasks.compose(model, other, FAST)))


def test_a_batch_equals_its_seeds_one_by_one(model, scenes):
    conds = model.decompose(scenes[0], ("palette", "intensity"))
    batch = pixels(tasks.compose(model, conds, ComposeRequest(steps=3, scheduler="euler", seed=5, batch=2)))
    single = pixels(tasks.compose(model, conds, ComposeRequest(steps=3, scheduler="euler", seed=6)))
    assert np.abs(batch[1].astype(int) - single[0].astype(int)).max() <= 1


def test_per_condition_weights_and_the_base_set_change_the_guidance(model, scenes):
    conds = model.decompose(scenes[0], ("palette", "sketch")).with_(Caption("a red circle"))
    plain = pixels(tasks.compose(model, conds, FAST))
    weighted = pixels(tasks.compose(model, conds, ComposeRequest(steps=3, scheduler="euler",
                                                                 weights=(Weight("sketch", 4.0, 0.0, 0.5),))))
    based = pixels(tasks.compose(model, conds, ComposeRequest(steps=3, scheduler="euler", base=("caption",))))
    assert not np.array_equal(plain, weighted) and not np.array_equal(plain, based)
    plan = tasks.plan(conds, ComposeRequest(base=("caption",), weights=(Weight("sketch", 2.0),)))
    assert set(plan.base) == {"caption"} and set(plan.terms[1].conds) == {"caption", "sketch"}
    with pytest.raises(InvalidParameter, match="base"):
        tasks.plan(conds, ComposeRequest(base=("depth",)))


def test_variations_share_the_kept_conditions_and_differ_by_seed(model, scenes):
    results = tasks.variations(model, scenes[0], request=ComposeRequest(steps=3, scheduler="euler", batch=3))
    images = pixels(results)
    assert len(results) == 3 and len({r.seed for r in results}) == 3
    assert not np.array_equal(images[0], images[1])
    assert all(set(r.provenance["conditions"]) == {"image_embedding", "palette"} for r in results)


def test_interpolation_runs_from_one_image_to_the_other(model, scenes):
    a, b = scenes
    frames = tasks.interpolate(model, a, b, frames=3, request=FAST)
    ends = [tasks.compose(model, model.decompose(x, ("image_embedding", "palette")), FAST) for x in (a, b)]
    assert np.array_equal(pixels(frames[:1]), pixels(ends[0])) and np.array_equal(pixels(frames[2:]), pixels(ends[1]))
    assert not np.array_equal(pixels(frames[1:2]), pixels(frames[:1]))


def test_slerp_keeps_the_path_on_the_sphere():
    a, b = np.array([1, 0, 0], np.float32), np.array([0, 2, 0], np.float32)
    mid = tasks.slerp(a, b, 0.5)
    assert np.allclose(mid / np.linalg.norm(mid), [2**-0.5, 2**-0.5, 0], atol=1e-6)
    assert np.isclose(np.linalg.norm(mid), 1.5) and np.allclose(tasks.slerp(a, b, 0), a)


def test_region_editing_keeps_every_pixel_outside_the_mask(model, scenes):
    source = model.fit(scenes[0])
    mask = np.zeros((32, 32), bool)
    mask[8:20, 10:26] = True
    (result,) = tasks.edit_region(model, source, mask, ConditionSet.of(Caption("a blue star")), FAST)
    out, src = np.asarray(result.image), np.asarray(source)
    assert np.array_equal(out[~mask], src[~mask]) and result.provenance["psnr_outside_mask"] == float("inf")
    assert not np.array_equal(out[mask], src[mask])
    with pytest.raises(InvalidParameter, match="mask"):
        tasks.edit_region(model, source, np.zeros((16, 16), bool))


def test_classic_tasks_are_condition_recipes(model, scenes):
    a, b = scenes
    grey = a.convert("L").convert("RGB")
    checks = {
        "colourise": (tasks.colourise(model, grey, b, "a red circle", FAST), {"intensity", "palette", "caption"}),
        "recolour": (tasks.recolour(model, a, b, request=FAST), {"sketch", "instances", "palette"}),
        "style": (tasks.style_transfer(model, a, b, request=FAST), {"sketch", "image_embedding", "palette"}),
        "sketch-to-image": (tasks.from_local(model, "sketch", a, "a star", FAST), {"sketch", "caption"}),
        "instances-to-image": (tasks.from_local(model, "instances", a, None, FAST), {"instances"}),
        "reconstruct": (tasks.reconstruct(model, a, ("palette", "sketch"), FAST), {"palette", "sketch"}),
    }
    for name, (results, kinds) in checks.items():
        assert set(results[0].provenance["conditions"]) == kinds, name
        assert results[0].image.size == (32, 32)
    mask = np.zeros((32, 32), bool)
    mask[:16] = True
    (filled,) = tasks.inpaint(model, model.fit(a), mask, "sky", FAST)
    assert set(filled.provenance["conditions"]) == {"caption", "masked_image"}


def test_bad_conditions_are_refused_with_their_field(model, scenes):
    small = model.decompose(scenes[0], ("intensity",))
    with pytest.raises(InvalidParameter, match="sketch|intensity"):  # local conditions of two sizes
        tasks.compose(model, small.with_(Sketch(np.zeros((64, 64), bool))), FAST)
    with pytest.raises(InvalidParameter, match="intensity"):  # not the size asked for
        tasks.compose(model, small, FAST, size=(64, 64))
    wrong_dim = ImageEmbedding(np.ones(8, np.float32), ENCODER)
    with pytest.raises(InvalidParameter, match="image_embedding.vector"):
        tasks.compose(model, ConditionSet.of(wrong_dim), FAST)
    with pytest.raises(InvalidParameter, match="image_embedding.encoder"):
        tasks.compose(model, ConditionSet.of(ImageEmbedding(np.ones(256, np.float32), "someone-else")), FAST)
    with pytest.raises(InvalidParameter, match="keep"):
        tasks.variations(model, scenes[0], keep=("colour",))
    with pytest.raises(InvalidParameter, match="frames"):
        tasks.interpolate(model, *scenes, frames=1)
    with pytest.raises(InvalidParameter, match="steps"):
        tasks.compose(model, ConditionSet(), ComposeRequest(steps=0))


def test_an_adapter_for_another_backbone_is_refused():
    from recomposer.models.tiny import tiny_sd

    backbone = tiny_sd(seed=0)
    wide = new_adapter(backbone, 256, ENCODER, local_channels=8)
    object.__setattr__(wide.config, "cross_attention_dim", 64)
    with pytest.raises(RecomposerError, match="adapter"):
        ComposerModel.of(backbone, wide)


# ---------------------------------------------------------------- the commands

def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory):
    from recomposer.models.tiny import tiny_sd

    path = tmp_path_factory.mktemp("adapter") / "composer.safetensors"
    return save_adapter(randomised_adapter(tiny_sd(seed=0)), path)


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory, scenes):
    folder = tmp_path_factory.mktemp("scenes")
    paths = []
    for k, image in enumerate(scenes):
        image.save(folder / f"{k}.png")
        paths.append(folder / f"{k}.png")
    return paths


def test_compose_command_mixes_sources_and_saved_conditions(tiny_dir, adapter_file, scene_files, tmp_path, capsys):
    a, b = scene_files
    Image.open(a).resize((32, 32)).save(tmp_path / "small.png")  # the tiny model generates 32 px
    for name, image in (("small", tmp_path / "small.png"), ("large", a)):
        code, out, err = run(capsys, "decompose", image, "-o", tmp_path / name, "--only", "sketch")
        assert code == 0, err
    common = ("--model", tiny_dir, "--adapter", adapter_file, "--steps", 2, "--device", "cpu", "--seed", 0)
    code, out, err = run(capsys, "compose", "--sketch-from", tmp_path / "small", "--palette-from", b,
                         "--intensity-from", a, "--caption", "a red circle", "--batch", 2, "--guidance-rescale", 0.7,
                         "--guidance-start", 0.25, *common, "-o", tmp_path / "out")
    assert code == 0, err
    assert out.split() == [str(tmp_path / "out" / n) for n in ("0.png", "1.png", "0-grid.png")]
    record = json.loads(Image.open(tmp_path / "out" / "1.png").text["recomposer"])
    assert set(record["conditions"]) == {"caption", "palette", "sketch", "intensity"} and record["seed"] == 1
    assert record["params"]["guidance_rescale"] == 0.7 and record["params"]["guidance_start"] == 0.25
    code, out, err = run(capsys, "compose", "--sketch-from", tmp_path / "large", "--intensity-from", a, *common,
                         "-o", tmp_path / "out2")  # a 64 px sketch file is fitted to 32 px like the image
    assert code == 0, err
    record = json.loads(Image.open(tmp_path / "out2" / "0.png").text["recomposer"])
    assert record["conditions"]["sketch"]["size"] == [32, 32] and Image.open(tmp_path / "out2" / "0.png").size == (32, 32)


def test_compose_command_errors_are_one_line_and_write_nothing(tiny_dir, adapter_file, scene_files, tmp_path,
                                                                capsys):
    a, b = scene_files
    Image.new("L", (16, 16), 255).save(tmp_path / "small-mask.png")  # the scenes are 64 px
    common = ("--model", tiny_dir, "--adapter", adapter_file, "--steps", 2, "--device", "cpu")
    cases = [
        (("compose", *common), "conditions"),
        (("compose", "--sketch-from", tmp_path / "missing.png", *common), "sketch-from"),
        (("compose", "--caption", "x", "--steps", 0, "--model", tiny_dir, "--adapter", adapter_file), "steps"),
        (("compose", "--caption", "x", "--base", "colour", *common), "base"),
        (("compose", "--caption", "x", "--weight", "sketch:lots", *common), "weight"),
        (("compose", "--caption", "x", "--guidance-rescale", 2, *common), "guidance-rescale"),
        (("variations", a, "--guidance-end", 0, *common), "guidance-start"),
        (("compose", "--caption", "x", "--model", tiny_dir), "adapter"),
        (("compose", "--image", a, *common), "mask"),
        (("compose", "--image", a, "--mask", tmp_path / "small-mask.png", *common), "mask"),
        (("compose", "--depth-from", a, *common), "depth-from"),
        (("variations", a, "--keep", "nothing", *common), "keep"),
        (("interpolate", a, b, "--frames", 1, *common), "frames"),
    ]
    for args, field in cases:
        out_dir = tmp_path / field
        code, out, err = run(capsys, *args, "-o", out_dir)
        assert code == 2 and err.startswith(f"error: {field}"), (args, err)
        assert len(err.strip().splitlines()) == 1 and not out_dir.exists(), err


def test_wrong_kind_of_condition_file_is_refused(tiny_dir, adapter_file, scene_files, tmp_path, capsys):
    code, _, err = run(capsys, "decompose", scene_files[0], "-o", tmp_path / "dec", "--only", "palette")
    assert code == 0, err
    code, _, err = run(capsys, "compose", "--sketch-from", tmp_path / "dec" / "palette.json",
                       "--model", tiny_dir, "--adapter", adapter_file, "-o", tmp_path / "out")
    assert code == 2 and err.startswith("error: sketch-from") and not (tmp_path / "out").exists()
    code, _, err = run(capsys, "compose", "--sketch-from", tmp_path / "dec",
                       "--model", tiny_dir, "--adapter", adapter_file, "-o", tmp_path / "out")
    assert code == 2 and "sketch.json" in err


def test_interpolate_and_edit_commands_write_their_files(tiny_dir, adapter_file, scene_files, tmp_path, capsys):
    a, b = scene_files
    common = ("--model", tiny_dir, "--adapter", adapter_file, "--steps", 2, "--device", "cpu", "--seed", 0)
    code, out, err = run(capsys, "interpolate", a, b, "--frames", 3, "--kinds", "palette", *common,
                         "-o", tmp_path / "interp")
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "interp").iterdir())
    assert names == ["0-1.png", "0-2.png", "0-interpolation.gif", "0-strip.png", "0.png"]  # every frame: seed 0
    with Image.open(tmp_path / "interp" / "0-interpolation.gif") as gif:
        assert gif.n_frames == 3
    source = Image.open(a).resize((32, 32))
    source.save(tmp_path / "src.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 4:20] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    code, out, err = run(capsys, "edit", tmp_path / "src.png", "--mask", tmp_path / "mask.png", "--caption", "a star",
                         *common, "-o", tmp_path / "edit")
    assert code == 0 and "PSNR outside the mask inf dB" in out, (out, err)
    edited = np.asarray(Image.open(tmp_path / "edit" / "0.png").convert("RGB"))
    assert np.array_equal(edited[mask == 0], np.asarray(source)[mask == 0])
    record = json.loads(Image.open(tmp_path / "edit" / "0.png").text["recomposer"])
    assert record["task"] == "edit" and set(record["conditions"]) == {"caption", "masked_image"}


def test_a_condition_the_model_barely_follows_is_said_once_per_kind(model, tmp_path):
    """The notice comes from the model's own benchmark figures, shipped beside its parts only for these weights."""
    from recomposer.errors import Notice
    from recomposer.models.bundled import read_figures
    from recomposer.models.local import weights_sha256

    conditions = {"palette": {"figure": "intersection", "floor": 0.27, "single": 0.28, "ceiling": 0.96},
                  "sketch": {"figure": "edge_f1", "floor": 0.1, "single": 0.8, "ceiling": 0.9},
                  # PSNRs as the bench writes them: "inf" in standard JSON, the ceiling float round-off; both
                  # count up to 50 dB, so 25.8 dB over an 11.9 dB floor is heard, and an exact one fully
                  "intensity": {"figure": "psnr_db", "floor": 11.9, "single": 25.8, "ceiling": 154.3},
                  "masked_image": {"figure": "psnr_outside_db", "floor": 11.0, "single": "inf", "ceiling": "inf"}}
    figures = {"format": 1, "conditions": conditions,
               "model": {"backbone": model.backbone.describe(), "adapter_sha256": weights_sha256(model.adapter)}}
    (tmp_path / "benchmark.json").write_text(json.dumps(figures))
    assert read_figures(tmp_path, model.backbone, model.adapter) == figures
    figures["model"]["adapter_sha256"] = "0" * 64  # figures of other weights are not these weights' figures
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "benchmark.json").write_text(json.dumps(figures))
    assert read_figures(tmp_path / "other", model.backbone, model.adapter) is None
    known = ComposerModel(model.backbone, model.encoder, read_figures(tmp_path, model.backbone, model.adapter))
    assert list(tasks.weak_conditions(known, ["palette", "sketch", "caption", "intensity", "masked_image"])) \
        == ["palette"]
    assert tasks.progress(conditions["masked_image"]) == 1.0
    conds = known.decompose(Image.fromarray(make_sample(3, size=32).rendered.image), ("palette", "sketch"))
    with pytest.warns(Notice, match="palette: this model barely follows this condition yet .* 0.28, against 0.27"):
        tasks.compose(known, conds, ComposeRequest(steps=1, seed=0))
    assert tasks.weak_conditions(model, ["palette"]) == {}  # no figures: nothing is claimed
