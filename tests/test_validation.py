"""Every parameter is validated before compute (property-based), and outputs are all-or-nothing."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from recomposer.errors import InvalidParameter
from recomposer.provenance import read_provenance, write_png
from recomposer.tasks.generate import GenerateRequest

numbers = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.none(), st.text(max_size=3))

RULES = {  # field -> is this value allowed?
    "steps": lambda v: type(v) is int and 1 <= v <= 1000,
    "guidance": lambda v: type(v) in (int, float) and math.isfinite(v) and 0 <= v <= 100,
    "seed": lambda v: type(v) is int and 0 <= v,
    "batch": lambda v: type(v) is int and 1 <= v <= 64,
    "width": lambda v: v is None or (type(v) is int and 8 <= v <= 4096),
    "height": lambda v: v is None or (type(v) is int and 8 <= v <= 4096),
    "strength": lambda v: v is None or (type(v) in (int, float) and math.isfinite(v) and 0 <= v <= 1 and 20 * v >= 1),
}


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(sorted(RULES)), value=numbers)
def test_each_field_is_accepted_exactly_by_its_rule(field, value):
    request = GenerateRequest("x", steps=20, **{field: value}) if field != "steps" else GenerateRequest("x", steps=value)
    if RULES[field](value):
        request.check()
    else:
        with pytest.raises(InvalidParameter) as e:
            request.check()
        assert str(e.value).startswith(f"{field}:") and "must be" in str(e.value)


@pytest.mark.parametrize("name", ["lms", "", "DDIM", None, 3])
def test_unknown_schedulers_list_the_allowed_names(name):
    with pytest.raises(InvalidParameter, match="^scheduler: must be one of ddim, ddpm"):
        GenerateRequest("x", scheduler=name).check()


PROVENANCE = {"format": 1, "task": "generate", "batch_index": 0, "inputs": {}, "sampler_label": "DDIM", "seed": 1,
              "params": {"prompt": "p", "negative": "", "steps": 2, "guidance": 1.0, "width": 8, "height": 8},
              "model": {"kind": "memory", "path": None, "config": None, "sha256": "0" * 64, "dtype": "fp32",
                        "device": "cpu"}}


def test_png_writes_are_all_or_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    write_png(target, Image.new("RGB", (8, 8), "red"), PROVENANCE)
    before = target.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # a kill in the middle of encoding

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        write_png(target, Image.new("RGB", (8, 8), "blue"), PROVENANCE)
    assert target.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temp file left behind
    assert read_provenance(target)["seed"] == 1


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    path = write_png(tmp_path / "p.png", Image.new("RGB", (8, 8)), PROVENANCE)
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
