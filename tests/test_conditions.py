"""Conditions: save/load round trips, validation naming the field, intensity, masking and blobs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from recomposer.conditions import Caption, ConditionSet, MaskedImage
from recomposer.conditions.blobs import Blobs
from recomposer.conditions.files import load_condition, load_set, save_condition, save_set
from recomposer.conditions.intensity import Intensity
from recomposer.decompose.blobs import blobs_from_instances
from recomposer.decompose.intensity import WEIGHT_SET, intensity
from recomposer.decompose.masking import box_mask, from_box, from_ellipse, from_mask_file
from recomposer.errors import InvalidParameter, UnsafeFile
from recomposer.ellipse import Ellipse, ellipse_mask, iou

PHOTO = data.astronaut()[::8, ::8].copy()  # (64, 64, 3)


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    import recomposer.conditions as c

    monkeypatch.setattr(c, "KINDS", {**c.KINDS, "intensity": Intensity, "blobs": Blobs})


def round_trip(condition, tmp_path):
    save_condition(condition, tmp_path)
    assert Image.open(tmp_path / f"{condition.kind}.png").mode == "RGB"
    return load_condition(tmp_path, condition.kind)


def test_caption_and_masked_image_round_trip_exactly(tmp_path):
    assert round_trip(Caption("a red star"), tmp_path) == Caption("a red star")
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 10:30, 5:50] = 1
    m = MaskedImage(torch.rand(1, 3, 64, 64) * 2 - 1, mask)
    again = round_trip(m, tmp_path)
    assert torch.equal(again.image, m.image) and torch.equal(again.mask, m.mask)


def test_intensity_uses_its_weights_and_round_trips(tmp_path):
    plain = intensity(PHOTO)
    assert plain.weights == WEIGHT_SET[0]
    expected = (PHOTO.astype(np.float32) @ np.array(WEIGHT_SET[0], np.float32)) / 255
    assert np.allclose(plain.values, expected, atol=1e-6)
    drawn = {intensity(PHOTO, rng=np.random.default_rng(s)).weights for s in range(60)}
    assert drawn == set(WEIGHT_SET)  # uniform over the predefined set
    assert intensity(PHOTO, rng=np.random.default_rng(3)).weights == intensity(PHOTO, rng=np.random.default_rng(3)).weights
    again = round_trip(plain, tmp_path)
    assert np.array_equal(again.values, plain.values) and again.weights == plain.weights


@pytest.mark.parametrize("values,weights,field", [
    (np.zeros((4, 4), np.float64), (0.3, 0.3, 0.4), "intensity.values"),
    (np.full((4, 4), 2, np.float32), (0.3, 0.3, 0.4), "intensity.values"),
    (np.zeros((4, 4), np.float32), (0.5, 0.5, 0.5), "intensity.weights"),
])
def test_bad_intensity_names_the_field(values, weights, field):
    with pytest.raises(InvalidParameter, match=f"^{field}"):
        Intensity(values, weights)


def test_masks_from_box_ellipse_and_file(tmp_path):
    photo = Image.fromarray(PHOTO)
    box = from_box(photo, (8, 4, 24, 20))
    assert box.mask.sum() == 16 * 16 and box.mask[0, 0, 4, 8] == 1 and box.mask[0, 0, 20, 8] == 0
    assert torch.all(box.masked[:, :, 4:20, 8:24] == 0)  # the region to generate is blanked
    e = Ellipse(32.0, 32.0, 20.0, 10.0, 0.3)
    assert np.array_equal(from_ellipse(photo, e).mask[0, 0].numpy() > 0, ellipse_mask(e, 64, 64))
    Image.fromarray((box_mask(64, 64, (0, 0, 32, 64)) * 255).astype(np.uint8)).save(tmp_path / "m.png")
    assert from_mask_file(photo, tmp_path / "m.png").mask[0, 0, :, :32].all()
    with pytest.raises(InvalidParameter, match="^box"):
        from_box(photo, (10, 10, 5, 20))
    with pytest.raises(InvalidParameter, match="^mask"):
        from_box(photo, (0, 0, 0.2, 0.2))  # no pixel centre inside: nothing to generate


def test_blobs_fit_instances_and_round_trip(tmp_path):
    class FakeInstances:  # the decomposition's Instances condition has the same two fields
        masks = np.stack([ellipse_mask(Ellipse(20.0, 30.0, 12.0, 6.0, 0.5), 64, 64),
                          ellipse_mask(Ellipse(45.0, 15.0, 9.0, 9.0, 0.0), 64, 64)])
        labels = ("a tilted thing", None)

    blobs = blobs_from_instances(FakeInstances())
    assert blobs.size == (64, 64) and blobs.descriptions == ("a tilted thing", None)
    for e, m in zip(blobs.ellipses, FakeInstances.masks):
        assert iou(ellipse_mask(e, 64, 64), m) > 0.95
    again = round_trip(blobs, tmp_path)
    assert again == blobs
    assert again.scaled_to(128, 128).ellipses[0].cx == pytest.approx(2 * blobs.ellipses[0].cx)
    with pytest.raises(InvalidParameter, match="^blobs.descriptions"):
        Blobs(blobs.ellipses, ("one",), (64, 64))


def test_sets_round_trip_and_edits_return_new_sets(tmp_path):
    s = ConditionSet.of(Caption("x"), intensity(PHOTO))
    save_set(s, tmp_path)
    loaded = load_set(tmp_path)
    assert set(loaded) == {"caption", "intensity"} and loaded["caption"] == Caption("x")
    assert set(s.without("caption")) == {"intensity"} and set(s) == {"caption", "intensity"}
    assert s.with_(Caption("y"))["caption"].text == "y" and s["caption"].text == "x"


@pytest.mark.parametrize("damage,field", [
    (lambda p: p.write_text("{"), "intensity.json"),
    (lambda p: p.write_text(json.dumps({"format": 1, "kind": "caption", "meta": {}, "arrays": ["values"]})),
     "intensity.json.kind"),
    (lambda p: p.write_text(json.dumps({"format": 1, "kind": "intensity", "meta": {}, "arrays": ["values"],
                                        "extra": 1})), "intensity.json"),
])
def test_damaged_files_are_refused_naming_the_file(tmp_path, damage, field):
    save_condition(intensity(PHOTO), tmp_path)
    damage(tmp_path / "intensity.json")
    with pytest.raises(InvalidParameter) as e:
        load_condition(tmp_path, "intensity")
    assert str(e.value).startswith(str(tmp_path / field))


def test_a_pickle_in_place_of_the_arrays_is_refused(tmp_path):
    save_condition(intensity(PHOTO), tmp_path)
    (tmp_path / "intensity.safetensors").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(UnsafeFile):
        load_condition(tmp_path, "intensity")
