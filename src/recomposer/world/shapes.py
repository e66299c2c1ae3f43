"""Shape classes as signed distance functions (negative inside), each fitting in the unit circle.

Signed distances make rendering exact at any size: a pixel's coverage is
clip(0.5 − d / pixel, 0, 1) (anti-aliasing by the distance to the edge), its instance label
is d < 0 at its centre, and an outline is |d| < stroke. Formulas after Inigo Quilez's 2D
distance functions (polygon, heart); the polygon one is exact for any simple polygon.
Points are arrays (..., 2) in shape space: x right, y down, unit radius.
"""

import math

import numpy as np


def polygon(points: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Exact signed distance to a simple polygon (vertices (N, 2) in order). Winding-number sign."""
    px, py = points[..., 0], points[..., 1]
    d = (px - vertices[0, 0]) ** 2 + (py - vertices[0, 1]) ** 2
    sign = np.ones_like(px)
    n = len(vertices)
    for i in range(n):
        (vx, vy), (ux, uy) = vertices[i], vertices[i - 1]
        ex, ey = ux - vx, uy - vy
        wx, wy = px - vx, py - vy
        h = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        bx, by = wx - ex * h, wy - ey * h
        d = np.minimum(d, bx * bx + by * by)
        c1, c2, c3 = py >= vy, py < uy, ex * wy > ey * wx
        flip = (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
        sign = np.where(flip, -sign, sign)
    return sign * np.sqrt(d)


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer, inside = _regular(points), _regular(points, inner, -math.pi / 2 + math.pi / points)
    return np.stack([outer, inside], axis=1).reshape(-1, 2)  # alternate tips and notches


_CROSS = np.array([(-0.33, -1.0), (0.33, -1.0), (0.33, -0.33), (1.0, -0.33), (1.0, 0.33), (0.33, 0.33),
                   (0.33, 1.0), (-0.33, 1.0), (-0.33, 0.33), (-1.0, 0.33), (-1.0, -0.33), (-0.33, -0.33)]) * 0.95

POLYGONS = {
    "square": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=float) * 0.7,
    "triangle": _regular(3),  # centroid-centred, tip up
    "diamond": np.array([(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]),
    "hexagon": _regular(6, 0.95, 0.0),
    "pentagon": _regular(5, 0.95),
    "star": _star(),
    "cross": _CROSS,
}


def circle(p: np.ndarray) -> np.ndarray:
    return np.hypot(p[..., 0], p[..., 1]) - 0.9


def ring(p: np.ndarray) -> np.ndarray:
    """An annulus: radius 0.7 ± 0.25."""
    return np.abs(np.hypot(p[..., 0], p[..., 1]) - 0.7) - 0.25


def crescent(p: np.ndarray) -> np.ndarray:
    """A disc minus an offset disc (a bound, exact near the edge, which is all coverage needs)."""
    outer = np.hypot(p[..., 0], p[..., 1]) - 0.9
    bite = np.hypot(p[..., 0] - 0.45, p[..., 1] + 0.1) - 0.75
    return np.maximum(outer, -bite)


def heart(p: np.ndarray) -> np.ndarray:
    """Quilez's exact heart (tip at the origin, lobes up), scaled and centred into the unit circle."""
    scale = 0.68  # heart units per shape unit
    x = np.abs(p[..., 0]) * scale
    y = 0.655 - p[..., 1] * scale  # shape space y is down; the heart's tip is at the bottom
    lobe = np.hypot(x - 0.25, y - 0.75) - math.sqrt(2) / 4
    top = (x - 0.0) ** 2 + (y - 1.0) ** 2
    m = 0.5 * np.maximum(x + y, 0.0)
    body = np.sqrt(np.minimum(top, (x - m) ** 2 + (y - m) ** 2)) * np.sign(x - y)
    return np.where(x + y > 1.0, lobe, body) / scale


FUNCTIONS = {"circle": circle, "ring": ring, "crescent": crescent, "heart": heart}
SHAPES = ("circle", "square", "triangle", "star", "heart", "ring", "cross", "hexagon", "crescent", "diamond",
          "pentagon")
CONVEX = frozenset({"circle", "square", "triangle", "hexagon", "diamond", "pentagon"})


def distance(shape: str, p: np.ndarray) -> np.ndarray:
    """Signed distance of shape-space points p (..., 2) to ``shape`` (negative inside)."""
    if shape in POLYGONS:
        return polygon(p, POLYGONS[shape])
    return FUNCTIONS[shape](p)
