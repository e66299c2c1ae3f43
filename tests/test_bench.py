"""`recomposer bench controllability|speed --quick`: the CI-sized runs write well-formed reports."""

import json
import math

from PIL import Image

from recomposer.cli import main
from recomposer.evaluation.controllability import KINDS, MIXED, PAIRS

SETTINGS = ("floor", "single", "pairs", "mixed", "ceiling", "vae")


def test_bench_controllability_quick_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["bench", "controllability", "--quick", "--control-scale", "1.5", "--control-mode", "control",
                 "--scheduler", "euler_a", "--guidance-rescale", "0.7", "--guidance-interval", "0.1:0.9",
                 "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bars.png", "examples.png", "figures.json", "report.json",
                                                     "report.md"]
    report = json.loads((out / "report.json").read_text())
    assert set(report["conditions"]) == set(KINDS) and report["settings"]["control_scale"] == 1.5
    assert report["settings"]["control_mode"] == "control" and report["settings"]["scheduler"] == "euler_a"
    assert report["settings"]["guidance_rescale"] == 0.7 and report["settings"]["guidance_interval"] == [0.1, 0.9]
    in_pairs = {k for pair in PAIRS for k in pair}
    in_mixed = {k for mix in MIXED for k in mix}
    for kind, row in report["conditions"].items():
        for setting in SETTINGS:
            value = row[setting]
            expected = setting != "pairs" or kind in in_pairs
            expected = expected and (setting != "mixed" or kind in in_mixed)
            assert (value is not None) == expected, (kind, setting)
            if value is not None and value != "inf":
                assert math.isfinite(value)
    # the ceiling is the judge on the scene itself: exact figures where the judge is exact
    ceiling = {kind: row["ceiling"] for kind, row in report["conditions"].items()}
    assert ceiling["palette"] > 0.999 and ceiling["image_embedding"] > 0.999 and ceiling["masked_image"] == "inf"
    assert ceiling["instances"] > 0.8 and ceiling["sketch"] > 0.8 and ceiling["caption"] > 0.8
    assert report["held_out_caption"]["ceiling"]["colour_accuracy"] is not None
    # the renders through the bundled VAE: a round trip, so close to the render but not the render itself
    vae = {kind: row["vae"] for kind, row in report["conditions"].items()}
    assert 22 < vae["masked_image"] < 40 and 0.9 < vae["palette"] < 1.0 and vae["image_embedding"] > 0.9
    assert report["held_out_caption"]["vae"]["colour_accuracy"] is not None
    assert all(row["vae"] is not None for row in report["controlnet"]["kinds"].values())
    assert {"renders", "vae", "floor", "conditioned"} <= set(report["realism"])
    text = (out / "report.md").read_text()
    assert "steps of euler_a, guidance 3.0, rescaled by φ 0.7 in [0.1, 0.9] of the steps." in text
    assert all(f"| {kind} |" in text for kind in KINDS) and "Fréchet" in text and "through the VAE" in text
    assert Image.open(out / "bars.png").size[0] > 0 and Image.open(out / "examples.png").size[1] > 0


BAD = [
    (("controllability", "--scenes", "1"), "scenes"),
    (("controllability", "--control-scale", "-1"), "control-scale"),
    (("controllability", "--control-mode", "loud"), "control-mode"),
    (("controllability", "--scheduler", "fast"), "scheduler"),
    (("controllability", "--guidance-rescale", "2"), "guidance-rescale"),
    (("controllability", "--guidance-interval", "0.5"), "guidance-interval"),
    (("edits", "--image-guidance", "nan"), "image-guidance"),
    (("edits", "--scheduler", "fast"), "scheduler"),
    (("speed", "--repeats", "2"), "repeats"),
]


def test_bench_refuses_bad_input_and_an_existing_folder(tmp_path, capsys):
    for args, field in BAD:
        assert main(["bench", *args, "-o", str(tmp_path / "a")]) == 2, args
        assert field in capsys.readouterr().err and not (tmp_path / "a").exists(), args
    assert main(["bench", "controllability", "--quick", "-o", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err


def test_bench_speed_quick_writes_its_report(tmp_path):
    out = tmp_path / "speed"
    assert main(["bench", "speed", "--quick", "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["setup"]["repeats"] >= 5
    assert (out / "report.md").read_text().count("|") > 10
