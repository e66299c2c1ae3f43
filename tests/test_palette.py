"""Composer's colour condition: the 180-colour palette and its smoothed Lab histograms (METHODS.md §1a).

The expected palette is written out here from the text of §1a, independently of the module; the
histograms are checked against small brute-force references computed with loops.
"""

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data
from skimage.color import hsv2rgb, rgb2lab

import recomposer.conditions as conditions
from recomposer.conditions import ConditionSet
from recomposer.conditions.files import load_condition, save_condition
from recomposer.conditions.palette import Palette
from recomposer import colour as P
from recomposer.errors import InvalidParameter

# --- the specification, typed in from §1a -------------------------------------------------------

HUES = [0.0, 0.0833, 0.166, 0.25, 0.333, 0.5, 0.56333, 0.666, 0.73, 0.803, 0.916]
# (saturation, value) of the 15 rows, top to bottom: five tints, the pure hue, five shades, four muted.
ROWS = [(1 / 6, 1), (2 / 6, 1), (3 / 6, 1), (4 / 6, 1), (5 / 6, 1),
        (1, 1),
        (1, 13 / 15), (1, 11 / 15), (1, 9 / 15), (1, 7 / 15), (1, 5 / 15),
        (0.4, 13 / 15), (0.4, 11 / 15), (0.4, 9 / 15), (0.4, 7 / 15)]
GREYS = [(14 - k) / 14 for k in range(15)]  # white -> black


def expected_hsv() -> np.ndarray:
    table = [(h, s, v) for h in HUES for (s, v) in ROWS]  # hue-major
    table += [(0.0, 0.0, g) for g in GREYS]
    return np.array(table)


def lab_of(rgb8: np.ndarray) -> np.ndarray:
    return rgb2lab(np.asarray(rgb8, np.uint8).reshape(1, -1, 3))[0]


@pytest.fixture(scope="module")
def photos():
    return {name: getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}


# --- the palette ---------------------------------------------------------------------------------


def test_rows_read_from_the_section_text():
    # §1a: saturation = linspace(0,1,7)[1:-1], 1, five 1s, four 0.4s; value = five 1s, 1,
    # linspace(1,0.2,7)[1:-1], linspace(1,0.2,7)[1:-2]; 15 of each.
    sats = [*np.linspace(0, 1, 7)[1:-1], 1, *[1] * 5, *[0.4] * 4]
    values = [*[1] * 5, 1, *np.linspace(1, 0.2, 7)[1:-1], *np.linspace(1, 0.2, 7)[1:-2]]
    assert len(sats) == len(values) == 15 == 1 + 5 + (2 * 5 - 1)
    np.testing.assert_allclose(np.array(ROWS), np.stack([sats, values], 1), atol=1e-15)
    np.testing.assert_allclose(GREYS, np.linspace(1, 0, 15), atol=1e-15)


def test_palette_hsv_value_by_value():
    hsv = P.palette_hsv()
    assert hsv.shape == (180, 3)
    want = expected_hsv()
    for i in range(180):
        np.testing.assert_allclose(hsv[i], want[i], atol=1e-12, err_msg=f"palette colour {i}")
    # the flattening: index 15*h + r is hue h, row r; 165 + g is grey g
    for h, hue in enumerate(HUES):
        for r, (s, v) in enumerate(ROWS):
            assert tuple(hsv[15 * h + r]) == pytest.approx((hue, s, v), abs=1e-12)
    assert hsv[165:, 2].tolist() == pytest.approx(GREYS, abs=1e-12)


def test_palette_rgb_and_lab_follow_skimage():
    want_hsv = expected_hsv()
    rgb, lab = P.palette_rgb(), P.palette_lab()
    assert rgb.shape == lab.shape == (180, 3)
    for i in range(165):  # each colour converted on its own
        np.testing.assert_allclose(rgb[i], hsv2rgb(want_hsv[i].reshape(1, 1, 3))[0, 0], atol=1e-12)
    for g in range(15):
        np.testing.assert_allclose(rgb[165 + g], [GREYS[g]] * 3, atol=1e-12)
    for i in range(180):
        np.testing.assert_allclose(lab[i], rgb2lab(rgb[i].reshape(1, 1, 3))[0, 0], atol=1e-9)
    # landmarks
    assert rgb[5].tolist() == pytest.approx([1, 0, 0])  # hue 0, row 5: pure red
    assert rgb[0].tolist() == pytest.approx([1, 5 / 6, 5 / 6])  # hue 0, palest tint
    assert rgb[75 + 5].tolist() == pytest.approx([0, 1, 1])  # hue 0.5, row 5: cyan
    assert lab[165].tolist() == pytest.approx([100, 0, 0], abs=1e-2)  # white (skimage: a, b within 5e-3)
    assert lab[179].tolist() == pytest.approx([0, 0, 0], abs=1e-9)  # black
    assert len({tuple(np.round(c, 6)) for c in lab}) == 180  # all distinct


def test_palette_copies_are_independent():
    a = P.palette_lab()
    a[:] = 0
    assert P.palette_lab()[165, 0] == pytest.approx(100, abs=1e-3)


# --- histograms, against brute force -----------------------------------------------------------


def brute_direct(image: np.ndarray, sigma: float) -> np.ndarray:
    """Per pixel, loop: weights exp(−d²/2σ²) to every palette colour, normalised; mean; no cutoff."""
    pal = P.palette_lab()
    lab = rgb2lab(image).reshape(-1, 3)
    hist = np.zeros(180)
    for x in lab:
        w = np.array([np.exp(-np.sum((x - p) ** 2) / (2 * sigma**2)) for p in pal])
        hist += w / w.sum()
    return hist / len(lab)


def brute_strict_smoothed(image: np.ndarray, sigma: float) -> np.ndarray:
    pal = P.palette_lab()
    lab = rgb2lab(image).reshape(-1, 3)
    strict = np.zeros(180)
    for x in lab:
        strict[min(range(180), key=lambda k: np.sum((x - pal[k]) ** 2))] += 1
    strict /= len(lab)
    out = np.zeros(180)
    for i in range(180):
        w = [np.exp(-np.sum((pal[i] - pal[j]) ** 2) / (2 * sigma**2)) for j in range(180)]
        out[i] = sum(w[j] * strict[j] for j in range(180)) / sum(w)
    out[out < 1e-5] = 0
    return out


@pytest.fixture(scope="module")
def tiny_image():
    return np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("sigma", [10.0, 4.0, 25.0])
def test_direct_matches_brute_force_and_sums_to_one(tiny_image, sigma):
    ref = brute_direct(tiny_image, sigma)
    assert ref.sum() == pytest.approx(1.0, abs=1e-12)  # before the cut, every pixel gives exactly 1
    cut = np.where(ref < 1e-5, 0, ref)
    hist = P.colour_histogram(tiny_image, sigma=sigma)
    assert hist.dtype == np.float32 and hist.shape == (180,)
    np.testing.assert_allclose(hist, cut, rtol=1e-5, atol=1e-8)
    assert 1 - 180 * 1e-5 <= hist.sum() <= 1 + 1e-6
    assert ((hist == 0) | (hist >= 1e-5)).all()


def test_direct_sums_to_one_on_a_photo(photos):
    hist = P.colour_histogram(photos["coffee"])
    assert hist.sum() == pytest.approx(1.0, abs=180 * 1e-5)


@pytest.mark.parametrize("sigma", [10.0, 3.0])
def test_strict_smoothed_matches_brute_force(tiny_image, sigma):
    hist = P.colour_histogram(tiny_image, sigma=sigma, method="strict-smoothed")
    np.testing.assert_allclose(hist, brute_strict_smoothed(tiny_image, sigma), rtol=1e-5, atol=1e-8)


def test_strict_smoothed_is_not_renormalised():
    # one pure-red pixel: strict = one-hot at 5; bin i becomes W_i5 / Σ_j W_ij, which sums to no
    # particular value
    red = np.array([[[255, 0, 0]]], np.uint8)
    hist = P.colour_histogram(red, method="strict-smoothed")
    pal = P.palette_lab()
    w = np.exp(-((pal[:, None] - pal[None]) ** 2).sum(-1) / 200)
    want = w[:, 5] / w.sum(1)
    want[want < 1e-5] = 0
    np.testing.assert_allclose(hist, want, rtol=1e-6)
    assert abs(hist.sum() - 1) > 1e-3


def test_pure_palette_colour_images_peak_at_their_index():
    rgb8 = P.palette_rgb8()
    for k in range(180):
        image = np.broadcast_to(rgb8[k], (4, 6, 3)).copy()
        hist = P.colour_histogram(image)
        assert hist.argmax() == k, f"palette colour {k} peaks at {hist.argmax()}"
        strict = P.colour_histogram(image, method="strict-smoothed")
        assert strict[k] > 0


def test_large_sigma_spreads_and_small_sigma_concentrates():
    image = np.broadcast_to(P.palette_rgb8()[40], (3, 3, 3)).copy()
    sharp, broad = P.colour_histogram(image, sigma=2.0), P.colour_histogram(image, sigma=40.0)
    assert sharp[40] > 0.99 and broad[40] < 0.2
    assert (broad > 0).sum() > (sharp > 0).sum()


# --- subsampling -------------------------------------------------------------------------------


def test_stride_rule_per_axis():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (482, 300, 3), dtype=np.uint8)  # strides 482//241+1 = 3, 300//241+1 = 2
    kept = P.subsample(image)
    assert kept.shape == (161, 150, 3)
    np.testing.assert_array_equal(kept, image[::3, ::2])
    np.testing.assert_array_equal(P.colour_histogram(image), P.colour_histogram(np.ascontiguousarray(image[::3, ::2])))


@pytest.mark.parametrize("side, stride", [(240, 1), (241, 2), (481, 2), (482, 3), (512, 3), (723, 4)])
def test_stride_boundaries(side, stride):
    image = np.zeros((side, 5, 3), np.uint8)
    assert P.subsample(image).shape == (len(range(0, side, stride)), 5, 3)


def test_pil_and_array_agree(photos):
    a = photos["chelsea"]
    np.testing.assert_array_equal(P.colour_histogram(a), P.colour_histogram(Image.fromarray(a)))


def test_invariant_to_pixel_order():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)  # stride 1: every pixel counts
    shuffled = rng.permutation(image.reshape(-1, 3)).reshape(40, 30, 3)
    for method in P.METHODS:
        np.testing.assert_allclose(P.colour_histogram(image, method=method),
                                   P.colour_histogram(shuffled, method=method), rtol=1e-5, atol=1e-9)


# --- real photos -------------------------------------------------------------------------------


def test_photos_differ_and_the_cat_is_orange(photos):
    hists = {name: P.colour_histogram(image) for name, image in photos.items()}
    names = sorted(hists)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(hists[a] - hists[b]).sum() > 0.3, (a, b)
    by_hue = hists["chelsea"][:165].reshape(11, 15).sum(1)  # mass per hue column
    assert by_hue.argmax() == 1  # hue 0.0833: orange (its dark rows are the browns)
    assert by_hue[1] > 0.4 and by_hue[5:9].sum() < 0.05  # little cyan/blue
    assert 15 <= hists["chelsea"].argmax() < 30  # the single heaviest bin is an orange/brown
    rocket = hists["rocket"][:165].reshape(11, 15).sum(1)
    assert rocket[6:9].sum() > by_hue[6:9].sum() + 0.3  # the rocket photo has a blue sky


# --- the condition -----------------------------------------------------------------------------


def test_condition_from_image(photos):
    cond = Palette.from_image(photos["coffee"], sigma=12, method="strict-smoothed")
    assert cond.kind == "palette" and cond.sigma == 12.0 and cond.method == "strict-smoothed"
    np.testing.assert_array_equal(cond.histogram, P.colour_histogram(photos["coffee"], 12, "strict-smoothed"))
    assert "sha256" in cond.describe() and cond.describe()["method"] == "strict-smoothed"
    assert "palette" in repr(cond).lower()


def test_condition_is_immutable_and_copies_its_input():
    h = np.zeros(180, np.float64)
    h[7] = 1.0
    cond = Palette(h)
    assert cond.histogram.dtype == np.float32
    h[7] = 5.0
    assert cond.histogram[7] == 1.0
    with pytest.raises(ValueError):
        cond.histogram[0] = 1.0
    with pytest.raises(AttributeError):
        cond.sigma = 3.0


def test_condition_equality():
    h = np.zeros(180, np.float32)
    h[3] = 1
    assert Palette(h) == Palette(h.copy()) and hash(Palette(h)) == hash(Palette(h.copy()))
    assert Palette(h) != Palette(h, sigma=5.0)
    assert Palette(h) != Palette(h, method="strict-smoothed")
    assert ConditionSet.of(Palette(h)) == ConditionSet.of(Palette(h.copy()))


@pytest.mark.parametrize("method, sigma", [("direct", 10.0), ("strict-smoothed", 7.5)])
def test_save_load_round_trip_is_exact(tmp_path, monkeypatch, photos, method, sigma):
    monkeypatch.setitem(conditions.KINDS, "palette", Palette)
    cond = Palette.from_image(photos["astronaut"], sigma=sigma, method=method)
    save_condition(cond, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"palette.json", "palette.safetensors", "palette.png"}
    back = load_condition(tmp_path, "palette")
    assert isinstance(back, Palette) and back == cond
    assert back.histogram.tobytes() == cond.histogram.tobytes()
    assert back.describe() == cond.describe()
    with Image.open(tmp_path / "palette.png") as im:
        assert im.mode == "RGB" and im.size == cond.picture().size


def test_load_refuses_a_bad_method(tmp_path, monkeypatch):
    monkeypatch.setitem(conditions.KINDS, "palette", Palette)
    h = np.ones(180, np.float32) / 180
    save_condition(Palette(h), tmp_path)
    record = json.loads((tmp_path / "palette.json").read_text())
    record["meta"]["method"] = "nearest"
    (tmp_path / "palette.json").write_text(json.dumps(record))
    with pytest.raises(InvalidParameter) as e:
        load_condition(tmp_path, "palette")
    assert e.value.field == "palette.method"
    del record["meta"]["sigma"]
    record["meta"]["method"] = "direct"
    (tmp_path / "palette.json").write_text(json.dumps(record))
    with pytest.raises(InvalidParameter, match="sigma"):
        load_condition(tmp_path, "palette")


def test_from_saved_without_the_array():
    with pytest.raises(InvalidParameter) as e:
        Palette.from_saved({"sigma": 10.0, "method": "direct"}, {})
    assert e.value.field == "palette.histogram"


# --- bad inputs --------------------------------------------------------------------------------


GOOD = np.zeros((4, 4, 3), np.uint8)


@pytest.mark.parametrize("image", [
    GOOD.astype(np.float32), GOOD[..., 0], np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4, 3), np.uint8),
    Image.new("L", (4, 4)), Image.new("RGBA", (4, 4)), [[0, 0, 0]], None])
def test_bad_images_are_refused(image):
    with pytest.raises(InvalidParameter) as e:
        P.colour_histogram(image)
    assert e.value.field == "image"


@pytest.mark.parametrize("sigma", [0, -1.0, float("nan"), float("inf"), True, "10", None])
def test_bad_sigma_is_refused(sigma):
    with pytest.raises(InvalidParameter) as e:
        P.colour_histogram(GOOD, sigma=sigma)
    assert e.value.field == "sigma"


def test_bad_method_is_refused():
    with pytest.raises(InvalidParameter) as e:
        P.colour_histogram(GOOD, method="strict")
    assert e.value.field == "method"


def one_hot(k=0, n=180, dtype=np.float32):
    h = np.zeros(n, dtype)
    h[k % n] = 1
    return h


@pytest.mark.parametrize("histogram, field", [
    (one_hot(n=179), "palette.histogram"),
    (one_hot().reshape(1, 180), "palette.histogram"),
    (list(one_hot()), "palette.histogram"),
    (one_hot().astype(bool), "palette.histogram"),
    (np.where(one_hot() > 0, np.nan, 0).astype(np.float32), "palette.histogram"),
    (one_hot() - 0.5, "palette.histogram"),
    (np.zeros(180, np.float32), "palette.histogram"),
])
def test_bad_histograms_are_refused(histogram, field):
    with pytest.raises(InvalidParameter) as e:
        Palette(histogram)
    assert e.value.field == field


@pytest.mark.parametrize("kwargs, field", [
    ({"sigma": 0.0}, "palette.sigma"), ({"sigma": "10"}, "palette.sigma"), ({"sigma": float("nan")}, "palette.sigma"),
    ({"method": "nearest"}, "palette.method"), ({"method": None}, "palette.method")])
def test_bad_settings_are_refused(kwargs, field):
    with pytest.raises(InvalidParameter) as e:
        Palette(one_hot(), **kwargs)
    assert e.value.field == field


def test_pictures_refuse_bad_histograms():
    for draw in (P.histogram_picture, P.palette_swatch):
        with pytest.raises(InvalidParameter):
            draw(np.ones(10))


# --- pictures ----------------------------------------------------------------------------------


def test_pictures(photos):
    hist = P.colour_histogram(photos["chelsea"])
    chart, swatch = P.histogram_picture(hist), P.palette_swatch(hist)
    assert chart.mode == swatch.mode == "RGB"
    assert chart.size == (720, 160) and swatch.size == (720, 48)
    rgb8 = P.palette_rgb8()
    top = int(hist.argmax())
    assert tuple(np.asarray(swatch)[24, 0]) == tuple(rgb8[top])  # heaviest colour first
    # the tallest bar reaches the top third of the chart, in its colour
    assert tuple(np.asarray(chart)[40, top * 4 + 1]) == tuple(rgb8[top])
    # a bin with no mass has no bar above the baseline
    empty = int(np.flatnonzero(hist == 0)[0])
    assert (np.asarray(chart)[: 160 - 16, empty * 4 : empty * 4 + 4] == 255).all()
    picture = Palette(hist).picture()
    assert picture.mode == "RGB" and picture.size == (720, 48 + 4 + 160)


def test_swatch_widths_follow_the_weights():
    h = np.zeros(180, np.float32)
    h[[5, 100, 170]] = [0.5, 0.3, 0.2]
    swatch = np.asarray(P.palette_swatch(h, width=100, height=4))
    rgb8 = P.palette_rgb8()
    row = [tuple(c) for c in swatch[0]]
    assert row[:50] == [tuple(rgb8[5])] * 50
    assert row[50:80] == [tuple(rgb8[100])] * 30
    assert row[80:] == [tuple(rgb8[170])] * 20
