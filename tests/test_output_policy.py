"""One output policy for every command that writes pictures (issue 15, item 3), through the real CLI: another
extension than .png is refused before any work, a command's own input is never its output, and a folder is
written into with names that never overwrite."""

import pytest
from PIL import Image

from recomposer.cli import main


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    assert main(["world", "sample", "4", "-o", str(folder / "scene"), "--size", "64"]) == 0
    Image.open(folder / "scene" / "image.png").save(folder / "a.png")
    Image.open(folder / "scene" / "image.png").convert("L").save(folder / "grey.png")
    Image.new("L", (64, 64), 255).save(folder / "mask.png")
    return folder


# every command that writes pictures, with the inputs it needs ("A": a picture, "S": a scene.json)
COMMANDS = [
    ("generate", "a red circle"), ("compose", "--caption", "a red circle"), ("variations", "A"),
    ("reconstruct", "A"), ("interpolate", "A", "A"), ("edit", "A", "--mask", "M"), ("colourise", "G"),
    ("recolour", "A", "--palette-from", "A"), ("style", "A", "--style", "A"), ("p2p", "a red circle", "a blue circle"),
    ("attention", "a red circle"), ("world", "sheet"), ("world", "render", "S"), ("demo",), ("decompose", "A"),
    ("instruct", "A", "make it blue"),
]


def _args(inputs, command):
    names = {"A": inputs / "a.png", "G": inputs / "grey.png", "M": inputs / "mask.png",
             "S": inputs / "scene" / "scene.json"}
    return [names.get(a, a) for a in command]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_another_extension_is_refused_before_any_work(inputs, tmp_path, capsys, command):
    code, out, err = run(capsys, *_args(inputs, command), "-o", tmp_path / "out.jpg")
    assert code == 2 and err.startswith("error: output:") and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [c for c in COMMANDS if "A" in c or "S" in c or "G" in c],
                         ids=lambda c: " ".join(c[:2]))
def test_an_input_is_never_the_output(inputs, capsys, command):
    args = _args(inputs, command)
    victim = next(a for a in args if hasattr(a, "suffix"))
    before = victim.read_bytes()
    code, out, err = run(capsys, *args, "-o", victim)
    assert code == 2 and err.startswith("error: output:"), err
    assert victim.read_bytes() == before


def test_a_folder_is_written_into_and_never_overwritten(inputs, tmp_path, capsys):
    scene = inputs / "scene" / "scene.json"
    for expected in ("scene.png", "scene-1.png"):
        code, out, err = run(capsys, "world", "render", scene, "-o", tmp_path / "renders", "--size", 32)
        assert code == 0 and out.strip() == str(tmp_path / "renders" / expected), err
    code, out, err = run(capsys, "world", "render", scene, "-o", tmp_path / "one.png", "--size", 32)
    assert code == 0 and Image.open(tmp_path / "one.png").format == "PNG"
