"""Content and style pairs: what restyling keeps is kept exactly, what it changes is what Style holds."""

from dataclasses import replace

import numpy as np
import pytest

from recomposer.errors import InvalidParameter
from recomposer.world.edits import footprint
from recomposer.world.pairs import (Style, apply_style, content_of, random_style, same_content, same_style, style_of,
                                    triplet)
from recomposer.world.render import render
from recomposer.world.scene import (HELD_OUT_SHAPE_STYLE, STYLES, Background, Scene, WorldConfig, WorldObject,
                                    is_held_out, sample_scene)


def _uniform(scene: Scene) -> bool:
    """Is the whole scene drawn in one Style (so that style_of describes all of it)?"""
    return apply_style(scene, style_of(scene)) == replace(scene, seed=None)


def _outlines(scene: Scene) -> tuple[bool, ...]:
    return tuple(o.style == "outline" for o in scene.objects)


def test_apply_style_keeps_content_and_sets_style():
    rng = np.random.default_rng(0)
    for seed in range(30):
        scene = sample_scene(seed, WorldConfig(held_out="allow"))
        style = random_style(rng)
        restyled = apply_style(scene, style)
        assert content_of(restyled) == content_of(scene) and style_of(restyled) == style and _uniform(restyled)
        assert restyled.seed is None
        assert apply_style(restyled, style_of(scene)) == apply_style(scene, style_of(scene))


def test_same_content_shares_the_layout_and_differs_in_style():
    rng = np.random.default_rng(1)
    for seed in range(15):
        scene = sample_scene(seed)
        scenes = same_content(scene, 5, rng)
        assert len(scenes) == 5
        assert all(content_of(s) == content_of(scene) and _uniform(s) for s in scenes)
        styles = [style_of(s) for s in scenes]
        assert len(set(styles)) == 5 and style_of(scene) not in styles
        assert len({s.name for s in styles}) == 5  # up to len(STYLES) restylings use different style names
        images = [render(s, 32).image for s in scenes]
        assert all((images[i] != images[j]).any() for i in range(5) for j in range(i))
        assert not any(is_held_out(s) for s in scenes)


def test_same_content_never_draws_held_out_styles_by_default():
    bg = Background("solid", "cream", "sand")
    scene = Scene((WorldObject("star", "red", "flat", 0.3, 0.3, 0.15, 0.0),
                   WorldObject("hexagon", "blue", "flat", 0.7, 0.7, 0.15, 0.0)), bg)
    names = {s.objects[0].style for s in same_content(scene, 12, np.random.default_rng(0))}
    assert names == set(STYLES) - {"stripes", "dots"}
    allowed = same_content(scene, 12, np.random.default_rng(0), WorldConfig(held_out="allow"))
    assert {s.objects[0].style for s in allowed} == set(STYLES)
    assert all(is_held_out(s) for s in same_content(scene, 4, np.random.default_rng(0), WorldConfig(held_out="only")))


def test_same_style_shares_the_style_and_differs_in_content():
    rng = np.random.default_rng(2)
    for seed in range(15):
        scene = apply_style(sample_scene(seed), random_style(rng))
        scenes = same_style(scene, 4, rng)
        assert all(style_of(s) == style_of(scene) and _uniform(s) for s in scenes)
        layouts = {content_of(s) for s in scenes} | {content_of(scene)}
        assert len(layouts) == 5
        assert not any(is_held_out(s) for s in scenes)


def test_same_style_scenes_share_every_background_pixel_no_object_touches():
    rng = np.random.default_rng(3)
    scene = apply_style(sample_scene(11), random_style(rng, name="grain", background_kind="textured"))
    scenes = [scene] + same_style(scene, 3, rng)
    size = 64
    touched = [np.logical_or.reduce([footprint(o, size) for o in s.objects]) for s in scenes]
    images = [render(s, size).image for s in scenes]
    for i in range(1, len(scenes)):
        free = ~(touched[0] | touched[i])
        assert free.sum() > size * size // 4
        assert (images[0][free] == images[i][free]).all()


def test_triplet_is_content_of_one_scene_in_the_style_of_another():
    for seed in range(60):
        t = triplet(seed)
        assert content_of(t.target) == content_of(t.content)
        assert style_of(t.target) == style_of(t.style) and _uniform(t.style) and _uniform(t.target)
        assert content_of(t.style) != content_of(t.content)
        assert t.content == sample_scene(t.content.seed)  # the content scene is a sample, as sampled
        assert not (is_held_out(t.content) or is_held_out(t.style) or is_held_out(t.target))


def test_triplets_are_deterministic_and_vary_with_the_seed():
    assert triplet(7) == triplet(7)
    assert triplet(7) != triplet(8)
    config = WorldConfig(max_objects=3, styles=("flat", "stripes"))
    assert triplet(7, config) == triplet(7, config)
    assert same_content(sample_scene(1), 3, np.random.default_rng(4)) == same_content(
        sample_scene(1), 3, np.random.default_rng(4))
    assert same_style(sample_scene(1), 3, np.random.default_rng(4)) == same_style(
        sample_scene(1), 3, np.random.default_rng(4))


def test_evaluation_triplets_have_held_out_targets():
    for seed in range(20):
        assert is_held_out(triplet(seed, WorldConfig(held_out="only")).target)


def test_restyling_keeps_instance_labels_exactly_unless_the_outline_style_comes_or_goes():
    """Labels are (coverage >= 1/2) of each object's geometry; only the outline style changes coverage.
    So labels agree exactly when each object is an outline in both scenes or in neither, and then so do
    the sketch and the depth of object pixels (a horizon background changes only background depth)."""
    same, differ = 0, 0
    for seed in range(80):
        t = triplet(seed)
        a, b = render(t.content, 64), render(t.target, 64)
        if _outlines(t.content) == _outlines(t.target):
            same += 1
            assert (a.labels == b.labels).all() and (a.sketch == b.sketch).all()
            objects = a.labels > 0
            assert (a.depth[objects] == b.depth[objects]).all()
        elif not (a.labels == b.labels).all():
            differ += 1
    assert same >= 20 and differ >= 5  # both cases occur: the condition is needed, not just sufficient


def test_same_content_labels_agree_between_non_outline_restylings():
    rng = np.random.default_rng(5)
    for seed in range(10):
        scenes = same_content(sample_scene(seed), 6, rng)
        solid = [render(s, 48).labels for s in scenes if s.objects[0].style != "outline"]
        assert len(solid) >= 3
        assert all((labels == solid[0]).all() for labels in solid)


def test_bad_arguments_are_refused():
    scene = sample_scene(0)
    rng = np.random.default_rng(0)
    for n in (0, -1, 2.0, True):
        with pytest.raises(InvalidParameter, match="n"):
            same_content(scene, n, rng)
    with pytest.raises(InvalidParameter, match="rng"):
        same_style(scene, 2, 0)
    for seed in (-1, 1.5, None):
        with pytest.raises(InvalidParameter, match="seed"):
            triplet(seed)
    with pytest.raises(InvalidParameter):
        apply_style(scene, Style("watercolour", 0.0, 0.3, 0, scene.background))
    with pytest.raises(InvalidParameter):  # a star can only be drawn in held-out stripes here
        same_content(Scene((WorldObject("star", "red", "flat", 0.5, 0.5, 0.2, 0.0),), scene.background), 1, rng,
                     WorldConfig(styles=("stripes",)))
    assert ("star", "stripes") in HELD_OUT_SHAPE_STYLE
