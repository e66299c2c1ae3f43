"""Render a scene at any size, with its exact ground truth.

Each object's signed distance d (shape units) gives, at pixel size px (image units),
    coverage α = clip(0.5 − d·r / px, 0, 1)      (anti-aliased edge, r = object radius)
and objects are composited back to front: C ← (1 − α)·C + α·colour(style). Only each object's
bounding box is evaluated. The instance label of a pixel is the front-most object whose coverage
at that pixel is at least one half (so masks and background partition the image); depth, the
sketch (1-px outlines between labels) and blobs follow from labels and the description.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .scene import BACKGROUND_COLOURS, COLOURS, Background, Scene, WorldObject
from .shapes import distance

OUTLINE_WIDTH = 0.14  # stroke half-width of the "outline" style, in units of the object's radius
BACKGROUND_DEPTH = 1.0  # depth: 0 nearest ... 1 farthest; objects span [0.1, 0.8], front-most nearest


@dataclass(frozen=True)
class Rendered:
    image: np.ndarray  # (S, S, 3) uint8 RGB
    labels: np.ndarray  # (S, S) int16: 0 background, k + 1 for scene.objects[k]
    depth: np.ndarray  # (S, S) float32 in [0, 1], 0 nearest
    sketch: np.ndarray  # (S, S) bool, 1-px outlines of every visible region
    intensity: np.ndarray  # (S, S) float32 in [0, 1], luminance (ITU-R BT.601 weights)

    @property
    def masks(self) -> np.ndarray:
        """(N, S, S) bool instance masks, one per object (an object hidden entirely has an empty mask)."""
        n = int(self.labels.max()) if self.labels.size else 0
        return self.labels[None] == np.arange(1, n + 1, dtype=np.int16)[:, None, None]


def render(scene: Scene, size: int = 64) -> Rendered:
    """The scene as an image of size x size pixels, with instance labels, depth, sketch and intensity."""
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 4096:
        from ..errors import InvalidParameter

        raise InvalidParameter("size", "an integer in [16, 4096] pixels", size)
    centres = pixel_centres(size)
    image = _background(scene.background, centres)  # (S, S, 3) float in [0, 1]
    labels = np.zeros((size, size), np.int16)
    n = len(scene.objects)
    for k, obj in enumerate(scene.objects):
        found = object_patch(obj, centres)
        if found is None:
            continue
        ((y0, y1), (x0, x1)), px, py, d, local, cover = found
        colour = _fill(obj, local, d, px, py)  # (h, w, 3)
        patch = image[y0:y1, x0:x1]
        patch += cover[..., None] * (colour - patch)
        labels[y0:y1, x0:x1][cover >= 0.5] = k + 1
    depth = _depth(scene, labels, centres, n)
    image8 = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    intensity = (image8 @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0
    return Rendered(image8, labels, depth, outlines(labels), intensity.astype(np.float32))


def object_patch(obj: WorldObject, centres: np.ndarray):
    """Inside the object's box: its rows and columns, pixel centres px, py (h, w), signed distance d,
    shape-space points (h, w, 2) and coverage (h, w); None when the object lies off the image."""
    size = len(centres)
    box = object_box(obj, size)
    if box is None:
        return None
    (y0, y1), (x0, x1) = box
    px, py = np.meshgrid(centres[x0:x1], centres[y0:y1])  # (h, w)
    d, local = shape_space(obj, px, py)
    return box, px, py, d, local, object_coverage(obj, d, size)


def pixel_centres(size: int) -> np.ndarray:
    """Pixel centres in image units, (size,) float32."""
    return (np.arange(size, dtype=np.float32) + 0.5) / size


def object_box(obj: WorldObject, size: int):
    """Pixel rows and columns the object can touch (its unit circle, the outline stroke, one pixel), or None."""
    r = obj.size * (1 + OUTLINE_WIDTH if obj.style == "outline" else 1)
    y0, y1 = int(np.floor((obj.y - r) * size)) - 1, int(np.ceil((obj.y + r) * size)) + 1
    x0, x1 = int(np.floor((obj.x - r) * size)) - 1, int(np.ceil((obj.x + r) * size)) + 1
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, size), min(x1, size)
    return None if y0 >= y1 or x0 >= x1 else ((y0, y1), (x0, x1))


def shape_space(obj: WorldObject, px: np.ndarray, py: np.ndarray):
    """Signed distance (shape units) and shape-space coordinates of image points.
    Rotation is counter-clockwise on screen (y down), so points are rotated by +rotation into shape space."""
    c, s = np.cos(obj.rotation), np.sin(obj.rotation)
    dx, dy = (px - obj.x) / obj.size, (py - obj.y) / obj.size
    local = np.stack([c * dx - s * dy, s * dx + c * dy], axis=-1)  # (h, w, 2)
    return distance(obj.shape, local), local


def object_coverage(obj: WorldObject, d: np.ndarray, size: int) -> np.ndarray:
    if obj.style == "outline":
        d = np.abs(d) - OUTLINE_WIDTH  # a stroke along the edge
    return np.clip(0.5 - d * obj.size * size, 0.0, 1.0).astype(np.float32)


def _fill(obj: WorldObject, local: np.ndarray, d: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """The object's colour at each point, by its style; patterns live in shape space so they
    scale and rotate with the object."""
    base = np.asarray(COLOURS[obj.colour], np.float32) / 255.0
    style = obj.style
    if style in ("flat", "outline"):
        return np.broadcast_to(base, (*d.shape, 3))
    u, v = local[..., 0], local[..., 1]
    a = obj.pattern_angle
    if style == "gradient":  # shaded: lit from pattern_angle, darker away from the light
        light = 0.5 * (1 + (np.cos(a) * u + np.sin(a) * v) / 1.0)
        return np.clip(base[None, None] * (1.25 - 0.6 * light[..., None]), 0, 1)
    if style == "grain":
        noise = _hash_noise(u * 6.0, v * 6.0, obj.texture_seed) - 0.5
        return np.clip(base[None, None] + 0.35 * noise[..., None], 0, 1)
    second = _second_tone(base)
    p = obj.pattern_scale
    if style == "stripes":
        t = (np.cos(a) * u + np.sin(a) * v) / p
        on = (t - np.floor(t)) < 0.5
    elif style == "dots":
        cu, cv = u / p - np.floor(u / p) - 0.5, v / p - np.floor(v / p) - 0.5
        on = np.hypot(cu, cv) > 0.3
    else:  # checker
        on = (np.floor(u / p) + np.floor(v / p)) % 2 == 0
    return np.where(on[..., None], base[None, None], second[None, None])


def _second_tone(base: np.ndarray) -> np.ndarray:
    """The pattern's other tone: the colour pulled towards white (dark colours) or black (light ones)."""
    luma = float(base @ np.array([0.299, 0.587, 0.114], np.float32))
    return base + 0.5 * ((1.0 if luma < 0.55 else 0.0) - base)


def _hash_noise(u: np.ndarray, v: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic value noise in [0, 1] from continuous coordinates (the same at every render size)."""
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)

    def h(i, j):
        x = np.sin(i * 127.1 + j * 311.7 + (seed % 9973) * 0.123) * 43758.5453
        return x - np.floor(x)

    top = h(iu, iv) + fu * (h(iu + 1, iv) - h(iu, iv))
    bottom = h(iu, iv + 1) + fu * (h(iu + 1, iv + 1) - h(iu, iv + 1))
    return top + fv * (bottom - top)


def _background(b: Background, centres: np.ndarray) -> np.ndarray:
    c1 = np.asarray(BACKGROUND_COLOURS[b.colour], np.float32) / 255.0
    c2 = np.asarray(BACKGROUND_COLOURS[b.colour2], np.float32) / 255.0
    size = len(centres)
    y = centres[:, None, None]  # (S, 1, 1)
    if b.kind == "solid":
        rows = np.broadcast_to(c1, (size, 1, 3))
    elif b.kind == "gradient":
        rows = c1 + (c2 - c1) * y
    elif b.kind == "horizon":  # sky above, ground below, anti-aliased line
        t = np.clip(0.5 + (y - b.horizon) * size, 0.0, 1.0)
        rows = c1 + (c2 - c1) * t
    else:  # textured: the first tone with soft value noise of the second
        uu, vv = np.meshgrid(centres * 10.0, centres * 10.0)
        n = _hash_noise(uu, vv, b.texture_seed)[..., None]  # (S, S, 1)
        return (c1 + (c2 - c1) * 0.3 * n).astype(np.float32)
    return np.ascontiguousarray(np.broadcast_to(rows, (size, size, 3)), dtype=np.float32).copy()


def _depth(scene: Scene, labels: np.ndarray, centres: np.ndarray, n: int) -> np.ndarray:
    """Background farthest (a ground plane below a horizon comes nearer towards the bottom: 1.0 -> 0.9);
    object k of n at 0.8 − 0.7·k/(n − 1): later (in front) is nearer."""
    size = len(centres)
    depth = np.full((size, size), BACKGROUND_DEPTH, np.float32)
    b = scene.background
    if b.kind == "horizon":
        ground = centres > b.horizon
        depth[ground] = BACKGROUND_DEPTH - 0.1 * ((centres[ground] - b.horizon) / max(1 - b.horizon, 1e-6))[:, None]
    per_object = np.concatenate([[0.0], object_depths(n)]).astype(np.float32)
    return np.where(labels > 0, per_object[labels], depth)


def occlusions(scene: Scene, rendered: Rendered) -> list[tuple[int, int]]:
    """(front, back) pairs of visible objects where the front one hides part of the back one: the back one's
    silhouette (coverage >= 1/2) reaches under the front one's visible pixels. Objects that merely touch are
    not pairs: nothing in the image tells their order."""
    centres = pixel_centres(len(rendered.labels))
    found = []
    for j in (int(k) - 1 for k in np.unique(rendered.labels) if k > 0):  # the visible objects
        patch = object_patch(scene.objects[j], centres)
        if patch is None:
            continue
        ((y0, y1), (x0, x1)), *_, cover = patch
        under = rendered.labels[y0:y1, x0:x1][cover >= 0.5]  # who is seen where object j lies
        found += [(int(k) - 1, j) for k in np.unique(under) if k - 1 > j]  # drawn later: in front
    return sorted(found)


def object_depths(n: int) -> np.ndarray:
    """Depth of each object, back to front."""
    return np.array([0.8 - 0.7 * k / max(n - 1, 1) for k in range(n)], np.float32)


def outlines(labels: np.ndarray) -> np.ndarray:
    """1-px lines: where two neighbouring pixels carry different labels, mark the front one
    (higher label; an object against the background marks the object's own edge pixel)."""
    sketch = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        a = labels.take(range(labels.shape[axis] - 1), axis=axis)
        b = labels.take(range(1, labels.shape[axis]), axis=axis)
        differ = a != b
        first = [slice(None)] * 2
        second = [slice(None)] * 2
        first[axis], second[axis] = slice(0, -1), slice(1, None)
        sketch[tuple(first)] |= differ & (a > b)
        sketch[tuple(second)] |= differ & (b > a)
    return sketch


@lru_cache(maxsize=None)
def canonical_blob(shape: str) -> tuple[float, float, float, float, float]:
    """The IoU-maximising ellipse of a shape in shape space (cx, cy, a, b, θ), from a 256-px render."""
    from ..ellipse import fit_ellipse

    n = 256
    grid = (np.arange(n) + 0.5) / n * 2.4 - 1.2  # shape units [-1.2, 1.2]
    u, v = np.meshgrid(grid, grid)
    e = fit_ellipse(distance(shape, np.stack([u, v], -1)) < 0)
    scale = 2.4 / n
    return (e.cx * scale - 1.2, e.cy * scale - 1.2, e.a * scale, e.b * scale, e.theta)


def blobs(scene: Scene, size: int) -> list:
    """One blob per object: its shape's IoU-maximising ellipse, moved, scaled and turned with the object,
    in pixels at this render size (the amodal shape: what the object is, even where it is occluded).

    A shape-space offset v lands at image offset r·R(−rotation)·v, so a shape-space angle φ (x towards y)
    becomes φ − rotation on the image.
    """
    from ..ellipse import Ellipse

    out = []
    for obj in scene.objects:
        cx, cy, a, b, theta = canonical_blob(obj.shape)
        c, s = np.cos(obj.rotation), np.sin(obj.rotation)
        x = obj.x + obj.size * (c * cx + s * cy)
        y = obj.y + obj.size * (-s * cx + c * cy)
        out.append(Ellipse.canonical(x * size, y * size, a * obj.size * size, b * obj.size * size,
                                     theta - obj.rotation))
    return out
