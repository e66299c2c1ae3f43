"""Captions of the shapes world: read back exactly, true to the scene, varied, and held-out combinations
kept out of the training stream."""

import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from recomposer.errors import InvalidParameter
from recomposer.world import captions as C
from recomposer.world.captions import caption, describe_object, object_phrase, parse_mentions, parse_relations
from recomposer.world.relations import in_front_of, inside_pairs, relation
from recomposer.world.render import render
from recomposer.world.scene import (BACKGROUND_COLOURS, COLOURS, HELD_OUT_COLOUR_SHAPE, HELD_OUT_LAYOUTS,
                                    HELD_OUT_SHAPE_STYLE, STYLES, Background, Scene, WorldConfig, WorldObject,
                                    is_held_out, sample_scene)
from recomposer.world.shapes import SHAPES

DOC = Path(__file__).parents[1] / "docs" / "world-captions.md"
ONLY = WorldConfig(held_out="only")
BG = Background("solid", "cream", "navy")


@pytest.fixture(scope="module")
def scenes():
    """250 training scenes and 250 held-out ones, with a caption each (caption rng seeded by the scene seed)."""
    out = []
    for config in (WorldConfig(), ONLY):
        for seed in range(250):
            scene = sample_scene(seed, config)
            out.append((scene, caption(scene, np.random.default_rng(seed))))
    return out


def _objects(scene, colour_shape):
    return [i for i, o in enumerate(scene.objects) if (o.colour, o.shape) == colour_shape]


def test_vocabularies_cover_the_world_and_never_share_a_word():
    assert set(C.COLOUR_WORDS) == set(COLOURS) and set(C.SHAPE_WORDS) == set(SHAPES)
    assert set(C.STYLE_WORDS) == set(STYLES) == set(C.STYLE_PHRASES)
    vocabularies = {
        **{f"colour {c}": set(w) for c, w in C.COLOUR_WORDS.items()},
        **{f"shape {s}": set(w) | {C.PLURALS[x] for x in w} for s, w in C.SHAPE_WORDS.items()},
        **{f"style {s}": set(w) for s, w in C.STYLE_WORDS.items()},
        **{f"size {s}": set(w) for s, w in C.SIZE_WORDS.items()},
        "counts": set(C.COUNT_WORDS) | {"a", "an", "the"},
        "backgrounds": set(BACKGROUND_COLOURS),
    }
    names = list(vocabularies)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not vocabularies[a] & vocabularies[b], (a, b)
    for c, words in C.COLOUR_WORDS.items():
        assert words[0] == c


def test_every_caption_mentions_every_object_with_its_true_colour_and_shape(scenes):
    for scene, text in scenes:
        said = Counter()
        for colour, shape, count in parse_mentions(text):
            said[colour, shape] += count
        assert said == Counter((o.colour, o.shape) for o in scene.objects), text


def test_counts_name_objects_that_share_colour_and_shape():
    star = WorldObject("star", "red", "flat", 0.2, 0.2, 0.1, 0.0)
    scene = Scene((star, WorldObject("star", "red", "dots", 0.8, 0.2, 0.1, 0.0),
                   WorldObject("ring", "blue", "flat", 0.5, 0.8, 0.12, 0.0)), BG)
    for seed in range(20):
        text = caption(scene, np.random.default_rng(seed))
        assert sorted(parse_mentions(text)) == [("blue", "ring", 1), ("red", "star", 2)], text
        assert re.search(r"\btwo\b", text), text


def test_stated_relations_are_true(scenes):
    stated = Counter()
    for scene, text in scenes:
        for a, rel, b in parse_relations(text):
            (i,), (j,) = _objects(scene, a), _objects(scene, b)  # relations only name unique objects
            true = in_front_of(scene, i, j) if rel == "in front of" else relation(scene, i, j) == rel
            assert true, (text, a, rel, b)
            stated[rel] += 1
    assert set(stated) == set(C.RELATION_PHRASES), stated  # every kind of relation gets said
    assert sum(stated.values()) >= 400


def test_a_hand_made_relation_is_read_back():
    scene = Scene((WorldObject("star", "red", "flat", 0.5, 0.2, 0.1, 0.0),
                   WorldObject("ring", "blue", "flat", 0.5, 0.8, 0.1, 0.0)), BG)
    said = [parse_relations(caption(scene, np.random.default_rng(seed))) for seed in range(40)]
    truth = {(("red", "star"), "above", ("blue", "ring")), (("blue", "ring"), "below", ("red", "star"))}
    assert all(len(r) <= 1 and set(r) <= truth for r in said)
    assert sum(len(r) for r in said) >= 25  # RELATION_P = 0.85


def test_inside_is_said_of_a_container_and_read_back_either_way():
    ring = WorldObject("ring", "blue", "flat", 0.5, 0.5, 0.3, 0.0)
    scene = Scene((ring, WorldObject("star", "red", "flat", 0.5, 0.5, 0.08, 0.0),
                   WorldObject("heart", "green", "flat", 0.1, 0.1, 0.07, 0.0)), BG)
    assert inside_pairs(scene) == [(1, 0)]
    texts = [caption(scene, np.random.default_rng(seed)) for seed in range(60)]
    said = [r for t in texts for r in parse_relations(t)]
    assert said.count((("red", "star"), "inside", ("blue", "ring"))) >= 30
    assert any(p in t for t in texts for p in C.REVERSED_RELATION_PHRASES["inside"])  # 'a ring containing a star'


def test_same_generator_state_same_caption_and_different_seeds_vary():
    for seed in range(30):
        scene = sample_scene(seed)
        assert caption(scene, np.random.default_rng(7)) == caption(scene, np.random.default_rng(7))
        once, again = (describe_object(scene, 0, np.random.default_rng(7)) for _ in range(2))
        assert once == again
    scene = sample_scene(3)
    assert len({caption(scene, np.random.default_rng(s)) for s in range(20)}) >= 15


def _template_pattern(template: str) -> re.Pattern:
    """A template as a regular expression over whole captions (follow-up relations allowed at the end)."""
    fills = {"objects": ".+", "is": "(?:is|are)", "background": "[a-z]+(?: and [a-z]+)?",
             "count": "|".join(C.COUNT_WORDS), "style": "|".join(w for ws in C.STYLE_WORDS.values() for w in ws)}
    parts = re.split(r"\{(\w+)\}", template)
    body = "".join(re.escape(p) if k % 2 == 0 else f"(?:{fills[p]})" for k, p in enumerate(parts))
    return re.compile(body + r"(?:(?:; |\. |, with ).+)?")


def _template_of(text: str) -> str:
    """The most specific template the caption fits (the one with the most literal text)."""
    fits = [t for t in C.CAPTION_TEMPLATES + C.STYLE_TEMPLATES if _template_pattern(t).fullmatch(text)]
    assert fits, text
    return max(fits, key=lambda t: len(re.sub(r"\{\w+\}", "", t)))


def test_captions_use_many_templates_and_a_shared_style_only_when_there_is_one(scenes):
    used = Counter(_template_of(text) for _, text in scenes[:200])
    assert len(used) >= 11, used
    style_of = {w: s for s, ws in C.STYLE_WORDS.items() for w in ws}
    for scene, text in scenes:
        template = _template_of(text)
        if template in C.STYLE_TEMPLATES:
            words = [w for w in re.findall(r"[a-z-]+", text) if w in style_of]
            assert scene.style != "mixed" and style_of[words[0]] == scene.style, text


def test_descriptions_name_colour_shape_and_size():
    rng = np.random.default_rng(0)
    size_of = {w: s for s, ws in C.SIZE_WORDS.items() for w in ws}
    for seed in range(200):
        scene = sample_scene(seed, ONLY if seed % 2 else WorldConfig())
        for i, obj in enumerate(scene.objects):
            text = describe_object(scene, i, rng)
            assert parse_mentions(text) == [(obj.colour, obj.shape, 1)], text
            assert size_of[re.findall(r"[a-z-]+", text)[1]] == C.size_class(obj), text
            assert "," not in text or obj.shape not in ("circle", "ring") or "lit from" in text, text
            assert parse_mentions(object_phrase(obj, rng)) == [(obj.colour, obj.shape, 1)]


def _mask(obj: WorldObject) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(render(Scene((obj,), BG), 64).labels == 1)
    return xs - 31.5, ys - 31.5  # image offsets from the centre, y down


@pytest.mark.parametrize("rotation, pose", [(0.0, "pointing up"), (math.pi / 3, "pointing down"),
                                            (0.35, "tilted to the left"), (-0.35, "tilted to the right")])
def test_triangle_pose_words_match_the_render(rotation, pose):
    obj = WorldObject("triangle", "red", "flat", 0.5, 0.5, 0.3, rotation)
    assert describe_object(Scene((obj,), BG), 0, np.random.default_rng(0)).endswith(pose)
    xs, ys = _mask(obj)
    top_x = xs[ys == ys.min()].mean()
    if pose == "pointing up":
        assert -ys.min() > 1.5 * ys.max() and abs(top_x) < 1
    elif pose == "pointing down":
        assert ys.max() > 1.5 * -ys.min()
    else:
        assert (top_x < -3) == pose.endswith("left") and (top_x > 3) == pose.endswith("right")


@pytest.mark.parametrize("rotation", [0.0, 0.8, math.pi / 2, 2.5, math.pi, -1.2])
def test_crescent_opens_where_the_description_says(rotation):
    obj = WorldObject("crescent", "red", "flat", 0.5, 0.5, 0.3, rotation)
    words = describe_object(Scene((obj,), BG), 0, np.random.default_rng(0)).split("opening to the ")[1]
    angle = math.pi / 4 * C.DIRECTIONS.index(words)
    xs, ys = _mask(obj)
    opening = math.atan2(ys.mean(), -xs.mean())  # away from the mass, counter-clockwise on screen
    assert abs((opening - angle + math.pi) % (2 * math.pi) - math.pi) <= math.pi / 8 + 0.05


@pytest.mark.parametrize("rotation, pattern_angle", [(0.0, 0.0), (0.0, math.pi / 2), (0.5, 0.5 + math.pi / 2),
                                                     (1.0, 0.2), (-0.7, 2.0)])
def test_stripes_and_shading_words_match_the_render(rotation, pattern_angle):
    stripes = WorldObject("square", "blue", "stripes", 0.5, 0.5, 0.3, rotation, pattern_angle)
    text = describe_object(Scene((stripes,), BG), 0, np.random.default_rng(1))
    grey = render(Scene((stripes,), BG), 64).image[24:40, 24:40].astype(float).mean(-1)
    across_columns, across_rows = grey.mean(0).std(), grey.mean(1).std()  # vertical / horizontal stripes
    if "vertical stripes" in text:
        assert across_columns > 5 * across_rows + 1
    elif "horizontal stripes" in text:
        assert across_rows > 5 * across_columns + 1
    else:
        assert "diagonal stripes" in text or "striped" in text or "stripy" in text

    shaded = WorldObject("circle", "blue", "gradient", 0.5, 0.5, 0.3, rotation, pattern_angle)
    text = describe_object(Scene((shaded,), BG), 0, np.random.default_rng(1))
    if "lit from the " in text:
        angle = math.pi / 4 * C.DIRECTIONS.index(text.split("lit from the ")[1].split(",")[0])
        grey = render(Scene((shaded,), BG), 64).image.astype(float).mean(-1)
        xs, ys = _mask(shaded)
        w = grey[(ys + 31.5).astype(int), (xs + 31.5).astype(int)]
        w = w - w.mean()
        bright = math.atan2(-(w * ys).mean(), (w * xs).mean())
        assert abs((bright - angle + math.pi) % (2 * math.pi) - math.pi) <= math.pi / 8 + 0.05


def test_the_training_stream_never_holds_out_combinations():
    training = [sample_scene(seed) for seed in range(2000)]
    training += [sample_scene(seed, WorldConfig(min_objects=2, max_objects=2, inside_p=1.0)) for seed in range(300)]
    for scene in training:
        for o in scene.objects:
            assert (o.colour, o.shape) not in HELD_OUT_COLOUR_SHAPE and (o.shape, o.style) not in HELD_OUT_SHAPE_STYLE
        assert not (len(scene.objects) == 2 and inside_pairs(scene)), scene
        assert not is_held_out(scene)


def test_held_out_sampling_produces_every_held_out_combination(scenes):
    held = [scene for scene, _ in scenes[250:]]
    held += [sample_scene(seed, WorldConfig(held_out="only", min_objects=2, max_objects=2, inside_p=1.0))
             for seed in range(100)]
    assert all(is_held_out(scene) for scene in held)
    pairs = {p for scene in held for o in scene.objects for p in o.combos}
    assert HELD_OUT_COLOUR_SHAPE <= pairs and HELD_OUT_SHAPE_STYLE <= pairs
    assert HELD_OUT_LAYOUTS == {"two objects, one inside the other"}
    assert any(len(s.objects) == 2 and inside_pairs(s) for s in held)


def test_the_document_lists_templates_and_held_out_combinations():
    doc = DOC.read_text()
    for template in C.CAPTION_TEMPLATES + C.STYLE_TEMPLATES:
        assert f"`{template}`" in doc, template
    for a, b in sorted(HELD_OUT_COLOUR_SHAPE | HELD_OUT_SHAPE_STYLE):
        assert f"{a} × {b}" in doc, (a, b)
    for layout in HELD_OUT_LAYOUTS:
        assert layout in doc
    for words in C.COLOUR_WORDS.values():
        assert ", ".join(words) in doc


def test_bad_arguments_are_refused():
    scene = sample_scene(0)
    with pytest.raises(InvalidParameter, match="rng"):
        caption(scene, 42)
    with pytest.raises(InvalidParameter, match="index"):
        describe_object(scene, len(scene.objects), np.random.default_rng(0))
    with pytest.raises(InvalidParameter, match="colour"):
        caption(Scene((WorldObject("star", "mauve", "flat", 0.5, 0.5, 0.1, 0.0),), BG), np.random.default_rng(0))
