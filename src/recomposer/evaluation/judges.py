"""How far an image obeys one condition: one function per condition kind, each returning numbers.

Every judge compares a generated image (read by the analyser at 64 px) with the ground truth of the
shapes-world scene the condition came from:
- caption: per mention of the caption (``parse_mentions``), is there an object of that shape (shape), of
  that colour and shape (colour: the attribute bound to the right object), exactly that many (count; a
  plural without a number means at least two); per stated relation (``parse_relations``), do two such
  objects stand in it (relations.py's rules, on the scene the analyser read back);
- instances: Hungarian-matched mIoU of the analyser's masks against the condition's masks;
- sketch: edge F1 at 2 px of the analyser's object outlines against the condition's sketch;
- depth: Spearman ρ of the analyser's depth map against the condition's, and the share of occluding object
  pairs (one hides part of the other; mere touching shows no order) whose front one is read as nearer
  (median depth over the condition's masks);
- palette: histogram intersection Σ min(p, q) of the image's colour histogram with the condition's;
- intensity: PSNR (dB) of the image's luminance against the condition's;
- masked image: PSNR (dB) outside the mask against the source image (infinite = identical pixels);
- image embedding: cosine similarity of the image's embedding with the condition's.
Realism is a set figure: the Fréchet distance (Heusel et al. 2017) between analyser features of two sets.
"""

import math

import numpy as np
from scipy import linalg, stats

from ..colour import colour_histogram
from ..decompose.metrics import edge_counts, match_masks, nonempty
from ..models.analyser import SIZE, Analysis, reads_nearer
from ..world.captions import parse_mentions, parse_relations
from ..world.dataset import WorldSample
from ..world.relations import in_front_of, relation
from ..world.render import occlusions, outlines
from ..world.scene import Background, Scene, WorldObject


def caption_scores(analysis: Analysis, caption: str) -> dict[str, list[bool]]:
    """Per-mention shape / colour / count verdicts and per-relation verdicts (lists: pooled over scenes)."""
    found = analysis.objects
    shapes = {s for _, s in found}
    scores = {"shape": [], "colour": [], "count": [], "relation": []}
    for colour, shape, count in parse_mentions(caption):
        n = found.count((colour, shape))
        scores["shape"].append(shape in shapes)
        scores["colour"].append(n > 0)
        scores["count"].append(n == count if count else n >= 2)
    scene = analysed_scene(analysis)
    for first, rel, second in parse_relations(caption):
        scores["relation"].append(any(
            a != b and holds(scene, a, rel, b) for a, o in enumerate(scene.objects) if (o.colour, o.shape) == first
            for b, q in enumerate(scene.objects) if (q.colour, q.shape) == second))
    return scores


def holds(scene: Scene, a: int, rel: str, b: int) -> bool:
    return in_front_of(scene, a, b) if rel == "in front of" else relation(scene, a, b) == rel


def analysed_scene(analysis: Analysis) -> Scene:
    """The scene the analyser read, back to front by depth; an object's size is the farthest reach of its
    mask from its voted centre (what the world calls the radius, for an object in full view)."""
    objects = []
    for k in np.argsort(-analysis.depths, kind="stable"):  # farthest first
        ys, xs = np.nonzero(analysis.masks[k])
        cx, cy = analysis.centres[k]
        reach = float(np.sqrt(((xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2).max())) + 0.5
        objects.append(WorldObject(analysis.shapes[k], analysis.colours[k], analysis.styles[k], float(cx) / SIZE,
                                   float(cy) / SIZE, reach / SIZE, 0.0))
    return Scene(tuple(objects), Background("solid", "cream", "cream"))


def instances_miou(analysis: Analysis, masks: np.ndarray) -> float:
    return match_masks(analysis.masks, nonempty(masks)).miou


def sketch_counts(analysis: Analysis, lines: np.ndarray):
    """Edge counts (pooled into an F1 over scenes) of the analyser's outlines against ``lines`` (64 px)."""
    return edge_counts(outlines(analysis.labels), np.asarray(lines, bool))


def depth_scores(analysis: Analysis, truth: WorldSample) -> dict[str, list[float]]:
    """Spearman ρ over pixels and, per pair of visible objects where one hides part of the other
    (``occlusions``), whether the front one reads nearer."""
    r = truth.rendered
    rho = stats.spearmanr(analysis.depth.ravel(), r.depth.ravel()).statistic
    masks = r.masks
    return {"spearman": [float(rho) if math.isfinite(rho) else 0.0],
            "order": [float(reads_nearer(analysis.depth, masks[f], masks[b]))
                      for f, b in occlusions(truth.scene, r)]}


def palette_intersection(image: np.ndarray, histogram: np.ndarray) -> float:
    p, q = colour_histogram(image), np.asarray(histogram, np.float64)
    return float(np.minimum(p / p.sum(), q / q.sum()).sum())


def intensity_psnr(image: np.ndarray, intensity: np.ndarray) -> float:
    grey = (image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])) / 255.0
    return psnr(grey, intensity)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of values in [0, 1]; infinite for identical arrays."""
    mse = float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """|μx − μy|² + tr(Σx + Σy − 2 (Σx Σy)^½) between two feature sets (N, D) and (M, D), N, M ≥ 2."""
    mx, my = x.mean(0), y.mean(0)
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = linalg.sqrtm(sx @ sy)
    if np.iscomplexobj(root):
        root = root.real  # round-off leaves tiny imaginary parts on near-singular covariances
    return float(((mx - my) ** 2).sum() + np.trace(sx + sy - 2 * root))
