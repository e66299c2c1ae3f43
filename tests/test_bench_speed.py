"""The speed benchmark (evaluation/speed.py): the quick run gives every figure, finite and positive, each ratio
the quotient of the seconds beside it, all of it in the markdown; bad settings are refused by name."""

import json
import math

import pytest
import torch

from recomposer.errors import InvalidParameter
from recomposer.evaluation.speed import QUICK_SPEED, SpeedConfig, markdown, run, side_by_side

GENERATION = ("per_image", "loop_vs_unet", "guidance_3_sets", "guidance_4_sets")
COMPARED = GENERATION + ("train_step",)


@pytest.fixture(scope="module")
def report():
    torch.set_num_threads(1)
    return run(QUICK_SPEED)


def test_quick_report_has_every_figure_finite_and_positive(report):
    figures = report["figures"]
    assert set(COMPARED) | {"world_scenes", "decompose_all"} <= set(figures)
    kinds = {name.removeprefix("decompose_") for name in figures if name.startswith("decompose_")}
    assert {"palette", "sketch", "instances", "intensity"} <= kinds, "the kinds that need no model are measured"
    assert not kinds & {"caption", "depth", "masked_image"}, "kinds with no default backend or input are left out"
    assert not any(name.startswith("bundled") for name in figures), "the bundled model is full mode only"
    for name, f in figures.items():
        assert math.isfinite(f["value"]) and f["value"] > 0, name
        assert f["runs"] >= QUICK_SPEED.repeats, name
        assert f["what"] and f["how"] and f["unit"] in ("s", "images/s", "scenes/s"), name


def test_ratios_are_the_quotients_of_the_reported_seconds(report):
    figures = report["figures"]
    for name in COMPARED:
        f = figures[name]
        assert f["unit"] == "s" and f["against"]
        assert math.isfinite(f["baseline"]) and f["baseline"] > 0, name
        assert f["ratio"] == pytest.approx(f["value"] / f["baseline"], rel=1e-12), name
    for name, f in figures.items():
        if name not in COMPARED:
            assert f["baseline"] is None and f["ratio"] is None, name
    # a goal's verdict is the goal applied to the ratio (or to the value where there is no baseline)
    assert figures["per_image"]["met"] == (figures["per_image"]["ratio"] <= 1.02)
    assert figures["world_scenes"]["met"] == (figures["world_scenes"]["value"] >= 300)


def test_setup_describes_the_run_and_the_report_is_strict_json(report):
    s = report["setup"]
    cuda = QUICK_SPEED.torch_device.type == "cuda"
    assert (s["device"], s["dtype"]) == (str(QUICK_SPEED.torch_device), "float16" if cuda else "float32")
    assert (s["threads"], s["quick"], s["model"]["name"]) == (1, True, "tiny SD-shaped (models/tiny.py)")
    assert (s["size"], s["steps"], s["repeats"]) == (QUICK_SPEED.size, QUICK_SPEED.steps, QUICK_SPEED.repeats)
    assert s["torch"] == torch.__version__ and s["diffusers"]
    assert s["model"]["unet"]["parameters"] > 0 and s["model"]["weights"] == "random"
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_markdown_shows_every_figure_with_its_ratio(report):
    text = markdown(report)
    for f in report["figures"].values():
        assert f"| {f['what']} |" in text
        if f["ratio"] is not None:
            assert f"{f['ratio']:.3f}x" in text
    assert text.count("\n| ") == len(report["figures"]) + 1  # header + one row per figure


def test_runs_alternate_who_goes_first():
    order = []
    a_times, b_times = side_by_side(lambda: order.append("a"), lambda: order.append("b"), 5)
    assert len(a_times) == len(b_times) == 5
    assert order == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]  # warm-up, then 5 rounds


@pytest.mark.parametrize("changes, field", [({"repeats": 3}, "repeats"), ({"device": "tpu"}, "device"),
                                            ({"steps": 0}, "steps"), ({"size": 30}, "size"),
                                            ({"threads": 0}, "threads"), ({"quick": "yes"}, "quick")])
def test_bad_settings_are_refused_by_name(changes, field):
    with pytest.raises(InvalidParameter) as error:
        SpeedConfig(**changes).check()
    assert error.value.field == field


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(InvalidParameter, match="device"):
        SpeedConfig(device="cuda").check()
    assert SpeedConfig(device="auto").torch_device == torch.device("cpu")
