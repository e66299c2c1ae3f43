"""Spatial relations between the objects of a scene, read from its description (exact, not estimated).

- ``inside``: a smaller object drawn in front of a container shape, centred within its inner part;
- ``left of`` / ``right of`` / ``above`` / ``below``: centres differ by more than a margin along the
  axis that dominates (image y grows downwards);
- ``in front of``: two objects overlap and the first is drawn later.
"""

import math

from .scene import CONTAINERS, Scene


def inside_pairs(scene: Scene) -> list[tuple[int, int]]:
    """(inner, container) index pairs."""
    pairs = []
    for j, inner in enumerate(scene.objects):
        for i, outer in enumerate(scene.objects[:j]):
            if (outer.shape in CONTAINERS and inner.size <= 0.5 * outer.size
                    and math.hypot(inner.x - outer.x, inner.y - outer.y) <= 0.3 * outer.size):
                pairs.append((j, i))
    return pairs


def relation(scene: Scene, a: int, b: int) -> str | None:
    """How object a relates to object b: 'inside', 'left of', 'right of', 'above', 'below', or None."""
    if (a, b) in inside_pairs(scene):
        return "inside"
    p, q = scene.objects[a], scene.objects[b]
    dx, dy = p.x - q.x, p.y - q.y
    margin = 0.5 * max(p.size, q.size)
    if abs(dx) >= abs(dy) and abs(dx) > margin:
        return "left of" if dx < 0 else "right of"
    if abs(dy) > abs(dx) and abs(dy) > margin:
        return "above" if dy < 0 else "below"
    return None


def overlaps(scene: Scene, a: int, b: int) -> bool:
    p, q = scene.objects[a], scene.objects[b]
    return math.hypot(p.x - q.x, p.y - q.y) < 0.9 * (p.size + q.size)


def in_front_of(scene: Scene, a: int, b: int) -> bool:
    return a > b and overlaps(scene, a, b)
