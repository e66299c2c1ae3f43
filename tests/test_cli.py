"""The `recomposer` command: round trips with recall, provenance, and one clear line for every bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from recomposer.cli import main
from recomposer.provenance import read_provenance


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_provenance_and_recall_reproduces(tiny_dir, tmp_path, capsys):
    code, out, err = run(capsys, "generate", "a red circle", "--model", tiny_dir, "--scheduler", "euler_a",
                         "--steps", 4, "--seed", 9, "--batch", 2, "--width", 32, "--height", 40,
                         "--guidance-rescale", 0.5, "--guidance-end", 0.75, "-o", tmp_path)
    assert code == 0, err
    paths = out.split()
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["9.png", "10.png", "9-grid.png"]  # a batch gets a grid too
    record = read_provenance(paths[1])
    assert record["seed"] == 10 and record["batch_index"] == 1
    assert record["params"] | {} == {**record["params"], "prompt": "a red circle", "steps": 4, "width": 32,
                                     "height": 40, "scheduler": "euler_a", "guidance": 7.5, "batch": 2,
                                     "guidance_rescale": 0.5, "guidance_start": 0.0, "guidance_end": 0.75}
    assert record["model"]["kind"] == "diffusers-dir" and len(record["model"]["sha256"]) == 64
    assert {"torch", "diffusers", "transformers", "recomposer"} <= record["versions"].keys()
    a1111 = Image.open(paths[1]).text["parameters"]
    assert a1111.startswith("a red circle\n") and "Sampler: Euler a" in a1111 and "Seed: 10" in a1111
    code, out, err = run(capsys, "recall", paths[1], "-o", tmp_path / "again.png")
    assert code == 0 and "identical pixels" in out, err
    assert np.array_equal(np.asarray(Image.open(paths[1])), np.asarray(Image.open(tmp_path / "again.png")))


def test_img2img_and_inpainting_round_trip(tiny_dir, photo, tmp_path, capsys):
    photo.save(tmp_path / "in.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    code, out, err = run(capsys, "generate", "x", "--model", tiny_dir, "--steps", 4, "--seed", 1,
                         "--image", tmp_path / "in.png", "--mask", tmp_path / "mask.png", "-o", tmp_path / "o.png")
    assert code == 0, err
    record = read_provenance(tmp_path / "o.png")
    assert record["params"]["strength"] == 1.0 and record["inputs"]["mask"]["path"].endswith("mask.png")
    code, out, err = run(capsys, "recall", tmp_path / "o.png")
    assert code == 0 and "identical pixels" in out, err
    # a changed start image is noticed, not silently used
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in.png")
    code, out, err = run(capsys, "recall", tmp_path / "o.png")
    assert code == 2 and err.startswith("error: image:")


def test_existing_files_in_an_output_folder_are_never_overwritten(tiny_dir, tmp_path, capsys):
    for _ in range(2):
        assert run(capsys, "generate", "x", "--model", tiny_dir, "--steps", 2, "--seed", 3, "-o", tmp_path)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3-1.png", "3.png"]


BAD = [
    (["--steps", "0"], "steps"),
    (["--steps", "abc"], "--steps"),
    (["--guidance", "nan"], "guidance"),
    (["--guidance", "inf"], "guidance"),
    (["--guidance", "-1"], "guidance"),
    (["--guidance-rescale", "1.5"], "guidance-rescale"),
    (["--guidance-rescale", "nan"], "guidance-rescale"),
    (["--guidance-start", "0.8", "--guidance-end", "0.3"], "guidance-start"),
    (["--width", "33"], "width"),
    (["--height", "4"], "height"),
    (["--batch", "0"], "batch"),
    (["--seed", "-1"], "seed"),
    (["--scheduler", "lms_fancy"], "scheduler"),
    (["--strength", "0.5"], "strength"),  # without an image
    (["--image", "PHOTO", "--strength", "1.5"], "strength"),
    (["--image", "PHOTO", "--strength", "0.01"], "strength"),  # less than one step
    (["--image", "PHOTO", "--width", "64"], "width"),
    (["--image", "PHOTO", "--mask", "BIGMASK"], "mask"),
    (["--mask", "BIGMASK"], "mask"),
    (["--image", "EMPTY"], "image"),
    (["--image", "TEXT"], "image"),
    (["--device", "cuda:7"], "device"),
    (["--dtype", "fp8"], "dtype"),
    (["--dtype", "fp16", "--device", "cpu"], "dtype"),
]


@pytest.mark.parametrize("args,field", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_naming_the_field_and_writes_nothing(tiny_dir, photo, tmp_path, capsys, args, field):
    photo.save(tmp_path / "photo.png")
    Image.new("L", (64, 64), 255).save(tmp_path / "big.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    names = {"PHOTO": "photo.png", "BIGMASK": "big.png", "EMPTY": "empty.png", "TEXT": "text.png"}
    args = [str(tmp_path / names[a]) if a in names else a for a in args]
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "generate", "x", "--model", tiny_dir, "--steps", "10", *args, "-o", out_dir)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and field in lines[0], err
    assert "Traceback" not in err
    assert not out_dir.exists()


@pytest.mark.parametrize("problem", ["missing", "incomplete", "pickle"])
def test_bad_model_directories_are_refused(tiny_dir, tmp_path, capsys, problem):
    import shutil

    model = tmp_path / "model"
    if problem != "missing":
        shutil.copytree(tiny_dir, model)
    if problem == "incomplete":
        shutil.rmtree(model / "vae")
    if problem == "pickle":
        weights = model / "unet" / "diffusion_pytorch_model.safetensors"
        weights.unlink()
        (model / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    code, out, err = run(capsys, "generate", "x", "--model", model, "-o", tmp_path / "out")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_installed_command_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "recomposer", "generate", "x", "--steps", "0", "-o", tmp_path],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: steps: must be an integer in [1, 1000] (got 0)"
    assert list(tmp_path.iterdir()) == []


def test_demo_runs_end_to_end_on_the_bundled_model(tmp_path, capsys):
    code, out, err = run(capsys, "demo", "-o", tmp_path / "demo", "--steps", 2)
    assert code == 0, err
    assert out.strip() == str(tmp_path / "demo" / "sheet.png")
    names = {p.name for p in (tmp_path / "demo").iterdir()}
    assert {"sheet.png", "caption.txt", "inputs-0.png", "palette-swap-scene-0.png", "caption-only-2.png"} <= names
    assert Image.open(tmp_path / "demo" / "caption-only-0.png").size == (64, 64)
    code, out, err = run(capsys, "demo", "-o", tmp_path / "demo")  # never overwrites
    assert code == 2 and err.startswith("error: output:")


def test_world_commands_write_sheets_samples_and_renders(tmp_path, capsys):
    code, out, err = run(capsys, "world", "sheet", "-o", tmp_path / "sheet.png", "--count", 2, "--size", 32)
    assert code == 0, err
    assert Image.open(tmp_path / "sheet.png").size[0] == 6 * 32
    code, out, err = run(capsys, "world", "sample", 4, "-o", tmp_path / "s", "--size", 48)
    assert code == 0, err
    assert {p.name for p in (tmp_path / "s").iterdir()} == {"scene.json", "caption.txt", "objects.json", "image.png",
                                                           "instances.png", "depth.png", "sketch.png",
                                                           "intensity.png"}
    code, out, err = run(capsys, "world", "render", tmp_path / "s" / "scene.json", "-o", tmp_path / "r.png",
                         "--size", 48)
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "r.png")), np.asarray(Image.open(tmp_path / "s" / "image.png")))
    broken = json.loads((tmp_path / "s" / "scene.json").read_text())
    broken["objects"][0]["colour"] = "mauve"
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    code, out, err = run(capsys, "world", "render", tmp_path / "bad.json", "-o", tmp_path / "bad.png")
    assert code == 2 and err.startswith("error: scene.objects[0].colour:") and not (tmp_path / "bad.png").exists()
    code, out, err = run(capsys, "world", "sheet", "--size", 8, "-o", tmp_path / "small.png")
    assert code == 2 and err.startswith("error: size:") and not (tmp_path / "small.png").exists()


# ---------------------------------------------------------------- recall replays any task

def test_recall_replays_composer_p2p_and_attention_pngs(tiny_dir, photo, tmp_path, capsys):
    photo.save(tmp_path / "photo.png")
    runs = [("p2p", "a red circle", "a blue circle", "--model", tiny_dir, "--steps", 3, "-o", tmp_path / "p"),
            ("attention", "a red circle", "--model", tiny_dir, "--steps", 2, "-o", tmp_path / "m"),
            ("generate", "x", "--model", tiny_dir, "--steps", 2, "--batch", 2, "--image", tmp_path / "photo.png",
             "--strength", 0.5, "-o", tmp_path / "g")]
    for args in runs:
        code, out, err = run(capsys, *args)
        assert code == 0, err
    second = sorted(p for p in (tmp_path / "g").glob("*.png") if "grid" not in p.name)[1]
    for png in (tmp_path / "p" / "edited.png", tmp_path / "m" / "image.png", second):
        assert read_provenance(png)["invocation"]["command"] in ("p2p", "attention", "generate")
        assert str(tmp_path) not in json.dumps(read_provenance(png)["invocation"]["inputs"])  # names, not folders
        code, out, err = run(capsys, "recall", png, "--inputs", tmp_path, "-o", tmp_path / f"again-{png.parent.name}.png")
        assert code == 0 and out.strip().endswith("identical pixels"), (png, err)
    assert read_provenance(tmp_path / "again-g.png")["invocation"]["options"]["seed"] is not None  # the seed chosen


def test_recall_refuses_changed_inputs_and_reports_differences(tiny_dir, photo, tmp_path, capsys):
    photo.save(tmp_path / "photo.png")
    code, out, err = run(capsys, "generate", "x", "--model", tiny_dir, "--steps", 2, "--image", tmp_path / "photo.png",
                         "--strength", 0.5, "--seed", 1, "-o", tmp_path / "g.png")
    assert code == 0, err
    photo.rotate(90).save(tmp_path / "photo.png")
    code, out, err = run(capsys, "recall", tmp_path / "g.png", "-o", tmp_path / "again.png")  # beside it, changed
    assert code == 2 and "--image" in err and "changed" in err and not (tmp_path / "again.png").exists()
    photo.save(tmp_path / "photo.png")
    from PIL import Image

    original = Image.open(tmp_path / "g.png")
    tampered = original.point(lambda v: 255 - v)  # other pixels under the same provenance
    from recomposer.provenance import write_png

    write_png(tmp_path / "h.png", tampered, read_provenance(tmp_path / "g.png"))
    code, out, err = run(capsys, "recall", tmp_path / "h.png", "-o", tmp_path / "again.png")
    assert code == 1 and "DIFFER" in out and "levels" in out


def _commands(group, path=()):
    """Every command of the CLI with its words, e.g. ("world", "sample")."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def _taking(option: str) -> list[tuple[str, ...]]:
    import typer

    from recomposer.cli import app

    return [words for words, command in _commands(typer.main.get_command(app))
            if any(option in p.opts for p in command.params)]


@pytest.mark.parametrize("option,bad,field", [("--device", "tpu9", "device"), ("--dtype", "fp8", "dtype"),
                                              ("--model", "MISSING", "model")])
def test_every_command_with_a_shared_option_checks_it_the_same_way(tmp_path, capsys, option, bad, field):
    """Issue 15, item 2: a device, dtype or model option is checked by every command that has it, in the same
    words, before anything else is needed (no other argument given)."""
    commands = _taking(option)
    assert len(commands) >= {"--device": 15, "--dtype": 4, "--model": 15}[option], commands
    value = str(tmp_path / "missing") if bad == "MISSING" else bad
    for words in commands:
        code, out, err = run(capsys, *words, option, value)
        assert code == 2 and err.startswith(f"error: {field}:"), (words, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (words, err)
