"""Instruction edits: the change stays inside its mask, shows, is named right, and never leaks held-out data."""

import math
from collections import Counter
from functools import lru_cache

import numpy as np
import pytest

from recomposer.errors import InvalidParameter
from recomposer.world.edits import EDIT_KINDS, STYLE_WORDS, Edit, footprint, make_edit, random_edit, refer
from recomposer.world.relations import inside_pairs
from recomposer.world.render import render
from recomposer.world.scene import (COLOURS, MAX_OBJECTS, Background, Scene, WorldConfig, WorldObject, check_scene,
                                    is_held_out, sample_scene)
from recomposer.world.shapes import SHAPES

N_EDITS = 200


@lru_cache(maxsize=None)
def edits() -> tuple[Edit, ...]:
    """~200 random edits of sampled training scenes, plus one of every kind per scene for a few scenes."""
    rng = np.random.default_rng(1234)
    out = [random_edit(sample_scene(seed), rng) for seed in range(N_EDITS)]
    for seed in range(1000, 1012):
        scene = sample_scene(seed, WorldConfig(min_objects=2, max_objects=7))
        out += [make_edit(scene, kind, rng) for kind in EDIT_KINDS]
    return tuple(out)


@pytest.mark.parametrize("size", [64, 128])
def test_edits_change_only_inside_their_mask_and_do_change_it(size):
    for e in edits():
        a, b = render(e.before, size).image, render(e.after, size).image
        mask = e.changed_mask(size)
        assert mask.shape == (size, size) and mask.dtype == bool
        differ = (a != b).any(-1)
        assert not (differ & ~mask).any(), (e.kind, e.instruction)
        assert differ.any(), (e.kind, e.instruction)  # the edit shows


def test_mask_is_the_footprint_before_and_after():
    for e in edits()[:60]:
        if e.kind == "background":
            assert e.changed_mask(32).all()
            continue
        expected = np.zeros((32, 32), bool)
        if e.kind != "add":
            expected |= footprint(e.before.objects[e.target], 32)
        if e.kind != "remove":
            expected |= footprint(e.after.objects[e.target], 32)
        assert (e.changed_mask(32) == expected).all()
        assert not e.changed_mask(32).all()  # an object edit is local


def test_footprint_contains_the_instance_mask():
    scene = sample_scene(7)
    labels = render(scene, 96).labels
    for k, obj in enumerate(scene.objects):
        assert not ((labels == k + 1) & ~footprint(obj, 96)).any()


def test_every_kind_is_reachable_from_random_edits():
    counts = Counter(e.kind for e in edits()[:N_EDITS])
    assert set(counts) == set(EDIT_KINDS), counts
    assert min(counts.values()) >= 8, counts


def test_after_scenes_are_valid_and_inside_the_image():
    for e in edits():
        check_scene(e.after)
        for o in e.after.objects:
            assert o.size <= o.x <= 1 - o.size and o.size <= o.y <= 1 - o.size


def test_held_out_combinations_are_never_produced_by_default():
    for e in edits():
        assert not is_held_out(e.after), (e.kind, e.instruction)
    # recolouring a heart or restyling a star, over and over: never green hearts or striped stars
    heart = Scene((WorldObject("heart", "red", "flat", 0.3, 0.3, 0.15, 0.0),
                   WorldObject("star", "blue", "flat", 0.7, 0.7, 0.15, 0.0)), Background("solid", "cream", "sand"))
    rng = np.random.default_rng(0)
    for _ in range(150):
        for kind in ("recolour", "restyle", "swap_shape", "add"):
            assert not is_held_out(make_edit(heart, kind, rng).after)


def test_held_out_combinations_are_produced_when_allowed():
    scene = Scene((WorldObject("heart", "red", "flat", 0.3, 0.3, 0.15, 0.0),), Background("solid", "cream", "sand"))
    rng = np.random.default_rng(0)
    produced = {make_edit(scene, "recolour", rng, allow_held_out=True).after.objects[0].colour for _ in range(300)}
    assert "green" in produced


def test_held_out_inside_layout_is_not_produced_by_removal():
    # a star inside a ring, plus a third object: removing the third would leave the held-out layout
    scene = Scene((WorldObject("ring", "red", "flat", 0.3, 0.3, 0.25, 0.0),
                   WorldObject("star", "blue", "flat", 0.3, 0.3, 0.08, 0.0),
                   WorldObject("square", "pink", "flat", 0.8, 0.8, 0.12, 0.0)), Background("solid", "cream", "sand"))
    assert inside_pairs(scene) == [(1, 0)]
    rng = np.random.default_rng(0)
    for _ in range(50):
        e = make_edit(scene, "remove", rng)
        assert e.target != 2 and not is_held_out(e.after)
    kept = {make_edit(scene, "remove", rng, allow_held_out=True).target for _ in range(50)}
    assert 2 in kept


def test_edits_are_deterministic_given_the_generator():
    scene = sample_scene(3)
    for kind in EDIT_KINDS:
        assert make_edit(scene, kind, np.random.default_rng(5)) == make_edit(scene, kind, np.random.default_rng(5))
    assert random_edit(scene, np.random.default_rng(9)) == random_edit(scene, np.random.default_rng(9))


def test_edits_change_only_what_they_say():
    for e in edits():
        b, a = e.before.objects, e.after.objects
        if e.kind == "add":
            assert a[:-1] == b and e.target == len(b)
            continue
        if e.kind == "remove":
            assert a == b[:e.target] + b[e.target + 1:]
            continue
        if e.kind == "background":
            assert a == b and e.after.background != e.before.background and e.target is None
            continue
        assert len(a) == len(b) and all(a[j] == b[j] for j in range(len(b)) if j != e.target)
        old, new = b[e.target], a[e.target]
        changed = {f for f in ("shape", "colour", "style", "x", "y", "size") if getattr(old, f) != getattr(new, f)}
        expected = {"recolour": {"colour"}, "restyle": {"style"}, "move": {"x", "y"}, "resize": {"size"},
                    "swap_shape": {"shape"}}[e.kind]
        assert changed == expected or (e.kind == "move" and changed and changed <= expected), (e.kind, changed)


def test_instructions_say_what_changed():
    for e in edits():
        words = e.instruction.split()
        text = e.instruction
        if e.kind != "background":
            subject = (e.after if e.kind == "add" else e.before).objects[e.target]
            assert subject.shape in words
        if e.kind == "recolour":
            assert words[-1] == e.after.objects[e.target].colour or words[-2] == e.after.objects[e.target].colour
        elif e.kind == "restyle":
            adjective, noun = STYLE_WORDS[e.after.objects[e.target].style]
            assert adjective in words or noun in text
        elif e.kind == "swap_shape":
            assert words[-1] == e.after.objects[e.target].shape
        elif e.kind == "resize":
            grew = e.after.objects[e.target].size > e.before.objects[e.target].size
            assert any(w in words for w in (("bigger", "enlarge", "larger", "up") if grew else
                                            ("smaller", "shrink", "down", "reduce")))
        elif e.kind == "move":
            old, new = e.before.objects[e.target], e.after.objects[e.target]
            assert ("left" in words) == (new.x < old.x - 1e-9) and ("right" in words) == (new.x > old.x + 1e-9)
            assert (("up" in words or "higher" in words or "upwards" in words or "top" in words)
                    == (new.y < old.y - 1e-9))
        elif e.kind == "add":
            new = e.after.objects[e.target]
            assert new.colour in words
            row = "top" if new.y < 1 / 3 else "bottom" if new.y > 2 / 3 else None
            column = "left" if new.x < 1 / 3 else "right" if new.x > 2 / 3 else None
            assert (row in words if row else not {"top", "bottom"} & set(words))
            assert (column in words if column else not {"left", "right"} & set(words))
        elif e.kind == "remove":
            assert words[0] in ("remove", "delete", "take", "get", "erase")
        else:
            bg = e.after.background
            assert "background" in text and (bg.colour in text or "sunset" in text or "sky" in text
                                             or "beach" in text or "meadow" in text or "sandy" in text)


def _resolve(scene: Scene, phrase: str) -> list[int]:
    """Which objects a phrase 'the [position] [colour] shape' can mean (an independent reading)."""
    words = phrase.split()
    assert words[0] == "the"
    shape = words[-1]
    colour = words[-2] if words[-2] in COLOURS else None
    position = words[1] if len(words) > 2 and words[1] not in COLOURS else None
    group = [j for j, o in enumerate(scene.objects) if o.shape == shape and colour in (None, o.colour)]
    if position is None:
        return group
    sides = {"left": ("x", -1), "right": ("x", 1), "top": ("y", -1), "bottom": ("y", 1)}
    axis, sign = sides[position.removesuffix("most")]
    assert position.endswith("most") == (len(group) > 2)
    key = [sign * getattr(scene.objects[j], axis) for j in group]
    best = max(key)
    return [j for j, v in zip(group, key) if v == best and sorted(key)[-2] < v]


def test_referring_expressions_pick_out_one_object():
    named = 0
    for seed in range(150):
        scene = sample_scene(seed, WorldConfig(shapes=("star", "ring"), colours=("red", "blue", "white")))
        for k in range(len(scene.objects)):
            for with_colour in (False, True):
                phrase = refer(scene, k, with_colour)
                if phrase is None:
                    continue
                named += 1
                assert _resolve(scene, phrase) == [k], phrase
                assert (scene.objects[k].colour in phrase.split()) or not with_colour
    assert named > 500


def test_referring_expressions_prefer_the_shortest_name():
    bg = Background("solid", "cream", "sand")
    s = WorldObject("star", "red", "flat", 0.2, 0.5, 0.1, 0.0)
    assert refer(Scene((s,), bg), 0) == "the star"
    assert refer(Scene((s,), bg), 0, with_colour=True) == "the red star"
    two = Scene((s, WorldObject("star", "blue", "flat", 0.8, 0.5, 0.1, 0.0)), bg)
    assert refer(two, 0) == "the red star"
    twins = Scene((s, WorldObject("star", "red", "flat", 0.8, 0.5, 0.1, 0.0)), bg)
    assert refer(twins, 0) == "the left star" and refer(twins, 1) == "the right star"
    assert refer(twins, 1, with_colour=True) == "the right red star"
    stacked = Scene((s, WorldObject("star", "red", "flat", 0.22, 0.52, 0.1, 0.0)), bg)
    assert refer(stacked, 0) is None  # too close to tell apart: never edited


def test_add_and_remove_are_refused_at_the_limits():
    bg = Background("solid", "cream", "sand")
    one = Scene((WorldObject("star", "red", "flat", 0.5, 0.5, 0.1, 0.0),), bg)
    with pytest.raises(InvalidParameter, match="kind"):
        make_edit(one, "remove", np.random.default_rng(0))
    full = Scene(tuple(WorldObject(SHAPES[k], "red", "flat", 0.15 + 0.23 * (k % 4), 0.25 + 0.5 * (k // 4), 0.08, 0.0)
                       for k in range(MAX_OBJECTS)), bg)
    with pytest.raises(InvalidParameter, match="kind"):
        make_edit(full, "add", np.random.default_rng(0))
    rng = np.random.default_rng(0)
    assert all(random_edit(one, rng).kind != "remove" for _ in range(40))
    assert all(random_edit(full, rng).kind != "add" for _ in range(40))


def test_bad_arguments_are_refused():
    scene = sample_scene(0)
    with pytest.raises(InvalidParameter, match="kind"):
        make_edit(scene, "rotate", np.random.default_rng(0))
    with pytest.raises(InvalidParameter, match="rng"):
        make_edit(scene, "move", 0)
    e = make_edit(scene, "move", np.random.default_rng(0))
    with pytest.raises(InvalidParameter, match="size"):
        e.changed_mask(8)
    with pytest.raises(InvalidParameter, match="target"):
        Edit("background", scene, scene, "x", 0)


def test_moves_and_adds_keep_apart_from_the_others():
    for e in edits():
        if e.kind not in ("move", "add"):
            continue
        obj = e.after.objects[e.target]
        for j, o in enumerate(e.after.objects):
            if j != e.target:
                assert math.hypot(obj.x - o.x, obj.y - o.y) >= 0.75 * (obj.size + o.size) - 1e-12
