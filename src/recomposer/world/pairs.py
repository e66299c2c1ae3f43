"""Content and style of shapes-world scenes: the same content in many styles, many contents in one style.

Training triplets and evaluation data for PARASOL's disentangled control (Tarrés et al. 2024): a
content image y, a style image s and the target x that has y's content in s's style. Here the split
is exact, because a scene is a description:

- content: what is where, i.e. each object's shape, colour, centre, size and rotation, in
  back-to-front order (``content_of``). Colour is content: "a red star" stays red in every style.
- style: how it is drawn, i.e. one rendering style from STYLES shared by every object, with its
  pattern parameters (stripe/gradient angle, pattern scale, grain seed), and the background
  (kind, tones, horizon, texture) (``Style``, ``style_of``, ``apply_style``).

Restyling never moves an object, so instance labels survive it exactly wherever the outline style
does not come or go (an outline draws only a stroke, which changes what each object covers).
Restyled scenes carry ``seed=None``: no seed samples them. Held-out combinations follow
``WorldConfig.held_out``: restyling can create a held-out shape × style pair (a striped star), so
"exclude" refuses such results, "only" requires them, "allow" takes anything.
"""

import math
from dataclasses import dataclass, replace

import numpy as np

from ..errors import InvalidParameter
from .scene import BACKGROUND_COLOURS, HELD_OUT_SHAPE_STYLE, Background, Scene, WorldConfig, check_scene, \
    is_held_out, sample_scene

Layout = tuple[tuple[str, str, float, float, float, float], ...]  # per object: shape, colour, x, y, size, rotation


@dataclass(frozen=True)
class Style:
    name: str  # one of STYLES, drawn by every object
    pattern_angle: float  # stripes direction / gradient light direction, radians
    pattern_scale: float  # stripe period, dot and checker cell, in units of each object's radius
    texture_seed: int  # grain noise
    background: Background


@dataclass(frozen=True)
class Triplet:
    content: Scene  # y: the content to keep (a sampled scene, as sampled)
    style: Scene  # s: another sampled scene, drawn in one Style throughout
    target: Scene  # x = apply_style(content, style_of(style))


def content_of(scene: Scene) -> Layout:
    """The scene's content: (shape, colour, x, y, size, rotation) of each object, back to front."""
    return tuple((o.shape, o.colour, o.x, o.y, o.size, o.rotation) for o in scene.objects)


def style_of(scene: Scene) -> Style:
    """The scene's style: its first object's style and pattern parameters, and its background."""
    o = scene.objects[0]
    return Style(o.style, o.pattern_angle, o.pattern_scale, o.texture_seed, scene.background)


def apply_style(scene: Scene, style: Style) -> Scene:
    """The scene's content drawn in ``style``: every object takes its style parameters, the scene its background."""
    objects = tuple(replace(o, style=style.name, pattern_angle=style.pattern_angle, pattern_scale=style.pattern_scale,
                            texture_seed=style.texture_seed) for o in scene.objects)
    restyled = Scene(objects, style.background, None)
    check_scene(restyled)
    return restyled


def random_style(rng: np.random.Generator, config: WorldConfig = WorldConfig(), name: str | None = None,
                 background_kind: str | None = None) -> Style:
    """A Style drawn as the sampler draws one (from the config's styles and backgrounds, unless named)."""
    name = name or str(rng.choice(config.styles))
    angle, scale = float(rng.uniform(0, math.pi)), float(rng.uniform(0.25, 0.5))
    texture = int(rng.integers(2**31))
    kind = background_kind or str(rng.choice(config.backgrounds))
    b1, b2 = rng.choice(list(BACKGROUND_COLOURS), size=2, replace=False)
    background = Background(kind, str(b1), str(b2), float(rng.uniform(0.35, 0.75)), int(rng.integers(2**31)))
    return Style(name, angle, scale, texture, background)


def same_content(scene: Scene, n: int, rng: np.random.Generator, config: WorldConfig = WorldConfig()) -> list[Scene]:
    """n restylings of ``scene``, in n different Styles. Style names and background kinds go round
    the config's lists in a random order, so up to len(styles) of them draw different styles.
    Under held_out "exclude" no restyling adds a held-out shape x style pair (a held-out pair the
    scene already has stays); under "only" every restyling has a held-out combination."""
    _check(scene, n, rng)
    config.check()
    shapes = {o.shape for o in scene.objects}
    if config.held_out == "exclude":  # no style that would draw a held-out shape x style
        names = [s for s in config.styles if not any((shape, s) in HELD_OUT_SHAPE_STYLE for shape in shapes)]
    else:  # "only": styles with which the scene has a held-out combination; "allow": all
        names = [s for s in config.styles
                 if _meets(apply_style(scene, Style(s, 0.0, 0.35, 0, scene.background)), config.held_out)]
    if not names:
        raise InvalidParameter("config.styles", "a style the scene's shapes may be drawn in", config.styles)
    scenes = []
    for i in range(n):  # Styles differ: names and kinds cycle, and angle, scale and seeds are fresh draws
        if i % len(names) == 0:
            name_order = [names[j] for j in rng.permutation(len(names))]
        if i % len(config.backgrounds) == 0:
            kind_order = [config.backgrounds[j] for j in rng.permutation(len(config.backgrounds))]
        style = random_style(rng, config, name_order[i % len(names)], kind_order[i % len(config.backgrounds)])
        scenes.append(apply_style(scene, style))
    return scenes


def same_style(scene: Scene, n: int, rng: np.random.Generator, config: WorldConfig = WorldConfig()) -> list[Scene]:
    """n different contents, sampled with ``config`` (seeds from rng), all drawn in style_of(scene)."""
    _check(scene, n, rng)
    style = style_of(scene)
    contents, scenes = {content_of(scene)}, []
    for _ in range(100 * n):
        if len(scenes) == n:
            return scenes
        restyled = apply_style(sample_scene(int(rng.integers(2**31)), config), style)
        if content_of(restyled) not in contents and _meets(restyled, config.held_out):
            contents.add(content_of(restyled))
            scenes.append(restyled)
    raise InvalidParameter("config.held_out", f"a rule {n} contents in this style can meet", config.held_out)


def triplet(seed: int, config: WorldConfig = WorldConfig()) -> Triplet:
    """The PARASOL triplet of ``seed`` (a pure function of seed and config): two different sampled
    scenes, one giving the content, the other (redrawn in its first object's Style) the style.
    Under held_out "exclude" neither the target nor the style scene has a held-out combination;
    under "only" the target has one."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidParameter("seed", "an integer >= 0", seed)
    rng = np.random.default_rng(seed)
    for _ in range(100):
        content_seed, style_seed = (int(s) for s in rng.choice(2**31, size=2, replace=False))
        content = sample_scene(content_seed, config)
        source = sample_scene(style_seed, config)
        style = apply_style(source, style_of(source))
        target = apply_style(content, style_of(style))
        if (style_of(style) != style_of(content) and content_of(style) != content_of(content)
                and _meets(target, config.held_out) and (config.held_out != "exclude" or not is_held_out(style))):
            return Triplet(content, style, target)
    raise InvalidParameter("config.held_out", "a rule restyled scenes can meet", config.held_out)


def _meets(scene: Scene, held_out: str) -> bool:
    """Does the scene follow WorldConfig.held_out ("exclude", "only", "allow")?"""
    return held_out == "allow" or is_held_out(scene) == (held_out == "only")


def _check(scene: Scene, n: int, rng: np.random.Generator) -> None:
    if not isinstance(scene, Scene):
        raise InvalidParameter("scene", "a Scene", type(scene).__name__)
    check_scene(scene)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidParameter("n", "an integer >= 1", n)
    if not isinstance(rng, np.random.Generator):
        raise InvalidParameter("rng", "a numpy.random.Generator", type(rng).__name__)
