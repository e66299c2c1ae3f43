"""The README runs as written (issue 15, item 8): every ``recomposer`` command in its bash blocks, top to bottom,
in one temporary folder, through the real command line, with two sampling or training steps instead of the
README's counts. Lines that name Stable Diffusion checkpoints run on a tiny SD-shaped model saved the same way
(a diffusers directory, or an original-layout single file with its configs); the one line that needs models
that cannot exist offline is listed in NEEDS_MODELS with its reason. A README command that fails fails here."""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recomposer.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
NEEDS_MODELS = {  # line prefix -> why it cannot run in a test (its options are covered by their own tests)
    "recomposer decompose photo.jpg -o parts-models/": "needs real DPT, CLIP and BLIP directories",
    "recomposer serve": "a server that runs until it is stopped (tests/test_serve.py, tests/test_webapp.py run it)",
}
STEP_OPTIONS = ("--steps", "--classifier-steps")
COUNTS = {"--scenes": "64", "--workers": "1",  # a world cache of 64 scenes in this process, not 32,768 in two
          "--count": "2", "--batch-size": "2",  # two pairs, two examples a step
          "--cooldown-steps": "1"}  # a decay within the two steps
SAMPLES = {"generate", "instruct", "p2p", "attention", "invert", "compose", "variations", "interpolate", "reconstruct",
           "edit", "colourise", "recolour", "style", "train", "composite", "visii", "make-pairs"}  # take --steps
SD_MODELS = {"path/to/sd-1.5", "sd-1.5", "sd-inpainting"}  # diffusers directories the README names


def readme_commands() -> list[str]:
    """Every ``recomposer`` command line of the README's bash blocks, continuation lines joined, comments cut."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("recomposer "):
                lines.append(line)
    return lines


def adapted(line: str, tiny_dir: Path, single_file: Path) -> list[str]:
    """The line's arguments with two steps and the tiny models in place of SD checkpoints."""
    args = shlex.split(line, comments=True)[1:]
    for k, arg in enumerate(args[:-1]):
        if arg in STEP_OPTIONS:
            args[k + 1] = "2"
        elif arg in COUNTS:
            args[k + 1] = COUNTS[arg]
        elif arg == "--model" and args[k + 1] in SD_MODELS:
            args[k + 1] = str(tiny_dir)
        elif arg == "--model" and args[k + 1] == "ip2p/":
            args[k + 1] = str(tiny_dir.parent / "tiny-ip2p")  # an InstructPix2Pix model of the same shape
        elif arg == "--model" and args[k + 1] == "model.safetensors":
            args[k + 1] = str(single_file)
        elif arg == "--config":
            args[k + 1] = str(tiny_dir)
        elif arg in ("--width", "--height"):
            args[k + 1] = "64"  # the README's 512 on a 32 px tiny model: the same code, 64x less work
    if args[0] in SAMPLES and "--steps" not in args and "--inversion" not in args:
        args += ["--steps", "2"]
    if args[:2] in (["train", "vae"], ["train", "analyser"]):
        args += ["--evaluate", "8"]  # held-out figures on 8 renders, not hundreds: a count, like the steps
    return args


@pytest.fixture
def inputs(tmp_path, monkeypatch, tiny):
    """The files the README's commands name, made from world renders and scikit-image's photos."""
    from skimage import data

    from recomposer.world.dataset import make_sample

    def scene(seed: int, size: int = 64) -> Image.Image:
        return Image.fromarray(make_sample(seed, size=size).rendered.image)

    photo = Image.fromarray(data.chelsea())
    files = {"photo.png": photo, "photo.jpg": photo, "other.jpg": Image.fromarray(data.coffee()),
             "in.png": scene(1, 32), "a.png": scene(2), "b.png": scene(3), "scene.png": scene(4),
             "grey.png": scene(5).convert("L"), "colours.png": scene(6), "other.png": scene(7),
             "content.png": scene(8), "style.png": scene(9),
             "my-drawing.png": Image.fromarray(np.where(np.arange(451)[None] % 40 < 2, 0, 255)
                                               .repeat(300, 0).astype(np.uint8), "L"),
             "my-depth.png": Image.fromarray(np.linspace(0, 255, 451 * 300).reshape(300, 451).astype(np.uint8))}
    box = np.zeros((64, 64), np.uint8)
    box[16:48, 16:48] = 255
    files["box.png"], files["mask.png"] = Image.fromarray(box), Image.fromarray(box[::2, ::2])
    files.update({"edges.png": scene(10, 32), "depth.png": scene(11, 32), "pose.png": scene(12, 32),
                  "left-half.png": Image.fromarray(np.tile((np.arange(32) < 16)[None] * 255, (32, 1)).astype(np.uint8)),
                  "right-half.png": Image.fromarray(np.tile((np.arange(32) >= 16)[None] * 255, (32, 1)).astype(np.uint8))})
    for name, image in files.items():
        image.save(tmp_path / name)
    for k, name in enumerate(("cn-canny", "cn-depth", "cn-pose")):  # ControlNets of the tiny model's shape
        from recomposer.training.controlnet import new_controlnet

        new_controlnet(tiny, seed=k).save_pretrained(tmp_path / name, safe_serialization=True)
    triplets = [{"image": "a.png", "conditioning_image": "my-drawing.png", "text": "a shape"},
                {"image": "b.png", "conditioning_image": "my-depth.png", "text": "shapes"}]
    (tmp_path / "triplets.jsonl").write_text("".join(json.dumps(t) + "\n" for t in triplets))
    jobs = [{"task": "generate", "request": {"prompt": "a red circle", "steps": 2, "seed": 1}},  # the README's, 2 steps
            {"task": "compose", "request": {"caption": "a blue square", "steps": 2},
             "inputs": {"sketch": "a.png", "palette": "b.png"}},
            {"task": "composite", "request": {"steps": 2}, "inputs": {"background": "a.png", "mask": "box.png"}}]
    (tmp_path / "jobs.jsonl").write_text("".join(json.dumps(j) + "\n" for j in jobs))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_readme_command_runs(inputs, tiny, tiny_dir, capsys):
    try:
        from ldm_checkpoint import write_ldm_checkpoint
    except ImportError:  # tests/ imported as a package
        from tests.ldm_checkpoint import write_ldm_checkpoint

    from recomposer.models.tiny import save_diffusers_dir, tiny_sd

    single_file = write_ldm_checkpoint(tiny, inputs / "model.safetensors")
    if not (tiny_dir.parent / "tiny-ip2p").is_dir():
        save_diffusers_dir(tiny_sd(seed=3, in_channels=8), tiny_dir.parent / "tiny-ip2p")
    lines = readme_commands()
    assert len(lines) > 30 and all(any(line.startswith(p) for line in lines) for p in NEEDS_MODELS)
    failed = []
    for line in lines:
        if any(line.startswith(prefix) for prefix in NEEDS_MODELS):
            continue
        code = main(adapted(line, tiny_dir, single_file))
        out, err = capsys.readouterr()
        if code != 0:
            failed.append(f"{line}\n    -> exit {code}: {err.strip().splitlines()[-1] if err.strip() else out}")
    assert not failed, "\n".join(failed)
