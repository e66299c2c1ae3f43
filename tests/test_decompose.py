"""decompose() and `recomposer decompose`: every representation, skipped ones explained, bad input refused."""

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

from recomposer.cli import main
from recomposer.conditions.files import load_set
from recomposer.decompose.decomposer import KINDS, Backends, decompose
from recomposer.colour import colour_histogram
from recomposer.errors import RecomposerError
from recomposer.world.dataset import make_sample

PHOTO = Image.fromarray(data.astronaut()).resize((128, 128), Image.Resampling.LANCZOS)


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_everything_available_is_made_and_the_rest_is_explained():
    result = decompose(PHOTO, caption="an astronaut", mask=np.eye(128, dtype=bool))
    assert list(result.conditions) == ["caption", "image_embedding", "palette", "sketch", "instances", "intensity",
                                       "masked_image", "blobs"]
    assert result.conditions["image_embedding"].encoder.startswith("bundled:world-encoder@")  # the default
    assert set(result.skipped) == {"depth"}
    without = decompose(PHOTO, caption="x", backends=Backends(encoder=None))
    assert "image_embedding" in without.skipped and "--image-encoder" in without.skipped["image_embedding"]
    assert "--depth-model" in result.skipped["depth"]
    c = result.conditions
    assert c["sketch"].lines.shape == (128, 128) and c["intensity"].values.shape == (128, 128)
    assert len(c["blobs"].ellipses) == c["instances"].masks.shape[0] >= 2


def test_without_a_caption_the_caption_is_absent_never_invented():
    result = decompose(PHOTO, kinds=None)
    assert "caption" not in result.conditions and "caption" in result.skipped


def test_a_named_kind_without_a_backend_is_an_error_saying_how():
    with pytest.raises(RecomposerError, match="^depth: no depth backend"):
        decompose(PHOTO, kinds=("palette", "depth"))
    assert list(decompose(PHOTO, kinds=("blobs",)).conditions) == ["blobs"]


def test_shapes_world_histogram_is_identical_to_the_worlds():
    for seed in range(5):
        sample = make_sample(seed, size=64)
        image = Image.fromarray(sample.rendered.image)
        made = decompose(image, kinds=("palette",)).conditions["palette"].histogram
        assert np.array_equal(made, sample.palette)
        assert np.array_equal(made, colour_histogram(sample.rendered.image))


def test_cli_writes_every_condition_and_they_load_back(tmp_path, capsys):
    PHOTO.save(tmp_path / "in.png")
    left, _, disparity = data.stereo_motorcycle()
    depth = np.nan_to_num(disparity, posinf=0)[:128, :128]
    Image.fromarray((depth / depth.max() * 65535).astype(np.uint16)).save(tmp_path / "depth.png")
    code, out, err = run(capsys, "decompose", tmp_path / "in.png", "-o", tmp_path / "d", "--caption", "a person",
                         "--box", "10,10,60,60", "--depth", tmp_path / "depth.png", "--seed", 3)
    assert code == 0, err
    assert "skipped" not in err and err.strip().splitlines()[-1].startswith("done in ")  # nothing skipped: the bundled image encoder is the default, the depth map is given
    summary = json.loads((tmp_path / "d" / "decomposition.json").read_text())
    assert summary["kinds"] == list(KINDS)
    loaded = load_set(tmp_path / "d")
    assert set(loaded) == set(summary["kinds"])
    assert loaded["caption"].text == "a person" and loaded["masked_image"].mask.sum() == 50 * 50
    assert Image.open(tmp_path / "d" / "sheet.png").mode == "RGB"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


BAD = [
    (lambda p: p.write_bytes(b""), [], "image"),
    (lambda p: p.write_bytes(PNG_BYTES[: len(PNG_BYTES) // 2]), [], "image"),
    (lambda p: p.write_text("hello"), [], "image"),
    (lambda p: Image.new("1", (9000, 9000)).save(p, format="PNG"), [], "image"),  # a pixel bomb, 10 kB on disk
    (lambda p: PHOTO.save(p, format="ICO"), [], "image"),  # a format outside the allow-list
    (lambda p: PHOTO.save(p), ["--mask", "MASK64"], "mask"),
    (lambda p: PHOTO.save(p), ["--only", "palette,smell"], "only"),
    (lambda p: PHOTO.save(p), ["--only", "depth"], "depth"),
    (lambda p: PHOTO.save(p), ["--box", "10,10,5"], "box"),
    (lambda p: PHOTO.save(p), ["--box", "50,10,20,40"], "box"),
    (lambda p: PHOTO.save(p), ["--box", "1,1,2,2", "--ellipse", "5,5,3,2,0"], "mask"),
    (lambda p: PHOTO.save(p), ["--seed", "-4"], "seed"),
]


def _png_bytes():
    import io

    buffer = io.BytesIO()
    PHOTO.save(buffer, format="PNG")
    return buffer.getvalue()


PNG_BYTES = _png_bytes()


@pytest.mark.parametrize("make,args,field", BAD, ids=[f"{f}-{i}" for i, (_, _, f) in enumerate(BAD)])
def test_bad_input_is_one_line_and_leaves_no_output(tmp_path, capsys, make, args, field):
    make(tmp_path / "in.png")
    Image.new("L", (64, 64), 255).save(tmp_path / "mask64.png")
    args = [str(tmp_path / "mask64.png") if a == "MASK64" else a for a in args]
    code, out, err = run(capsys, "decompose", tmp_path / "in.png", "-o", tmp_path / "out", *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
