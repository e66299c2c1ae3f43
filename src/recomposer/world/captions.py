"""Captions of the shapes world: a global caption per scene, a phrase and a description per object.

Captions are drawn from fixed vocabularies (colour synonyms, shape words, style and size words)
and fixed templates, so that they can be read back exactly: ``parse_mentions`` recovers the
(colour, shape, count) of every mention and ``parse_relations`` every spatial relation the
caption states. Every caption mentions every object exactly once, either on its own or in a
count ("two crimson stars"), with a true colour and shape; every relation it states is true by
the definitions of ``relations.py``. Vocabularies, templates and the held-out combinations are
listed in docs/world-captions.md.

Randomness comes from the caller's ``np.random.Generator`` only (same generator state, same
text). A caption draws its uniforms in one batch, so one 8-object caption costs tens of
microseconds.
"""

import math
import re

import numpy as np

from ..errors import InvalidParameter
from .relations import in_front_of, inside_pairs, overlaps, relation
from .scene import COLOURS, Scene, WorldObject, check_scene

# --- Vocabularies. Every word names one thing only: a colour word is never a shape, style, size or
# background word, and no synonym is shared between two colours (the test suite checks this).

# Colour name -> the words a caption may use for it (the name itself first).
COLOUR_WORDS = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine"),
    "yellow": ("yellow", "golden", "lemon"),
    "lime": ("lime", "chartreuse"),
    "green": ("green", "emerald"),
    "teal": ("teal",),
    "cyan": ("cyan", "aqua"),
    "blue": ("blue", "cobalt"),
    "purple": ("purple", "violet"),
    "pink": ("pink", "fuchsia"),
    "brown": ("brown", "chocolate"),
    "white": ("white", "snow-white"),
    "black": ("black", "jet-black", "ebony"),
    "gray": ("gray", "grey", "silver"),
}
# Shape name -> singular words (the name first); only unambiguous synonyms.
SHAPE_WORDS = {
    "circle": ("circle", "disc"), "square": ("square",), "triangle": ("triangle",), "star": ("star",),
    "heart": ("heart",), "ring": ("ring", "hoop"), "cross": ("cross",), "hexagon": ("hexagon",),
    "crescent": ("crescent",), "diamond": ("diamond", "rhombus"), "pentagon": ("pentagon",),
}
PLURALS = {w: w + ("es" if w.endswith(("s", "x")) else "s") for words in SHAPE_WORDS.values() for w in words}
# Style -> adjectives ("a striped star", "all of them striped").
STYLE_WORDS = {
    "flat": ("plain", "flat"),
    "stripes": ("striped", "stripy"),
    "dots": ("dotted", "spotted", "polka-dot"),
    "gradient": ("shaded", "gradient-shaded"),
    "outline": ("outlined", "outline"),
    "grain": ("grainy", "speckled"),
    "checker": ("checkered", "chequered"),
}
# Style -> phrases that follow the shape word ("a red star with stripes").
STYLE_PHRASES = {
    "flat": ("in a flat colour",),
    "stripes": ("with stripes",),
    "dots": ("with polka dots", "with dots"),
    "gradient": ("with soft shading",),
    "outline": ("drawn in outline",),
    "grain": ("with a grainy texture",),
    "checker": ("with a checkerboard pattern",),
}
# Size words by object radius (fraction of the image side): below SMALL_BELOW small, from BIG_FROM big,
# in between "medium" (which captions leave unsaid and descriptions call medium-sized).
SMALL_BELOW, BIG_FROM = 0.1, 0.15
SIZE_WORDS = {"small": ("small", "tiny", "little"), "medium": ("medium-sized",), "big": ("big", "large")}
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")

# Relation (as relations.py names it) -> phrases "A <phrase> B" that state it.
RELATION_PHRASES = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "in front of": ("in front of",),
    "inside": ("inside", "within", "in the middle of"),
}
# Phrases "B <phrase> A" that state "A <relation> B".
REVERSED_RELATION_PHRASES = {"in front of": ("behind",), "inside": ("containing", "around", "holding")}
RELATION_VERBS = ("is", "sits")  # "the red star is above the blue ring"

# Global templates. {objects}: the list of mentions; {is}: "is" or "are" to agree with the first
# mention; {background}: the background's colour name(s); {count}: the number of objects (2-8 only).
CAPTION_TEMPLATES = (
    "{objects}",
    "a picture of {objects}",
    "an image of {objects}",
    "there {is} {objects}",
    "a scene with {objects}",
    "{objects} on a {background} background",
    "a {background} background with {objects}",
    "a drawing of {objects} against a {background} backdrop",
    "{count} shapes: {objects}",
    "{count} shapes on {background}: {objects}",
)
# Templates for scenes whose objects all share one style, said once ({style}) instead of per object.
STYLE_TEMPLATES = (
    "a scene of {style} shapes: {objects}",
    "{style} shapes: {objects}",
    "{objects}, all of them {style}",
    "{count} {style} shapes: {objects}",
)
# Relations stated after the list, about objects already listed ({a}, {b}: "the red star"): one form per
# caption, as (text before the first clause, text between two clauses, clause).
FOLLOW_UP_FORMS = (
    ("; ", "; ", "{a} {verb} {phrase} {b}"),
    (". ", ". ", "{a} {verb} {phrase} {b}"),
    (", with ", " and ", "{a} {phrase} {b}"),
)

SCENE_STYLE_P = 0.8  # chance that a shared style is said once for the whole scene
RELATION_P = 0.85  # chance of stating each relation a scene could have
FOLLOW_UP_P = 0.4  # chance that a relation is a follow-up sentence rather than inside the list

# Rotation words for descriptions. Symmetry period of each non-round shape (degrees): a rotation is
# read modulo it, in (-period/2, period/2]; positive angles turn the top to the left (counter-clockwise).
SYMMETRY = {"square": 90, "cross": 90, "triangle": 120, "star": 72, "pentagon": 72, "hexagon": 60,
            "diamond": 180, "heart": 360, "crescent": 360}
UPRIGHT_WITHIN = 8.0  # degrees
# shape -> (pose at 0 degrees, pose past the threshold, threshold in degrees)
POSES = {
    "square": ("standing level", "standing on a corner", 37), "cross": ("standing upright", "turned like an x", 37),
    "triangle": ("pointing up", "pointing down", 50), "star": ("pointing up", "pointing down", 30),
    "pentagon": ("pointing up", "pointing down", 30), "hexagon": ("with a flat top", "with a pointed top", 24),
    "diamond": ("standing upright", "lying on its side", 70), "heart": ("upright", "upside down", 150),
}
# Image directions, counter-clockwise from the right in 45 degree steps (the image's y axis points down).
DIRECTIONS = ("right", "upper right", "top", "upper left", "left", "lower left", "bottom", "lower right")

# --- Reading back: word -> meaning.
_COLOUR_OF = {w: c for c, words in COLOUR_WORDS.items() for w in words}
_SHAPE_OF = {w: s for s, words in SHAPE_WORDS.items() for w in words}
_SHAPE_OF.update({PLURALS[w]: s for w, s in list(_SHAPE_OF.items())})
_PLURAL_WORDS = frozenset(PLURALS.values())
_COUNT_OF = {w: k for k, w in enumerate(COUNT_WORDS) if k >= 1} | {"a": 1, "an": 1}
_ADJECTIVES = frozenset(w for words in (*COLOUR_WORDS.values(), *STYLE_WORDS.values(), *SIZE_WORDS.values())
                        for w in words)
_RELATION_ENDINGS = sorted(
    [(tuple(p.split()), r, False) for r, ps in RELATION_PHRASES.items() for p in ps]
    + [(tuple(p.split()), r, True) for r, ps in REVERSED_RELATION_PHRASES.items() for p in ps],
    key=lambda e: -len(e[0]))  # longest first: "to the left of" before "left of"
_TOKEN = re.compile(r"[a-z]+(?:-[a-z]+)*")


class _Dice:
    """Uniforms drawn from the caller's generator in batches (one numpy call instead of dozens)."""

    def __init__(self, rng: np.random.Generator):
        if not isinstance(rng, np.random.Generator):
            raise InvalidParameter("rng", "a numpy.random.Generator", type(rng).__name__)
        self._rng = rng
        self._u: list[float] = []
        self._i = 0

    def uniform(self) -> float:
        if self._i == len(self._u):
            self._u, self._i = self._rng.random(64).tolist(), 0
        self._i += 1
        return self._u[self._i - 1]

    def chance(self, p: float) -> bool:
        return self.uniform() < p

    def pick(self, options):
        return options[int(self.uniform() * len(options))]

    def shuffled(self, items: list) -> list:
        items = list(items)
        for i in range(len(items) - 1, 0, -1):  # Fisher-Yates
            j = int(self.uniform() * (i + 1))
            items[i], items[j] = items[j], items[i]
        return items


def size_class(obj: WorldObject) -> str:
    """'small', 'medium' or 'big', by the object's radius (SMALL_BELOW, BIG_FROM)."""
    return "small" if obj.size < SMALL_BELOW else "big" if obj.size >= BIG_FROM else "medium"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _with_article(words: list[str]) -> str:
    return f"{_article(words[0])} {' '.join(words)}"


def _noun_phrase(obj: WorldObject, dice: _Dice, say_style: bool, size_p: float = 0.6) -> str:
    """'a big crimson star with stripes', 'a tiny dotted blue hoop', ...: one object, indefinite."""
    words = []
    size = size_class(obj)
    if size != "medium" and dice.chance(size_p):
        words.append(dice.pick(SIZE_WORDS[size]))
    colour = dice.pick(COLOUR_WORDS[obj.colour]) if dice.chance(0.5) else obj.colour
    shape = dice.pick(SHAPE_WORDS[obj.shape]) if dice.chance(0.3) else obj.shape
    after = ""
    if say_style and (obj.style != "flat" or dice.chance(0.25)):
        if dice.chance(0.25):
            after = " " + dice.pick(STYLE_PHRASES[obj.style])
        elif dice.chance(0.7):
            words += [dice.pick(STYLE_WORDS[obj.style]), colour]
            colour = None
        else:
            words += [colour, dice.pick(STYLE_WORDS[obj.style])]
            colour = None
    if colour is not None:
        words.append(colour)
    words.append(shape)
    return _with_article(words) + after


def _group_phrase(objs: list[WorldObject], dice: _Dice, say_style: bool) -> str:
    """'two crimson stars', 'three small striped blue rings': several objects of one colour and shape."""
    words = [COUNT_WORDS[len(objs)]]
    sizes = {size_class(o) for o in objs}
    if len(sizes) == 1 and "medium" not in sizes and dice.chance(0.5):
        words.append(dice.pick(SIZE_WORDS[sizes.pop()]))
    styles = {o.style for o in objs}
    if say_style and len(styles) == 1 and (objs[0].style != "flat" or dice.chance(0.25)):
        words.append(dice.pick(STYLE_WORDS[objs[0].style]))
    words.append(dice.pick(COLOUR_WORDS[objs[0].colour]) if dice.chance(0.5) else objs[0].colour)
    words.append(PLURALS[dice.pick(SHAPE_WORDS[objs[0].shape]) if dice.chance(0.3) else objs[0].shape])
    return " ".join(words)


def _reference(obj: WorldObject, dice: _Dice) -> str:
    """'the crimson star': an object already mentioned (not counted again by parse_mentions)."""
    return f"the {dice.pick(COLOUR_WORDS[obj.colour])} {dice.pick(SHAPE_WORDS[obj.shape])}"


def object_phrase(obj: WorldObject, rng: np.random.Generator) -> str:
    """A short phrase for one object, e.g. 'a big crimson striped star' (always its colour and shape)."""
    return _noun_phrase(obj, _Dice(rng), say_style=True, size_p=0.8)


def _direction(angle: float) -> str:
    """The DIRECTIONS word of an image-space angle (radians, counter-clockwise from the right)."""
    return DIRECTIONS[round(angle / (math.pi / 4)) % 8]


def _pose(obj: WorldObject) -> str:
    """Rotation in words, '' for round shapes (circle, ring)."""
    if obj.shape == "crescent":  # the bite's centre sits at (0.45, -0.1) in shape space: the opening
        return f"opening to the {_direction(obj.rotation + math.atan2(0.1, 0.45))}"
    if obj.shape not in POSES:
        return ""
    period = SYMMETRY[obj.shape]
    a = -((-math.degrees(obj.rotation) + period / 2) % period - period / 2)  # in (-period/2, period/2]
    upright, turned, threshold = POSES[obj.shape]
    if abs(a) <= UPRIGHT_WITHIN:
        return upright
    if abs(a) > threshold:
        return turned
    side = "left" if a > 0 else "right"
    if obj.shape == "heart" and abs(a) > 60:
        return f"turned sideways to the {side}"
    return f"{'slightly ' if abs(a) < 20 else ''}tilted to the {side}"


def _second_tone(colour: str) -> str:
    """'pale' or 'dark': the pattern's other tone (render.py pulls dark colours to white, light to black)."""
    r, g, b = COLOURS[colour]
    return "pale" if (0.299 * r + 0.587 * g + 0.114 * b) / 255 < 0.55 else "dark"


def _style_detail(obj: WorldObject, dice: _Dice) -> str:
    """The style with its pattern's look, read from the pattern parameters as render.py draws them."""
    # The pattern direction (cos a, sin a) in shape space is (cos(a - rotation), sin(a - rotation)) on
    # screen with y down, i.e. the angle rotation - a counter-clockwise from the right.
    normal = obj.rotation - obj.pattern_angle
    if obj.style == "stripes":  # stripes run across their direction
        folded = abs((math.degrees(normal) + 90) % 180 - 90)  # 0: direction horizontal -> vertical stripes
        lines = "vertical" if folded < 22.5 else "horizontal" if folded > 67.5 else "diagonal"
        return f"with {_second_tone(obj.colour)} {lines} stripes"
    if obj.style == "gradient":  # brightest against the pattern direction
        return f"with soft shading, lit from the {_direction(normal + math.pi)}"
    if obj.style == "dots":
        return f"with {_second_tone(obj.colour)} polka dots"
    if obj.style == "checker":
        return f"with a {_second_tone(obj.colour)} checkerboard pattern"
    if obj.style == "grain":
        return dice.pick(("with a grainy texture", "with a speckled texture"))
    if obj.style == "outline":
        return dice.pick(("drawn as an outline", "drawn in outline"))
    return dice.pick(("in a flat colour", "in one flat colour"))


def describe_object(scene: Scene, index: int, rng: np.random.Generator) -> str:
    """One sentence on how object ``index`` looks: size, colour, shape, style and pose, e.g.
    'a large crimson star with pale diagonal stripes, tilted to the left' (a BlobGEN-style blob description)."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(scene.objects):
        raise InvalidParameter("index", f"an integer in [0, {len(scene.objects) - 1}]", index)
    dice = _Dice(rng)
    obj = scene.objects[index]
    size = dice.pick(SIZE_WORDS[size_class(obj)])
    colour = dice.pick(COLOUR_WORDS[obj.colour])
    shape = dice.pick(SHAPE_WORDS[obj.shape])
    pose = _pose(obj)
    if dice.chance(0.3) and obj.style != "flat":  # adjective form: the pattern's details left out
        text = _with_article([size, dice.pick(STYLE_WORDS[obj.style]), colour, shape])
    else:
        text = f"{_with_article([size, colour, shape])} {_style_detail(obj, dice)}"
    return f"{text}, {pose}" if pose else text


def _relations_to_state(scene: Scene, singles: list[int], dice: _Dice) -> list[tuple[int, str, int, bool]]:
    """Disjoint pairs (a, relation, b, reversed) to state, among objects that are the only one of their
    colour and shape (so that 'the red star' names one object). Inside pairs come first."""
    n = len(scene.objects)
    wanted = sum(dice.chance(RELATION_P) for _ in range(0 if n == 1 else 1 if n <= 3 else 2))
    chosen, used = [], set()
    single_set = set(singles)
    for inner, outer in inside_pairs(scene):
        if len(chosen) < wanted and {inner, outer} <= single_set and not {inner, outer} & used:
            chosen.append((inner, "inside", outer, dice.chance(0.4)))
            used |= {inner, outer}
    order = dice.shuffled(singles)
    for a in order:
        if len(chosen) >= wanted:
            break
        if a in used:
            continue
        for b in order:
            if b == a or b in used:
                continue
            rel = relation(scene, a, b)
            if overlaps(scene, a, b) and (rel is None or dice.chance(0.5)):
                front, back = (a, b) if in_front_of(scene, a, b) else (b, a)
                chosen.append((front, "in front of", back, dice.chance(0.5)))
            elif rel is not None:
                chosen.append((a, rel, b, False))
            else:
                continue
            used |= {a, b}
            break
    return chosen


def _relation_phrase(rel: str, reverse: bool, dice: _Dice) -> str:
    return dice.pick(REVERSED_RELATION_PHRASES[rel] if reverse else RELATION_PHRASES[rel])


def _join(items: list[str], dice: _Dice) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + ("," if len(items) > 2 and dice.chance(0.3) else "") + " and " + items[-1]


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A global caption: every object once (alone or in a count), some true relations, maybe the shared style.

    e.g. 'there are two crimson stars, a green heart and a big blue ring containing a tiny yellow square'.
    """
    check_scene(scene)
    dice = _Dice(rng)
    objs = scene.objects
    n = len(objs)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, o in enumerate(objs):
        groups.setdefault((o.colour, o.shape), []).append(i)
    singles = [g[0] for g in groups.values() if len(g) == 1]
    shared_style = n >= 2 and scene.style != "mixed" and dice.chance(SCENE_STYLE_P)
    say_style = not shared_style

    # 1. Relations: some inside the list ("a red star above a blue ring"), the others said after it
    #    about objects listed plainly ("...; the red star is above the blue ring").
    plain, inline, follow_ups, related = [], [], [], set()
    before, between, clause = dice.pick(FOLLOW_UP_FORMS)
    for a, rel, b, reverse in _relations_to_state(scene, singles, dice):
        related |= {a, b}
        first, second = (b, a) if reverse else (a, b)
        phrase = _relation_phrase(rel, reverse, dice)
        if dice.chance(FOLLOW_UP_P):
            follow_ups.append(clause.format(
                a=_reference(objs[first], dice), verb=dice.pick(RELATION_VERBS), phrase=phrase,
                b=_reference(objs[second], dice)))
            plain += [_noun_phrase(objs[first], dice, say_style), _noun_phrase(objs[second], dice, say_style)]
        else:
            inline.append(f"{_noun_phrase(objs[first], dice, say_style)} {phrase} "
                          f"{_noun_phrase(objs[second], dice, say_style)}")

    # 2. Everything else, alone or counted. Inline relations go last so that no list item attaches to them.
    for g in groups.values():
        if len(g) > 1:
            plain.append(_group_phrase([objs[i] for i in g], dice, say_style))
        elif g[0] not in related:
            plain.append(_noun_phrase(objs[g[0]], dice, say_style))
    items = dice.shuffled(plain) + inline

    # 3. A template around the list, then the follow-up relations.
    templates = STYLE_TEMPLATES if shared_style else CAPTION_TEMPLATES
    if n == 1:
        templates = [t for t in templates if "{count}" not in t]
    bg = scene.background
    background = bg.colour if bg.kind == "solid" else f"{bg.colour} and {bg.colour2}"
    first_is_plural = items[0].split(" ", 1)[0] in COUNT_WORDS
    text = dice.pick(templates).format(
        objects=_join(items, dice), background=background, count=COUNT_WORDS[n],
        style=dice.pick(STYLE_WORDS[objs[0].style]) if shared_style else "",
        **{"is": "are" if first_is_plural else "is"})
    return text + (before + between.join(follow_ups) if follow_ups else "")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _noun_phrases(tokens: list[str]) -> list[tuple[int, int, str, str, int, bool]]:
    """(first token, shape token, colour, shape, count, definite) of every shape word that has a colour word
    among the adjectives before it. count: the number word, 1 for a singular, 0 for a plural without one."""
    found = []
    for i, t in enumerate(tokens):
        shape = _SHAPE_OF.get(t)
        if shape is None:
            continue
        colour, start, determiner = None, i, None
        for j in range(i - 1, -1, -1):
            w = tokens[j]
            if w in _COUNT_OF or w == "the":
                start, determiner = j, w
                break
            if w not in _ADJECTIVES:
                break
            start = j
            colour = _COLOUR_OF.get(w, colour)
        if colour is None:
            continue
        plural = t in _PLURAL_WORDS
        count = _COUNT_OF[determiner] if determiner in _COUNT_OF else 0 if plural else 1
        found.append((start, i, colour, shape, count, determiner == "the"))
    return found


def parse_mentions(text: str) -> list[tuple[str, str, int]]:
    """(colour name, shape name, count) of every object mention, in order. References back to a mention
    ('the red star') are not mentions; a plural without a number word has count 0."""
    return [(c, s, k) for _, _, c, s, k, definite in _noun_phrases(_tokens(text)) if not definite]


def parse_relations(text: str) -> list[tuple[tuple[str, str], str, tuple[str, str]]]:
    """((colour, shape), relation, (colour, shape)) for every 'A <relation phrase> B' in the text, with
    reversed phrases turned round ('a ring containing a star' -> star inside ring, 'A behind B' ->
    B in front of A). Relations are named as in relations.py: left of, right of, above, below,
    in front of, inside."""
    tokens = _tokens(text)
    phrases = _noun_phrases(tokens)
    found = []
    for (_, end, c1, s1, _, _), (start, _, c2, s2, _, _) in zip(phrases, phrases[1:]):
        between = tuple(tokens[end + 1:start])
        for words, rel, reverse in _RELATION_ENDINGS:
            if between[len(between) - len(words):] == words and len(between) >= len(words):
                found.append(((c2, s2), rel, (c1, s1)) if reverse else ((c1, s1), rel, (c2, s2)))
                break
    return found
