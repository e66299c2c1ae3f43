"""Instruction edits of shapes-world scenes: (before, instruction, after, changed region) examples.

Training and evaluation data for InstructPix2Pix (Brooks et al. 2023) and Visii (Nguyen et al. 2023):
an edit changes one object (recolour, restyle, move, resize, add, remove, swap_shape) or the
background, and says so in words, e.g. "make the star green", "move the ring to the left".

Because scenes are vector descriptions, the region an edit may change is exact, not estimated:
the renderer composites each object as C ← (1 − α)·C + α·colour, so a pixel where the edited object's
coverage α is 0 both before and after the edit renders identically. ``Edit.changed_mask(size)`` is the
union of the object's footprints (α > 0, computed from geometry with the renderer's own helpers)
before and after; for a background edit it is the whole image.

Instructions name their object unambiguously: by shape if it is unique ("the star"), else by colour
and shape ("the red star"), else by its position among the objects it could be confused with
("the left star", "the topmost red star"); objects that cannot be told apart are not edited.

Edits keep scenes valid (``check_scene``), keep objects inside the image, keep moved and added
objects apart from the others (centres at least 0.75·(r_i + r_j) apart, the sampler's spacing), and
never introduce a held-out combination (colour × shape, shape × style, the two-object "inside"
layout) unless ``allow_held_out=True``: edits are training data.
"""

import math
from dataclasses import dataclass, replace

import numpy as np

from ..errors import InvalidParameter
from .relations import inside_pairs
from .render import object_patch, pixel_centres
from .scene import (BACKGROUND_COLOURS, BACKGROUNDS, COLOURS, HELD_OUT_COLOUR_SHAPE, HELD_OUT_SHAPE_STYLE, MAX_OBJECTS,
                    STYLES, Background, Scene, WorldObject, check_scene)
from .shapes import SHAPES

EDIT_KINDS = ("recolour", "restyle", "move", "resize", "add", "remove", "swap_shape", "background")

SPACING = 0.75  # moved and added objects keep centres SPACING·(r_i + r_j) apart from the others (as the sampler)
MIN_VISIBLE = 0.3  # an object is edited only if at least this fraction of it is visible (not occluded)
SIZE_RANGE = (0.04, 0.3)  # radii that resize and add produce, fraction of the image side
_HELD_OUT = HELD_OUT_COLOUR_SHAPE | HELD_OUT_SHAPE_STYLE

# How instructions name styles: an adjective ("make the star striped") and a noun phrase ("give the star stripes").
STYLE_WORDS = {
    "flat": ("plain", "a plain flat colour"),
    "stripes": ("striped", "stripes"),
    "dots": ("dotted", "polka dots"),
    "gradient": ("shaded", "soft shading"),
    "outline": ("outlined", "just an outline"),
    "grain": ("grainy", "a grainy texture"),
    "checker": ("checkered", "a checkerboard pattern"),
}
# Backgrounds with a name of their own: (kind, colour, colour2) -> phrase.
NAMED_BACKGROUNDS = {
    ("gradient", "navy", "rose"): "a sunset-like gradient",
    ("gradient", "sky", "cream"): "a bright daytime sky",
    ("gradient", "charcoal", "navy"): "a night-sky gradient",
    ("horizon", "sky", "sand"): "a beach, blue sky over sand",
    ("horizon", "sky", "mint"): "a green meadow under a pale blue sky",
    ("textured", "sand", "cream"): "a sandy texture",
}


@dataclass(frozen=True)
class Edit:
    kind: str  # one of EDIT_KINDS
    before: Scene
    after: Scene
    instruction: str  # lower case, no full stop: "make the star green"
    target: int | None  # the edited object's index in ``before`` (in ``after`` for add); None for background

    def __post_init__(self) -> None:
        if self.kind not in EDIT_KINDS:
            raise InvalidParameter("edit.kind", "one of " + ", ".join(EDIT_KINDS), self.kind)
        if (self.target is None) != (self.kind == "background"):
            raise InvalidParameter("edit.target", "None exactly for background edits", self.target)

    def changed_mask(self, size: int) -> np.ndarray:
        """(size, size) bool: the pixels this edit may change when both scenes are rendered at ``size``;
        every pixel outside it renders identically before and after."""
        _check_size(size)
        if self.kind == "background":
            return np.ones((size, size), bool)
        mask = np.zeros((size, size), bool)
        for obj in self.edited_objects:
            mask |= footprint(obj, size)
        return mask

    @property
    def edited_objects(self) -> tuple[WorldObject, ...]:
        """The edited object as it is before and after (one of them only for add and remove)."""
        if self.kind == "background":
            return ()
        if self.kind == "add":
            return (self.after.objects[self.target],)
        if self.kind == "remove":
            return (self.before.objects[self.target],)
        return self.before.objects[self.target], self.after.objects[self.target]


def footprint(obj: WorldObject, size: int) -> np.ndarray:
    """(size, size) bool: the pixels whose colour ``obj`` touches when rendered at ``size`` (coverage > 0)."""
    _check_size(size)
    return _object_coverage(obj, size) > 0


def make_edit(scene: Scene, kind: str, rng: np.random.Generator, allow_held_out: bool = False) -> Edit:
    """An edit of ``kind`` of ``scene``; raises InvalidParameter when the scene allows no such edit
    (add with 8 objects, remove with 1, no object that can be named and seen...)."""
    _check_inputs(scene, rng)
    if kind not in EDIT_KINDS:
        raise InvalidParameter("kind", "one of " + ", ".join(EDIT_KINDS), kind)
    edit = _EDITORS[kind](scene, rng, allow_held_out)
    if edit is None:
        raise InvalidParameter("kind", f"an edit this scene allows ({len(scene.objects)} objects)", kind)
    return edit


def random_edit(scene: Scene, rng: np.random.Generator, allow_held_out: bool = False) -> Edit:
    """An edit of a random kind (uniform over the kinds the scene allows)."""
    _check_inputs(scene, rng)
    for i in rng.permutation(len(EDIT_KINDS)):
        edit = _EDITORS[EDIT_KINDS[i]](scene, rng, allow_held_out)
        if edit is not None:
            return edit
    raise InvalidParameter("scene", "a scene that allows some edit", scene)


# --- naming objects ---------------------------------------------------------------------------------------

def refer(scene: Scene, k: int, with_colour: bool = False) -> str | None:
    """A phrase that picks out object k alone ("the star", "the red star", "the left star",
    "the topmost red star"), or None if none does. ``with_colour`` always names the colour."""
    objects = scene.objects
    obj = objects[k]
    same_shape = [j for j, o in enumerate(objects) if o.shape == obj.shape]
    same_colour = [j for j in same_shape if objects[j].colour == obj.colour]
    if not with_colour and len(same_shape) == 1:
        return f"the {obj.shape}"
    if len(same_colour) == 1:
        return f"the {obj.colour} {obj.shape}"
    if not with_colour:
        word = _position_word(scene, k, same_shape)
        if word:
            return f"the {word} {obj.shape}"
    word = _position_word(scene, k, same_colour)
    return f"the {word} {obj.colour} {obj.shape}" if word else None


def _position_word(scene: Scene, k: int, group: list[int]) -> str | None:
    """'left', 'top'... (two in the group) or 'leftmost', 'topmost'... (more): the extreme in which k
    clearly leads every other member of the group (by half the larger radius, as relations.py), if any."""
    obj = scene.objects[k]
    others = [scene.objects[j] for j in group if j != k]
    best, best_gap = None, 0.0
    for word, axis, sign in (("left", "x", -1), ("right", "x", 1), ("top", "y", -1), ("bottom", "y", 1)):
        gap = min(sign * (getattr(obj, axis) - getattr(o, axis)) - 0.5 * max(obj.size, o.size) for o in others)
        if gap > best_gap:
            best, best_gap = word, gap
    if best is None:
        return None
    return best if len(group) == 2 else best + "most"


def _describe(obj: WorldObject) -> str:
    """'small striped yellow circle': size (when small or large), style (unless flat), colour, shape."""
    words = ["small" if obj.size < 0.1 else "large" if obj.size > 0.16 else ""]
    words += ["" if obj.style == "flat" else STYLE_WORDS[obj.style][0], obj.colour, obj.shape]
    return " ".join(w for w in words if w)


def _where(x: float, y: float) -> str:
    """Where a point is, in thirds of the image: 'at the top right', 'on the left', 'in the centre'."""
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else ""
    column = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
    if row and column:
        return f"at the {row} {column}"
    if row:
        return f"at the {row}"
    if column:
        return f"on the {column}"
    return "in the centre"


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


# --- the edits ---------------------------------------------------------------------------------------------
# Each editor returns an Edit, or None when the scene allows no edit of its kind.

def _recolour(scene, rng, allow):
    for k in _targets(scene, rng):
        obj = scene.objects[k]
        near = {scene.objects[j].colour for j in range(len(scene.objects)) if j != k and _touch(scene, j, k)}
        colours = [c for c in COLOURS if c != obj.colour and c not in near]
        colour = _pick(rng, colours)
        after = _replace_object(scene, k, replace(obj, colour=colour))
        if not _allowed(scene, after, allow):
            continue
        template, with_colour = _pick(rng, (("make {ref} {c}", False), ("turn {ref} {c}", True),
                                            ("change the colour of {ref} to {c}", False), ("paint {ref} {c}", False),
                                            ("colour {ref} {c}", False), ("make {ref} {c} instead", True)))
        text = template.format(ref=_ref(scene, k, rng, with_colour), c=colour)
        return Edit("recolour", scene, after, text, k)
    return None


def _restyle(scene, rng, allow):
    for k in _targets(scene, rng):
        obj = scene.objects[k]
        style = _pick(rng, [s for s in STYLES if s != obj.style])
        after = _replace_object(scene, k, replace(obj, style=style))
        if not _allowed(scene, after, allow):
            continue
        adjective, noun = STYLE_WORDS[style]
        template = _pick(rng, ("make {ref} {adj}", "give {ref} {noun}", "redraw {ref} in {a_adj} style",
                               "change {ref} to {a_adj} style"))
        text = template.format(ref=_ref(scene, k, rng), adj=adjective, noun=noun, a_adj=_a(adjective))
        return Edit("restyle", scene, after, text, k)
    return None


_DIRECTIONS = {  # (dx, dy) on screen (y down) and how to say it
    "left": ((-1, 0), ("move {ref} to the left", "shift {ref} left", "slide {ref} to the left")),
    "right": ((1, 0), ("move {ref} to the right", "shift {ref} right", "slide {ref} to the right")),
    "up": ((0, -1), ("move {ref} up", "shift {ref} upwards", "move {ref} higher")),
    "down": ((0, 1), ("move {ref} down", "shift {ref} downwards", "move {ref} lower")),
    "up left": ((-1, -1), ("move {ref} up and to the left", "move {ref} towards the top left")),
    "up right": ((1, -1), ("move {ref} up and to the right", "move {ref} towards the top right")),
    "down left": ((-1, 1), ("move {ref} down and to the left", "move {ref} towards the bottom left")),
    "down right": ((1, 1), ("move {ref} down and to the right", "move {ref} towards the bottom right")),
}


def _move(scene, rng, allow):
    hosts = {outer for _, outer in inside_pairs(scene)}  # moving a container would strand what is inside it
    for k in _targets(scene, rng):
        if k in hosts:
            continue
        obj = scene.objects[k]
        others = [o for j, o in enumerate(scene.objects) if j != k]
        for _ in range(30):
            name = _pick(rng, tuple(_DIRECTIONS))
            (ux, uy), templates = _DIRECTIONS[name]
            step = float(rng.uniform(0.15, 0.4)) / math.hypot(ux, uy)
            x, y = obj.x + ux * step, obj.y + uy * step
            if not _free(x, y, obj.size, others):
                continue
            after = _replace_object(scene, k, replace(obj, x=float(x), y=float(y)))
            if _allowed(scene, after, allow):
                return Edit("move", scene, after, _pick(rng, templates).format(ref=_ref(scene, k, rng)), k)
    return None


def _resize(scene, rng, allow):
    for k in _targets(scene, rng):
        obj = scene.objects[k]
        related = {j for pair in inside_pairs(scene) if k in pair for j in pair}
        others = [o for j, o in enumerate(scene.objects) if j not in related | {k}]
        for bigger in rng.permutation(2).astype(bool):
            size = obj.size * float(rng.uniform(1.3, 1.7) if bigger else rng.uniform(0.55, 0.75))
            if not SIZE_RANGE[0] <= size <= min(SIZE_RANGE[1], obj.x, 1 - obj.x, obj.y, 1 - obj.y):
                continue
            if bigger and not _free(obj.x, obj.y, size, others):
                continue
            after = _replace_object(scene, k, replace(obj, size=size))
            if inside_pairs(after) != inside_pairs(scene) or not _allowed(scene, after, allow):
                continue
            templates = (("make {ref} bigger", "enlarge {ref}", "make {ref} larger", "scale {ref} up")
                         if bigger else ("make {ref} smaller", "shrink {ref}", "scale {ref} down",
                                         "reduce the size of {ref}"))
            return Edit("resize", scene, after, _pick(rng, templates).format(ref=_ref(scene, k, rng)), k)
    return None


def _add(scene, rng, allow):
    if len(scene.objects) >= MAX_OBJECTS:
        return None
    style = scene.style if scene.style != "mixed" else _pick(rng, STYLES)
    for attempt in range(60):
        shape, colour = _pick(rng, SHAPES), _pick(rng, tuple(COLOURS))
        if attempt == 0 or attempt % 15 == 0:
            size = float(rng.uniform(0.07, 0.18))
        x, y = (float(v) for v in rng.uniform(size, 1 - size, size=2))
        if not _free(x, y, size, scene.objects):
            size = max(0.05, 0.9 * size)
            continue
        obj = WorldObject(shape, colour, style, x, y, size, rotation=float(rng.uniform(-math.pi, math.pi)),
                          pattern_angle=float(rng.uniform(0, math.pi)), pattern_scale=float(rng.uniform(0.25, 0.5)),
                          texture_seed=int(rng.integers(2**31)))
        after = replace(scene, objects=scene.objects + (obj,), seed=None)  # in front of everything
        if not _allowed(scene, after, allow):
            continue
        twin = any(o.shape == shape and o.colour == colour for o in scene.objects)
        thing = ("another " + _describe(obj)) if twin else _a(_describe(obj))
        template = _pick(rng, ("add {thing} {where}", "put {thing} {where}", "draw {thing} {where}",
                               "place {thing} {where}"))
        return Edit("add", scene, after, template.format(thing=thing, where=_where(x, y)), len(scene.objects))
    return None


def _remove(scene, rng, allow):
    if len(scene.objects) <= 1:
        return None
    for k in _targets(scene, rng):
        after = replace(scene, objects=scene.objects[:k] + scene.objects[k + 1:], seed=None)
        if not _allowed(scene, after, allow):
            continue
        template = _pick(rng, ("remove {ref}", "delete {ref}", "take away {ref}", "get rid of {ref}", "erase {ref}"))
        return Edit("remove", scene, after, template.format(ref=_ref(scene, k, rng)), k)
    return None


def _swap_shape(scene, rng, allow):
    for k in _targets(scene, rng):
        obj = scene.objects[k]
        shape = _pick(rng, [s for s in SHAPES if s != obj.shape])
        after = _replace_object(scene, k, replace(obj, shape=shape))
        if inside_pairs(after) != inside_pairs(scene) or not _allowed(scene, after, allow):
            continue
        template = _pick(rng, ("replace {ref} with {new}", "turn {ref} into {new}", "swap {ref} for {new}",
                               "change {ref} into {new}", "make {ref} {new}"))
        return Edit("swap_shape", scene, after, template.format(ref=_ref(scene, k, rng), new=_a(shape)), k)
    return None


def _background(scene, rng, allow):
    old = scene.background
    for _ in range(30):
        if rng.random() < 0.3:
            kind, c1, c2 = _pick(rng, tuple(NAMED_BACKGROUNDS))
        else:
            kind = _pick(rng, BACKGROUNDS)
            c1, c2 = (str(c) for c in rng.choice(list(BACKGROUND_COLOURS), size=2, replace=False))
        new = Background(kind, c1, c2, float(rng.uniform(0.35, 0.75)) if kind == "horizon" else old.horizon,
                         int(rng.integers(2**31)) if kind == "textured" else old.texture_seed)
        if _visible_background(new) == _visible_background(old):
            continue
        named = NAMED_BACKGROUNDS.get((kind, c1, c2))
        if named and rng.random() < 0.7:
            template = _pick(rng, ("change the background to {bg}", "make the background {bg}",
                                   "replace the background with {bg}"))
            text = template.format(bg=named)
        else:
            text = _pick(rng, _BACKGROUND_TEMPLATES[kind]).format(c1=c1, c2=c2)
        return Edit("background", scene, replace(scene, background=new, seed=None), text, None)
    return None


_BACKGROUND_TEMPLATES = {
    "solid": ("make the background plain {c1}", "change the background to solid {c1}",
              "use a plain {c1} background"),
    "gradient": ("change the background to a gradient from {c1} at the top to {c2} at the bottom",
                 "make the background fade from {c1} to {c2}", "give the picture a {c1} to {c2} gradient background"),
    "horizon": ("change the background to a horizon with {c1} above and {c2} below",
                "make the background a horizon, {c1} above and {c2} below"),
    "textured": ("make the background a {c1} texture flecked with {c2}",
                 "give the picture a textured {c1} background with {c2} speckles"),
}

_EDITORS = {"recolour": _recolour, "restyle": _restyle, "move": _move, "resize": _resize, "add": _add,
            "remove": _remove, "swap_shape": _swap_shape, "background": _background}


# --- helpers -----------------------------------------------------------------------------------------------

def _targets(scene: Scene, rng: np.random.Generator) -> list[int]:
    """Objects an instruction can name and whose change shows, in a random order."""
    return [int(k) for k in rng.permutation(len(scene.objects))
            if refer(scene, int(k)) is not None and _visible_fraction(scene, int(k)) >= MIN_VISIBLE]


def _ref(scene: Scene, k: int, rng: np.random.Generator, with_colour: bool = False) -> str:
    """How the instruction names object k: sometimes with its colour although the shape would do."""
    return refer(scene, k, with_colour or rng.random() < 0.3)


def _replace_object(scene: Scene, k: int, obj: WorldObject) -> Scene:
    return replace(scene, objects=scene.objects[:k] + (obj,) + scene.objects[k + 1:], seed=None)


def _free(x: float, y: float, size: float, others) -> bool:
    """Inside the image and apart from every other object."""
    return (size <= x <= 1 - size and size <= y <= 1 - size
            and all(math.hypot(x - o.x, y - o.y) >= SPACING * (size + o.size) for o in others))


def _touch(scene: Scene, a: int, b: int) -> bool:
    p, q = scene.objects[a], scene.objects[b]
    return math.hypot(p.x - q.x, p.y - q.y) < p.size + q.size


def _allowed(before: Scene, after: Scene, allow_held_out: bool) -> bool:
    """Valid, and no held-out combination or layout that ``before`` did not already have (unless allowed)."""
    check_scene(after)
    if allow_held_out:
        return True
    combos = [set().union(*(o.combos for o in s.objects)) & _HELD_OUT for s in (before, after)]
    layouts = [len(s.objects) == 2 and bool(inside_pairs(s)) for s in (before, after)]
    return combos[1] <= combos[0] and (layouts[0] or not layouts[1])


def _visible_background(b: Background) -> tuple:
    """The parameters that a background of this kind renders (the rest do not show)."""
    if b.kind == "solid":
        return b.kind, b.colour
    if b.kind == "gradient":
        return b.kind, b.colour, b.colour2
    if b.kind == "horizon":
        return b.kind, b.colour, b.colour2, b.horizon
    return b.kind, b.colour, b.colour2, b.texture_seed


def _object_coverage(obj: WorldObject, size: int) -> np.ndarray:
    """(size, size) float32: obj's anti-aliased coverage exactly as render computes it (0 outside its box)."""
    cover = np.zeros((size, size), np.float32)
    patch = object_patch(obj, pixel_centres(size))
    if patch is not None:
        ((y0, y1), (x0, x1)), *_, coverage = patch
        cover[y0:y1, x0:x1] = coverage
    return cover


def _visible_fraction(scene: Scene, k: int, size: int = 64) -> float:
    """The fraction of object k's pixels (coverage >= 1/2, as labels) that no object in front covers at ``size``."""
    mine = _object_coverage(scene.objects[k], size) >= 0.5
    total = int(mine.sum())
    if total == 0:
        return 0.0
    for front in scene.objects[k + 1:]:
        mine &= _object_coverage(front, size) < 0.5
    return float(mine.sum() / total)


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 4096:
        raise InvalidParameter("size", "an integer in [16, 4096] pixels", size)


def _check_inputs(scene: Scene, rng: np.random.Generator) -> None:
    if not isinstance(scene, Scene):
        raise InvalidParameter("scene", "a Scene", type(scene).__name__)
    if not isinstance(rng, np.random.Generator):
        raise InvalidParameter("rng", "a numpy.random.Generator", type(rng).__name__)
    check_scene(scene)
