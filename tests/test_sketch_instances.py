"""Sketch and instance decomposition: scored against the shapes world's exact ground truth (with the
benchmark's own metric code, recomposer.decompose.metrics), on real photos, and as condition values."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import recomposer.conditions
from recomposer.conditions.files import load_condition, save_condition
from recomposer.conditions.instances import Instances
from recomposer.conditions.sketch import Sketch
from recomposer.decompose.instances import ClassicalSegmenter, Segmenter
from recomposer.decompose.metrics import EdgeCounts, edge_counts, edge_f1, match_masks, matched_miou, nonempty
from recomposer.decompose.sketch import SketchModel, TorchEdgeModel, sketch
from recomposer.errors import InvalidParameter, ModelError, UnsafeFile
from recomposer.world.dataset import eval_seeds, make_sample
from recomposer.world.scene import WorldConfig

torch.set_num_threads(1)

FLAT = WorldConfig(styles=("flat",))


@pytest.fixture(scope="module")
def flat_scenes():
    """20 flat evaluation scenes at 128 px (the benchmark's configuration, fewer seeds)."""
    return [make_sample(seed, FLAT, 128).rendered for seed in eval_seeds(20)]


@pytest.fixture(scope="module")
def photos():
    from skimage import data

    return {name: np.asarray(Image.fromarray(getattr(data, name)()).resize((384, 384), Image.Resampling.LANCZOS))
            for name in ("astronaut", "coffee", "chelsea")}


def no_2x2_blocks(lines: np.ndarray) -> bool:
    return not (lines[:-1, :-1] & lines[1:, :-1] & lines[:-1, 1:] & lines[1:, 1:]).any()


# ---- metrics ------------------------------------------------------------------------------------------


def test_edge_f1_tolerance_and_pooling():
    truth = np.zeros((32, 32), bool)
    truth[10, 4:28] = True
    assert edge_f1(truth, truth) == 1.0
    assert edge_f1(np.roll(truth, 2, axis=0), truth, tolerance=2) == 1.0  # 2 px off: still correct
    assert edge_f1(np.roll(truth, 3, axis=0), truth, tolerance=2) == 0.0
    half = truth.copy()
    half[10, 16:] = False
    c = edge_counts(half, truth)
    assert (c.precision, c.recall) == (1.0, 14 / 24)  # 12 drawn + 2 within tolerance of their end
    assert (c + c).f1 == pytest.approx(c.f1)  # pooling identical images changes nothing
    assert EdgeCounts().f1 == 1.0  # nothing to find, nothing found
    assert edge_f1(np.zeros_like(truth), truth) == 0.0 and edge_f1(truth, np.zeros_like(truth)) == 0.0


def test_matched_miou_is_hungarian_over_true_objects():
    a = np.zeros((3, 8, 8), bool)
    a[0, :4, :4] = a[1, 4:, 4:] = a[2, :2, 6:] = True
    assert matched_miou(a, a) == 1.0
    assert matched_miou(a[::-1], a) == 1.0  # order does not matter
    assert matched_miou(a[:2], a) == pytest.approx(2 / 3)  # a missed object counts 0
    m = match_masks(np.concatenate([a, a[:1] & False]), a)
    assert m.miou == 1.0 and m.unmatched_predictions == 1  # extras are reported, not scored
    merged = (a[0] | a[1])[None]
    assert matched_miou(merged, a[:2]) == pytest.approx(0.5 * 16 / 32)  # one object matched, IoU 16/32


# ---- sketch -------------------------------------------------------------------------------------------


def test_sketch_f1_on_flat_world_scenes(flat_scenes):
    total = EdgeCounts()
    for r in flat_scenes:
        total = total + edge_counts(sketch(r.image), r.sketch, tolerance=2)
    assert total.f1 >= 0.9, (total.precision, total.recall)
    assert total.recall >= 0.95


def test_sketch_finds_edges_between_colours_of_equal_lightness():
    import cv2

    lab = np.zeros((64, 64, 3), np.float32)
    lab[..., 0] = 60
    lab[:, 32:, 1] = 40  # the right half: same L, shifted a*
    rgb = np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0, 1)
    truth = np.zeros((64, 64), bool)
    truth[:, 31:33] = True
    lines = sketch(rgb)
    assert edge_f1(lines, truth) > 0.9
    gray = np.repeat((rgb @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, 2)
    assert lines.sum() > 3 * sketch(np.clip(gray, 0, 1)).sum()  # luminance alone barely sees it


def test_sketch_is_one_pixel_wide_deterministic_and_nontrivial_on_photos(photos):
    for name, photo in photos.items():
        for method in ("canny", "xdog"):
            lines = sketch(photo, method)
            assert lines.dtype == bool and lines.shape == photo.shape[:2]
            assert no_2x2_blocks(lines), (name, method)
            assert 0.005 < lines.mean() < 0.15, (name, method, lines.mean())
            assert np.array_equal(lines, sketch(photo.copy(), method))


def test_sketch_accepts_pil_float_and_gray(photos):
    photo = photos["coffee"]
    lines = sketch(photo)
    assert np.array_equal(lines, sketch(Image.fromarray(photo)))
    assert edge_f1(sketch(photo.astype(np.float32) / 255), lines) > 0.95
    assert sketch(photo[..., 0]).shape == lines.shape


def test_learned_edge_model_plugs_in():
    class Blurry:  # a stand-in for a learned model: thick soft edges
        def __call__(self, image):
            from scipy import ndimage

            gray = image.mean(2)
            return np.clip(ndimage.gaussian_gradient_magnitude(gray, 2.0) * 8, 0, 1)

    image = np.zeros((64, 64, 3), np.float32)
    image[16:48, 16:48] = 1.0
    assert isinstance(Blurry(), SketchModel)
    lines = sketch(image, "model", model=Blurry())
    truth = np.zeros((64, 64), bool)
    truth[16:48, 16] = truth[16:48, 47] = truth[16, 16:48] = truth[47, 16:48] = True
    assert no_2x2_blocks(lines) and edge_f1(lines, truth) > 0.8


def test_torch_edge_model_loads_safetensors_and_refuses_pickles(tmp_path):
    from safetensors.torch import save_file

    net = torch.nn.Conv2d(3, 1, 3, padding=1)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[0, :, 1, 2], net.weight[0, :, 1, 0] = 10.0, -10.0  # a horizontal derivative
        net.bias.fill_(-3.0)
    save_file(net.state_dict(), tmp_path / "edges.safetensors")
    model = TorchEdgeModel(torch.nn.Conv2d(3, 1, 3, padding=1), tmp_path / "edges.safetensors")
    image = np.zeros((32, 32, 3), np.float32)
    image[:, 16:] = 1.0
    lines = sketch(image, "model", model=model)
    assert lines[4:-4, 14:18].any(axis=1).all() and not lines[:, :12].any()
    torch.save(net.state_dict(), tmp_path / "edges.pt")
    with pytest.raises(UnsafeFile):
        TorchEdgeModel(torch.nn.Conv2d(3, 1, 3, padding=1), tmp_path / "edges.pt")
    with pytest.raises(ModelError):  # weights of another shape
        TorchEdgeModel(torch.nn.Conv2d(3, 1, 5, padding=2), tmp_path / "edges.safetensors")


@pytest.mark.parametrize("kwargs, field", [
    ({"method": "sobel"}, "method"),
    ({"method": "model"}, "model"),
    ({"model": lambda x: x[..., 0]}, "model"),
    ({"sigma": 0}, "sigma"),
    ({"low": 10, "high": 5}, "low"),
    ({"min_length": -1}, "min_length"),
    ({"method": "model", "model": lambda x: x[..., 0], "threshold": 1.5}, "threshold"),
])
def test_sketch_bad_parameters_name_the_field(kwargs, field):
    with pytest.raises(InvalidParameter) as e:
        sketch(np.zeros((32, 32, 3), np.uint8), **kwargs)
    assert e.value.field == field


@pytest.mark.parametrize("image", [np.zeros((32, 32, 4), np.uint8), np.zeros((4, 4, 3), np.uint8),
                                   np.full((32, 32, 3), 2.0), np.zeros((32, 32, 3), np.int64)])
def test_sketch_bad_images_name_the_field(image):
    with pytest.raises(InvalidParameter) as e:
        sketch(image)
    assert e.value.field == "image"


# ---- instances ----------------------------------------------------------------------------------------


def test_classical_instances_miou_on_flat_world_scenes(flat_scenes):
    segmenter = ClassicalSegmenter()
    ious, extra = [], 0
    for r in flat_scenes:
        match = match_masks(segmenter(r.image).masks, nonempty(r.masks))
        ious.extend(match.ious)
        extra += match.unmatched_predictions
    assert np.mean(ious) >= 0.8
    assert extra <= len(flat_scenes) // 4  # background pieces do not come back as objects


def test_classical_instances_on_photos_are_several_usable_regions(photos):
    segmenter = ClassicalSegmenter()
    assert isinstance(segmenter, Segmenter)
    for name, photo in photos.items():
        inst = segmenter(photo)
        assert inst.masks.shape[1:] == photo.shape[:2]
        areas = inst.masks.reshape(len(inst), -1).mean(axis=1)
        assert len(inst) >= 3, name
        assert (areas >= 0.0015 * 0.9).all(), name  # no specks (min_area, up to resampling)
        assert areas.sum() > 0.03, name  # the regions are not just crumbs
        assert list(areas) == sorted(areas, reverse=True)  # largest first
        again = segmenter(photo.copy())
        assert np.array_equal(inst.label_map(), again.label_map())  # deterministic


def test_ring_holes_and_touching_objects():
    """A ring's hole is background; touching objects of different colours stay apart."""
    image = np.full((96, 96, 3), (238, 230, 205), np.uint8)  # cream paper
    yy, xx = np.mgrid[:96, :96]
    ring = (np.hypot(yy - 30, xx - 30) < 20) & (np.hypot(yy - 30, xx - 30) >= 10)
    left, right = (abs(yy - 70) < 12) & (abs(xx - 55) < 12), (abs(yy - 70) < 12) & (abs(xx - 79) < 12)
    image[ring], image[left], image[right] = (40, 80, 210), (220, 40, 40), (245, 140, 30)
    truth = np.stack([ring, left, right])
    inst = ClassicalSegmenter()(image)
    assert len(inst) == 3 and matched_miou(inst.masks, truth) > 0.95


@pytest.mark.parametrize("kwargs, field", [({"max_side": 8}, "max_side"), ({"merge_contrast": -1}, "merge_contrast"),
                                           ({"min_area": 0.9}, "min_area"), ({"scale": "big"}, "scale")])
def test_segmenter_bad_parameters_name_the_field(kwargs, field):
    with pytest.raises(InvalidParameter) as e:
        ClassicalSegmenter(**kwargs)
    assert e.value.field == field


# ---- condition values ---------------------------------------------------------------------------------


def drawing(size=96, width=3, ink=0, paper=255) -> tuple[Image.Image, np.ndarray]:
    """A hand-drawing stand-in (strokes ``width`` px) and its 1-px centre lines."""
    lines = [((10, 10), (85, 20)), ((20, 80), (70, 30)), ((50, 85), (90, 85))]
    picture = Image.new("L", (size, size), paper)
    centre = Image.new("1", (size, size), 0)
    for a, b in lines:
        ImageDraw.Draw(picture).line([a, b], fill=ink, width=width)
        ImageDraw.Draw(centre).line([a, b], fill=1, width=1)
    return picture, np.asarray(centre, bool)


def test_user_sketch_dark_on_light_and_light_on_dark(tmp_path):
    dark, truth = drawing()
    light, _ = drawing(ink=255, paper=0)
    for source in (dark, light, np.asarray(dark.convert("RGB"))):
        s = Sketch.from_image(source)
        assert edge_f1(s.lines, truth) > 0.9 and no_2x2_blocks(s.lines)
    dark.save(tmp_path / "drawn.png")
    from_file = Sketch.from_image(tmp_path / "drawn.png")
    assert np.array_equal(from_file.lines, Sketch.from_image(dark).lines)
    assert not Sketch.from_image(np.full((16, 16), 255, np.uint8)).lines.any()  # blank page
    picture = np.asarray(from_file.picture())
    assert picture.shape == (96, 96, 3) and set(np.unique(picture)) <= {0, 255}
    assert (picture[..., 0] == 0).sum() == from_file.lines.sum()  # black lines on white


def test_save_load_round_trips_are_exact(tmp_path, monkeypatch):
    monkeypatch.setitem(recomposer.conditions.KINDS, "sketch", Sketch)
    monkeypatch.setitem(recomposer.conditions.KINDS, "instances", Instances)
    r = make_sample(int(eval_seeds(1)[0]), FLAT, 64).rendered
    s = Sketch(sketch(r.image))
    masks = np.concatenate([r.masks, np.zeros((1, 64, 64), bool)])  # an empty mask survives too
    inst = Instances(masks, tuple(["circle", None] * len(masks))[: len(masks)])
    for condition in (s, inst, Instances(np.zeros((0, 5, 7), bool))):
        save_condition(condition, tmp_path)
        back = load_condition(tmp_path, condition.kind)
        assert type(back) is type(condition) and back.meta() == condition.meta()
        for name, a in condition.arrays().items():
            assert back.arrays()[name].dtype == a.dtype and np.array_equal(back.arrays()[name], a)
        assert back.describe() == condition.describe()
        assert (tmp_path / f"{condition.kind}.png").is_file()
    assert np.array_equal(back.masks, np.zeros((0, 5, 7), bool))
    loaded = load_condition(tmp_path, "sketch")
    assert np.array_equal(loaded.lines, s.lines)


def test_instances_label_map_round_trip_and_picture():
    label_map = np.zeros((20, 30), np.int64)
    label_map[2:8, 3:9], label_map[10:18, 12:28] = 7, 3
    inst = Instances.from_label_map(label_map, ("cat", None))
    assert len(inst) == 2 and inst.size == (30, 20)
    assert np.array_equal(inst.masks[0], label_map == 3) and np.array_equal(inst.masks[1], label_map == 7)
    assert np.array_equal(Instances.from_label_map(inst.label_map()).masks, inst.masks)
    assert inst.labels == ("cat", None) and Instances(inst.masks).labels == (None, None)
    plain = np.asarray(Instances(inst.masks).picture())
    assert plain.shape == (20, 30, 3) and (plain[label_map == 0] == 0).all()
    assert len({tuple(plain[label_map == v][0]) for v in (0, 3, 7)}) == 3  # distinct colours
    assert not np.array_equal(np.asarray(inst.picture()), plain)  # "cat" is written on its mask


@pytest.mark.parametrize("build, field", [
    (lambda: Sketch(np.zeros((8, 8), np.uint8)), "sketch.lines"),
    (lambda: Sketch(np.zeros((2, 8, 8), bool)), "sketch.lines"),
    (lambda: Instances(np.ones((2, 4, 4), bool)), "instances.masks"),
    (lambda: Instances(np.zeros((4, 4), bool)), "instances.masks"),
    (lambda: Instances(np.zeros((2, 4, 4), np.uint8)), "instances.masks"),
    (lambda: Instances(np.zeros((2, 4, 4), bool), ("a",)), "instances.labels"),
    (lambda: Instances(np.zeros((1, 4, 4), bool), ["a"]), "instances.labels"),
    (lambda: Instances(np.zeros((1, 4, 4), bool), (3,)), "instances.labels[0]"),
    (lambda: Instances.from_label_map(-np.ones((4, 4), np.int32)), "label_map"),
    (lambda: Instances.from_label_map(np.zeros((4, 4), np.float32)), "label_map"),
    (lambda: Instances.from_saved({"count": 1, "labels": [None]}, {"label_map": np.full((4, 4), 2, np.int32)}),
     "instances.label_map"),
    (lambda: Sketch.from_image(np.zeros((4, 4, 2))), "sketch"),
    (lambda: Sketch.from_image(b"not an image"), "sketch"),
])
def test_bad_condition_values_name_the_field(build, field):
    from recomposer.errors import RecomposerError

    with pytest.raises(RecomposerError) as e:
        build()
    assert e.value.field == field
