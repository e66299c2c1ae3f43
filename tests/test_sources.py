"""One rule for every input that gives conditions (conditions/sources.py), one resize mode (conditions/fitting.py),
and a record in every PNG (``recomposer info``), through the real command line on the bundled model."""

import json

import numpy as np
import pytest
from PIL import Image

from recomposer.cli import main
from recomposer.conditions import Depth, Instances, Sketch
from recomposer.conditions.fitting import crop_box, fit_condition, fit_image
from recomposer.conditions.sources import read_source
from recomposer.errors import InvalidParameter
from recomposer.provenance import read_provenance


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A world sample at 128 px (twice the bundled model's side) and its decomposition folder."""
    folder = tmp_path_factory.mktemp("world") / "scene"
    assert main(["world", "sample", "11", "-o", str(folder), "--size", "128"]) == 0
    return folder


# ---------------------------------------------------------------- the resize mode

def test_crop_box_keeps_the_target_aspect_centred():
    assert crop_box(200, 100, (64, 64)) == (50, 0, 150, 100)
    assert crop_box(100, 200, (64, 32)) == (0, 75, 100, 125)
    assert fit_image(Image.new("RGB", (300, 100)), (64, 48)).size == (64, 48)


def test_fitted_conditions_keep_what_they_are():
    labels = np.zeros((128, 128), np.int32)
    labels[10:60, 10:60], labels[70:120, 20:30], labels[0:2, 126:128] = 1, 2, 3  # a speck that may vanish
    fitted = fit_condition(Instances.from_label_map(labels), (64, 64))
    assert fitted.size == (64, 64) and len(fitted) == 3  # every mask kept, even one that shrank to nothing
    assert fitted.masks[0, 5:30, 5:30].all() and not fitted.masks[0, 40:].any()
    lines = np.zeros((256, 256), bool)
    lines[100, 20:230] = True  # one 1-px line: plain nearest sampling would keep it only on every 4th row
    lines[101:, 128] = True
    sketch = fit_condition(Sketch(lines), (64, 64))
    assert sketch.lines.shape == (64, 64) and sketch.lines[25, 8:55].all() and sketch.lines[30:, 32].all()
    depth = fit_condition(Depth(np.linspace(0, 1, 256 * 128, dtype=np.float32).reshape(128, 256)), (32, 32))
    assert depth.size == (32, 32) and 0.2 < depth.values.mean() < 0.8  # the centre square of the ramp


# ---------------------------------------------------------------- one rule for sources

def test_world_layers_are_read_as_the_conditions_they_are(sample):
    held = read_source(sample, ("instances", "sketch", "depth", "intensity"), "instances-from")
    count = len(json.loads((sample / "objects.json").read_text()))
    assert len(held["instances"]) == count > 0  # the label map is a layout, not a dark picture with 0 instances
    alone = read_source(sample / "instances.png", ("instances",), "instances-from")
    assert np.array_equal(alone["instances"].label_map(), held["instances"].label_map())
    assert np.array_equal(held["sketch"].lines, np.asarray(Image.open(sample / "sketch.png")) > 127)
    with pytest.raises(InvalidParameter, match="sketch-from.*world instances layer"):
        read_source(sample / "instances.png", ("sketch",), "sketch-from")
    assert isinstance(read_source(sample / "image.png", ("palette",), "palette-from"), Image.Image)
    with pytest.raises(InvalidParameter, match="palette-from.*palette.json"):
        read_source(sample, ("palette",), "palette-from")  # a world folder has no palette layer


def test_every_composer_command_takes_images_folders_and_files(sample, tmp_path, capsys):
    parts = tmp_path / "parts"
    code, _, err = run(capsys, "decompose", sample / "image.png", "-o", parts)
    assert code == 0, err
    common = ("--steps", 2, "--seed", 3)
    runs = {
        "compose-layer": ("compose", "--instances-from", sample / "instances.png", "--weight", "instances:2:0:0.6",
                          "--caption", "shapes", "--base", "caption"),
        "compose-folder": ("compose", "--sketch-from", parts, "--palette-from", parts / "palette.json"),
        "variations": ("variations", parts, "--keep", "image_embedding,palette", "--batch", 1),
        "interpolate": ("interpolate", parts, sample / "image.png", "--frames", 2, "--kinds", "palette"),
        "recolour": ("recolour", sample, "--palette-from", parts, "--keep", "sketch,instances"),
        "colourise": ("colourise", sample / "intensity.png", "--palette-from", parts / "palette.json"),
        "style": ("style", sample / "sketch.png", "--style", parts),
        "reconstruct": ("reconstruct", parts, "--kinds", "palette,sketch"),
    }
    for name, args in runs.items():
        code, out, err = run(capsys, *args, *common, "-o", tmp_path / name)
        assert code == 0, (name, err)
        first = tmp_path / name / sorted(p.name for p in (tmp_path / name).glob("*.png"))[0]
        assert Image.open(first).size == (64, 64), name  # 128 px inputs fitted to the model's native side
    kinds = read_provenance(next((tmp_path / "compose-layer").glob("3.png")))["conditions"]
    assert kinds["instances"]["count"] > 0


def test_off_native_sizes_are_said_once_and_inputs_fitted(sample, tmp_path, capsys):
    Image.new("L", (128, 128), 255).save(tmp_path / "mask.png")
    code, out, err = run(capsys, "edit", sample / "image.png", "--mask", tmp_path / "mask.png", "--steps", 1,
                         "--seed", 0, "-o", tmp_path / "e")
    assert code == 0, err
    assert Image.open(tmp_path / "e" / "0.png").size == (64, 64) and "off its native size" not in err
    code, out, err = run(capsys, "compose", "--sketch-from", sample, "--width", 96, "--height", 64, "--steps", 1,
                         "--seed", 0, "-o", tmp_path / "w")
    assert code == 0, err
    assert Image.open(tmp_path / "w" / "0.png").size == (96, 64)
    assert err.count("warning: size: the model was trained at 64x64 px; 96x64 is off its native size") == 1
    code, out, err = run(capsys, "compose", "--caption", "x", "--width", 90, "-o", tmp_path / "bad")
    assert code == 2 and err.startswith("error: width:") and not (tmp_path / "bad").exists()


# ---------------------------------------------------------------- every PNG says what it is

def test_info_prints_every_png_record_as_standard_json(sample, tmp_path, capsys):
    code, out, err = run(capsys, "info", sample / "depth.png")
    assert code == 0 and json.loads(out) == {"format": 1, "layer": "depth", "recomposer": json.loads(out)["recomposer"],
                                             "what": "world layer"}
    code, _, err = run(capsys, "compose", "--caption", "a red circle", "--steps", 1, "--seed", 5, "--batch", 2,
                       "-o", tmp_path / "c")
    assert code == 0, err
    code, out, err = run(capsys, "info", tmp_path / "c" / "5.png")
    record = json.loads(out)
    assert code == 0 and record["task"] == "compose" and record["invocation"]["command"] == "compose"
    code, out, err = run(capsys, "info", tmp_path / "c" / "5-grid.png")
    assert code == 0 and json.loads(out)["invocation"]["options"]["caption"] == "a red circle"
    Image.new("RGB", (8, 8)).save(tmp_path / "foreign.png")
    code, out, err = run(capsys, "info", tmp_path / "foreign.png")
    assert code == 2 and err.count("\n") == 1 and "carries no recomposer record" in err
