"""Scenes of the shapes world: a vector description, a pure function of (seed, config).

A scene is a background plus 1-8 objects listed back to front (the occlusion order). Every
object has a shape class, a named colour, a rendering style, a centre and a radius (fractions
of the image side, so one description renders at any size), a rotation and its pattern
parameters. Scenes serialise to JSON and load back exactly; loading refuses any malformed key.

The training sampler never produces the held-out combinations below, so that compositional
generalisation can be measured on them (evaluation samples them on purpose).
"""

import json
import math
from dataclasses import MISSING, asdict, dataclass, fields

import numpy as np

from ..errors import InvalidParameter
from .shapes import SHAPES

# Object colours (sRGB 0-255): names are what captions say and the analyser reads back.
COLOURS = {
    "red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (245, 215, 40), "lime": (150, 215, 40),
    "green": (40, 150, 60), "teal": (30, 150, 150), "cyan": (60, 205, 235), "blue": (40, 80, 210),
    "purple": (130, 60, 190), "pink": (240, 120, 180), "brown": (130, 80, 40), "white": (250, 250, 250),
    "black": (25, 25, 25), "gray": (130, 130, 130),
}
# Background colours: muted tones, none of them an object colour, so objects always stand out.
BACKGROUND_COLOURS = {
    "cream": (238, 230, 205), "sand": (214, 196, 160), "sky": (170, 200, 225), "mint": (190, 225, 200),
    "lavender": (205, 195, 230), "slate": (85, 95, 110), "navy": (30, 40, 75), "olive": (110, 110, 70),
    "rose": (225, 190, 190), "charcoal": (55, 55, 60),
}
STYLES = ("flat", "stripes", "dots", "gradient", "outline", "grain", "checker")
BACKGROUNDS = ("solid", "gradient", "horizon", "textured")
CONTAINERS = ("ring", "circle", "square", "hexagon")  # shapes another object can sit inside
MAX_OBJECTS = 8

# Held out of training (documented in docs/world.md): colour x shape, shape x style, and layouts.
HELD_OUT_COLOUR_SHAPE = frozenset({("green", "heart"), ("blue", "triangle"), ("yellow", "ring"), ("purple", "cross")})
HELD_OUT_SHAPE_STYLE = frozenset({("star", "stripes"), ("circle", "checker"), ("hexagon", "dots")})
HELD_OUT_LAYOUTS = frozenset({"two objects, one inside the other"})


@dataclass(frozen=True)
class WorldObject:
    shape: str
    colour: str
    style: str
    x: float  # centre, fraction of the image width (0 left, 1 right)
    y: float  # centre, fraction of the image height (0 top, 1 bottom)
    size: float  # radius of the shape's unit circle, fraction of the image side
    rotation: float  # radians, counter-clockwise on screen
    pattern_angle: float = 0.0  # stripes direction / gradient light direction, radians
    pattern_scale: float = 0.35  # stripe period, dot and checker cell, in units of the object's radius
    texture_seed: int = 0  # grain noise

    @property
    def combos(self) -> set[tuple[str, str]]:
        return {(self.colour, self.shape), (self.shape, self.style)}


@dataclass(frozen=True)
class Background:
    kind: str
    colour: str  # from BACKGROUND_COLOURS
    colour2: str  # second tone for gradient, horizon and textured backgrounds
    horizon: float = 0.6  # horizon backgrounds: where sky meets ground, fraction of the height
    texture_seed: int = 0


@dataclass(frozen=True)
class Scene:
    objects: tuple[WorldObject, ...]  # back to front: later objects occlude earlier ones
    background: Background
    seed: int | None = None  # the seed that sampled it (None for hand-written scenes)

    @property
    def style(self) -> str:
        """The scene's style label: the style all objects share, or 'mixed'."""
        styles = {o.style for o in self.objects}
        return styles.pop() if len(styles) == 1 else "mixed"

    def to_json(self) -> str:
        return json.dumps({"format": 1, **asdict(self)}, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "Scene":
        """Load a scene, refusing (with the offending key) anything that is not exactly valid."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidParameter("scene", "valid JSON", f"parse error at line {e.lineno}") from None
        data = _record(data, "scene", {"format", "objects", "background", "seed"}, {"seed"})
        if data["format"] != 1:
            raise InvalidParameter("scene.format", "1", data["format"])
        if not isinstance(data["objects"], list):
            raise InvalidParameter("scene.objects", "a list", type(data["objects"]).__name__)
        objects = tuple(_build(WorldObject, o, f"scene.objects[{i}]") for i, o in enumerate(data["objects"]))
        scene = Scene(objects, _build(Background, data["background"], "scene.background"), data.get("seed"))
        check_scene(scene)
        return scene


def _record(data, where: str, allowed: set[str], optional: set[str] = frozenset()) -> dict:
    if not isinstance(data, dict):
        raise InvalidParameter(where, "a JSON object", type(data).__name__)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidParameter(f"{where}.{unknown[0]}", "absent (unknown key)", data[unknown[0]])
    missing = sorted(allowed - optional - set(data))
    if missing:
        raise InvalidParameter(f"{where}.{missing[0]}", "present", None)
    return data


def _build(cls, data, where: str):
    """A dataclass from a JSON object whose keys and value types must match the fields exactly."""
    optional = {f.name for f in fields(cls) if f.default is not MISSING}
    data = _record(data, where, {f.name for f in fields(cls)}, optional)
    values = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        ok = (isinstance(value, str) if f.type is str else type(value) is int if f.type is int else
              type(value) in (int, float) and math.isfinite(value))
        if not ok:
            raise InvalidParameter(f"{where}.{f.name}", f"a {'finite number' if f.type is float else f.type.__name__}",
                                   value)
        values[f.name] = float(value) if f.type is float else value
    return cls(**values)


def check_scene(scene: Scene) -> None:
    """Names known, numbers in range, 1..8 objects."""
    if not 1 <= len(scene.objects) <= MAX_OBJECTS:
        raise InvalidParameter("scene.objects", f"1 to {MAX_OBJECTS} objects", len(scene.objects))
    for i, o in enumerate(scene.objects):
        where = f"scene.objects[{i}]"
        _name(f"{where}.shape", o.shape, SHAPES)
        _name(f"{where}.colour", o.colour, tuple(COLOURS))
        _name(f"{where}.style", o.style, STYLES)
        for name, low, high in (("x", 0, 1), ("y", 0, 1), ("size", 0.01, 0.5), ("pattern_scale", 0.05, 2.0)):
            if not low <= getattr(o, name) <= high:
                raise InvalidParameter(f"{where}.{name}", f"in [{low}, {high}]", getattr(o, name))
    b = scene.background
    _name("scene.background.kind", b.kind, BACKGROUNDS)
    _name("scene.background.colour", b.colour, tuple(BACKGROUND_COLOURS))
    _name("scene.background.colour2", b.colour2, tuple(BACKGROUND_COLOURS))
    if not 0 <= b.horizon <= 1:
        raise InvalidParameter("scene.background.horizon", "in [0, 1]", b.horizon)


def _name(where: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidParameter(where, "one of " + ", ".join(allowed), value)


@dataclass(frozen=True)
class WorldConfig:
    min_objects: int = 1
    max_objects: int = 8
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    styles: tuple[str, ...] = STYLES
    backgrounds: tuple[str, ...] = BACKGROUNDS
    min_size: float = 0.07  # object radius range, fraction of the image side
    max_size: float = 0.2
    scene_style_p: float = 0.4  # chance that all objects of a scene share one style
    inside_p: float = 0.15  # chance that an object is placed inside a container shape
    held_out: str = "exclude"  # "exclude" (training), "only" (each scene has a held-out combination), "allow"

    def check(self) -> "WorldConfig":
        if isinstance(self.min_objects, bool) or not isinstance(self.min_objects, int) or self.min_objects < 1:
            raise InvalidParameter("min_objects", f"an integer in [1, {MAX_OBJECTS}]", self.min_objects)
        if (isinstance(self.max_objects, bool) or not isinstance(self.max_objects, int)
                or not self.min_objects <= self.max_objects <= MAX_OBJECTS):
            raise InvalidParameter("max_objects", f"an integer in [min_objects, {MAX_OBJECTS}]", self.max_objects)
        for name, allowed in (("shapes", SHAPES), ("colours", tuple(COLOURS)), ("styles", STYLES),
                              ("backgrounds", BACKGROUNDS)):
            values = getattr(self, name)
            if not values:
                raise InvalidParameter(name, "at least one name", values)
            for v in values:
                _name(name, v, allowed)
        if not 0.02 <= self.min_size <= self.max_size <= 0.45:
            raise InvalidParameter("min_size", "0.02 <= min_size <= max_size <= 0.45", (self.min_size, self.max_size))
        # Objects keep their centres 0.75 (r_i + r_j) apart: min_objects discs of radius 0.375 min_size
        # must pack into the image (packing density below 0.6).
        if self.min_objects * math.pi * (0.375 * 2 * self.min_size) ** 2 / 0.6 > (1 - 2 * self.min_size) ** 2:
            raise InvalidParameter("min_size", f"small enough for {self.min_objects} objects to fit", self.min_size)
        for name in ("scene_style_p", "inside_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidParameter(name, "a probability in [0, 1]", getattr(self, name))
        _name("held_out", self.held_out, ("exclude", "only", "allow"))
        if self.held_out == "only" and not self._held_out_possible():
            raise InvalidParameter("held_out", "'only' with shapes/colours/styles that include a held-out pair",
                                   self.held_out)
        return self

    def _held_out_possible(self) -> bool:
        pairs = any(c in self.colours and s in self.shapes for c, s in HELD_OUT_COLOUR_SHAPE) or any(
            s in self.shapes and st in self.styles for s, st in HELD_OUT_SHAPE_STYLE)
        layout = (self.min_objects <= 2 <= self.max_objects and self.inside_p > 0 and len(self.colours) > 1
                  and any(s in CONTAINERS for s in self.shapes))  # two objects, one inside the other
        return pairs or layout


def is_held_out(scene: Scene) -> bool:
    """Does the scene contain any held-out combination?"""
    if any(o.combos & (HELD_OUT_COLOUR_SHAPE | HELD_OUT_SHAPE_STYLE) for o in scene.objects):
        return True
    from .relations import inside_pairs

    return len(scene.objects) == 2 and bool(inside_pairs(scene))


def sample_scene(seed: int, config: WorldConfig = WorldConfig()) -> Scene:
    """The scene of ``seed`` under ``config`` (a pure function: same inputs, same scene)."""
    config.check()
    rng = np.random.default_rng(seed)
    for _ in range(100):  # resample until the held-out rule holds (almost always at once)
        scene = _draw(rng, config, seed)
        held = is_held_out(scene)
        if config.held_out == "allow" or held == (config.held_out == "only"):
            return scene
    raise InvalidParameter("held_out", "a rule the sampler can meet with these shapes, colours and styles",
                           config.held_out)


def _draw(rng: np.random.Generator, c: WorldConfig, seed: int) -> Scene:
    n = int(rng.integers(c.min_objects, c.max_objects + 1))
    scene_style = str(rng.choice(c.styles)) if rng.random() < c.scene_style_p else None
    objects: list[WorldObject] = []
    for _ in range(n):
        obj = _place(rng, c, objects, scene_style)
        if obj is not None:
            objects.append(obj)
    while len(objects) < c.min_objects:  # crowded: relax spacing rather than fail
        objects.append(_place(rng, c, objects, scene_style, spacing=0.0))
    kinds = c.backgrounds
    b1, b2 = rng.choice(list(BACKGROUND_COLOURS), size=2, replace=False)
    background = Background(str(rng.choice(kinds)), str(b1), str(b2), float(rng.uniform(0.35, 0.75)),
                            int(rng.integers(2**31)))
    return Scene(tuple(objects), background, seed)


def _place(rng, c: WorldConfig, placed: list[WorldObject], scene_style: str | None,
           spacing: float = 0.75) -> WorldObject | None:
    """A new object in front of ``placed``: free-standing (centres at least spacing·(r_i + r_j) apart),
    or, with probability inside_p, centred inside a container that is already there."""
    shape = str(rng.choice(c.shapes))
    colour = str(rng.choice(c.colours))
    style = scene_style or str(rng.choice(c.styles))
    pattern = dict(rotation=float(rng.uniform(-math.pi, math.pi)), pattern_angle=float(rng.uniform(0, math.pi)),
                   pattern_scale=float(rng.uniform(0.25, 0.5)), texture_seed=int(rng.integers(2**31)))
    hosts = [o for o in placed if o.shape in CONTAINERS and o.size >= 2.5 * c.min_size and o.colour != colour]
    if hosts and rng.random() < c.inside_p:
        host = hosts[int(rng.integers(len(hosts)))]
        size = float(rng.uniform(c.min_size, 0.4 * host.size))
        return WorldObject(shape, colour, style, host.x, host.y, size, **pattern)
    size = float(rng.uniform(c.min_size, c.max_size))
    for attempt in range(60):
        if attempt and attempt % 15 == 0:
            size = max(c.min_size, size * 0.8)
        x, y = rng.uniform(size, 1 - size, size=2)
        if all(math.hypot(x - o.x, y - o.y) >= spacing * (size + o.size) for o in placed):
            return WorldObject(shape, colour, style, float(x), float(y), size, **pattern)
    return None

