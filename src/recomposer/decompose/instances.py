"""Instances from an image: one segmenter contract, and a classical default that needs no weights.

A ``Segmenter`` is any callable image -> ``Instances`` (non-overlapping masks, optional category labels).
A learned one (e.g. a transformers segmentation model loaded from a local folder) is adapted to that
contract once; everything downstream takes any segmenter.

``ClassicalSegmenter``, deterministic, in five steps:
1. Work at ``max_side`` pixels or less (area resampling), in CIELab.
2. Over-segment by Felzenszwalb & Huttenlocher (2004) graph segmentation, without pre-smoothing so that
   anti-aliased fringes stay thin regions of their own.
3. Build the region adjacency graph and merge greedily, weakest boundary first, while the boundary's
   strength is below a threshold: ``merge_contrast``, raised to ``texture_factor`` times the image's
   median step contrast on textured images (photos), so that texture does not count as boundaries.
   Strength is the median, along the shared boundary, of the local step contrast: the Di Zenzo gradient
   of Lab smoothed by σ = 1 px, times σ·√(2π), i.e. the ΔE of the ideal step edge that makes that
   gradient. Judging boundaries (not mean colours) lets smooth gradients and soft textures merge however
   far apart their ends are; the median ignores the few boundary pixels that sit next to a third region.
4. Regions under ``min_area`` (a fraction of the image) or thinner than a pixel on average (area below
   their boundary length: edge fringes) join, smallest first, the neighbour of closest mean colour among
   those sharing at least half as much boundary as the longest-shared one.
5. Background: regions touching at least two sides of the image (else the one with the most border
   pixels), and any region whose pixels lie on average within ``background_distance`` ΔE of one of those
   regions' affine colour model (Lab ≈ [x, y, 1]·A, least squares): holes inside rings, pockets of a
   gradient enclosed by objects. Every other region is an instance, largest first, unlabelled.
"""

import heapq
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
from skimage.segmentation import felzenszwalb

from ..conditions.instances import Instances
from ..errors import InvalidParameter
from .sketch import as_rgb_float, colour_gradient, to_lab

CONTRAST_BINS = 64  # boundary contrast histograms: 1-ΔE bins from 0 to 64, then one for everything above
CONTRAST_SIGMA = 1.0  # smoothing (px) of the Lab image whose gradient gives the local step contrast


@runtime_checkable
class Segmenter(Protocol):
    """Image (RGB uint8 (H, W, 3), float in [0, 1], or a PIL image) -> Instances at the image's size."""

    def __call__(self, image) -> Instances: ...


@dataclass(frozen=True)
class ClassicalSegmenter:
    """Felzenszwalb superpixels merged across weak boundaries; background by border contact (module docstring)."""

    max_side: int = 256  # work at most this many pixels on the longer side (masks come back at full size)
    scale: float = 60.0  # Felzenszwalb's k in ΔE units: larger makes bigger superpixels
    merge_contrast: float = 8.0  # merge neighbours whose median boundary step contrast is below this (ΔE)...
    texture_factor: float = 4.0  # ...or below this multiple of the image's median step contrast, if higher
    min_area: float = 0.0015  # smaller regions (fraction of the image) join their most similar neighbour
    background_distance: float = 10.0  # mean ΔE from a background region's colour model that is still background

    def __post_init__(self) -> None:
        if isinstance(self.max_side, bool) or not isinstance(self.max_side, int) or not 16 <= self.max_side <= 4096:
            raise InvalidParameter("max_side", "an integer in [16, 4096] pixels", self.max_side)
        for name, low, high in (("scale", 0.0, 1e4), ("merge_contrast", 0.0, 200.0), ("texture_factor", 0.0, 100.0),
                                ("min_area", 0.0, 0.5), ("background_distance", 0.0, 200.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise InvalidParameter(name, f"a number in [{low}, {high}]", value)

    def __call__(self, image) -> Instances:
        rgb = as_rgb_float(image)
        height, width = rgb.shape[:2]
        shrink = self.max_side / max(height, width)
        if shrink < 1:  # 1. working size
            rgb = cv2.resize(rgb, (max(1, round(width * shrink)), max(1, round(height * shrink))),
                             interpolation=cv2.INTER_AREA)
        lab = to_lab(rgb)  # (h, w, 3)
        h, w = lab.shape[:2]
        superpixels = felzenszwalb(lab, scale=self.scale, sigma=0, min_size=max(8, h * w // 2000),
                                   channel_axis=-1)  # 2. (h, w) int; min_size: 0.05 % of the image
        smooth = cv2.GaussianBlur(lab, (0, 0), CONTRAST_SIGMA, borderType=cv2.BORDER_REFLECT)
        contrast = colour_gradient(smooth)[0] * CONTRAST_SIGMA * np.sqrt(2 * np.pi)  # (h, w) step contrast, ΔE
        graph = RegionGraph(superpixels, lab, contrast)
        graph.merge_weak_boundaries(max(self.merge_contrast, self.texture_factor * float(np.median(contrast))))  # 3.
        graph.absorb_small(self.min_area * h * w)  # 4.
        objects = _objects(graph.label_map(), lab, self.background_distance)  # 5. (h, w) 0 background, 1..N
        if shrink < 1:
            objects = cv2.resize(objects, (width, height), interpolation=cv2.INTER_NEAREST)
        return Instances.from_label_map(_largest_first(objects))


class RegionGraph:
    """Regions of a label map, their colour sums and sizes, and for each pair of neighbours the length
    of their shared boundary and a histogram of the step contrast along it. Merging adds them up."""

    def __init__(self, labels: np.ndarray, lab: np.ndarray, contrast: np.ndarray):
        labels = labels.astype(np.int64)
        n = int(labels.max()) + 1
        self.labels = labels
        self.size = np.bincount(labels.ravel(), minlength=n).astype(np.float64)  # (n,)
        self.colour = np.stack([np.bincount(labels.ravel(), lab[..., c].ravel(), n) for c in range(3)], 1)  # sums
        self.parent = np.arange(n)
        self.alive = np.ones(n, bool)
        self.version = np.zeros(n, np.int64)  # bumped when a region grows: older heap entries are stale
        # Neighbouring pixel pairs (right and down) across a region boundary; each pair's contrast is the
        # larger of its two pixels'.
        a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
        b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
        c = np.concatenate([np.maximum(contrast[:, :-1], contrast[:, 1:]).ravel(),
                            np.maximum(contrast[:-1, :], contrast[1:, :]).ravel()])
        cut = a != b
        a, b, c = a[cut], b[cut], c[cut]
        pair, index = np.unique(np.minimum(a, b) * n + np.maximum(a, b), return_inverse=True)
        bins = np.minimum(c.astype(np.int64), CONTRAST_BINS)  # bin k holds [k, k + 1) ΔE, the last the rest
        hist = np.bincount(index * (CONTRAST_BINS + 1) + bins, minlength=len(pair) * (CONTRAST_BINS + 1))
        hist = hist.reshape(len(pair), CONTRAST_BINS + 1)
        self.neighbours: list[dict[int, np.ndarray]] = [{} for _ in range(n)]  # j -> histogram (shared object)
        for p, h in zip(pair.tolist(), hist):
            i, j = divmod(p, n)
            self.neighbours[i][j] = self.neighbours[j][i] = h

    def strength(self, i: int, j: int) -> float:
        """Median step contrast along the boundary of i and j, rounded up to the histogram's 1-ΔE bins."""
        cumulative = np.cumsum(self.neighbours[i][j])
        return float(np.searchsorted(cumulative, 0.5 * cumulative[-1]) + 1)

    def mean_colour(self, i: int) -> np.ndarray:
        return self.colour[i] / self.size[i]

    def join(self, i: int, j: int) -> None:
        """Merge region j into region i."""
        self.size[i] += self.size[j]
        self.colour[i] += self.colour[j]
        for k, h in self.neighbours[j].items():
            if k == i:
                continue
            del self.neighbours[k][j]
            if k in self.neighbours[i]:
                self.neighbours[i][k] += h  # in place: the same array is neighbours[k][i]
            else:
                self.neighbours[i][k] = self.neighbours[k][i] = h
        del self.neighbours[i][j]
        self.neighbours[j] = {}
        self.parent[j], self.alive[j] = i, False
        self.version[i] += 1

    def merge_weak_boundaries(self, threshold: float) -> None:
        """Greedy hierarchical merging: always the weakest boundary next, while it is below ``threshold``."""
        heap = [(self.strength(i, j), i, j, 0, 0) for i in range(len(self.size)) for j in self.neighbours[i] if i < j]
        heapq.heapify(heap)
        while heap:
            strength, i, j, vi, vj = heapq.heappop(heap)
            if strength > threshold:  # the weakest boundary left is too strong: done
                break
            if not (self.alive[i] and self.alive[j]) or self.version[i] != vi or self.version[j] != vj:
                continue  # stale: one side has merged since
            if self.size[j] > self.size[i]:
                i, j = j, i
            self.join(i, j)
            for k in self.neighbours[i]:
                a, b = min(i, k), max(i, k)
                heapq.heappush(heap, (self.strength(a, b), a, b, int(self.version[a]), int(self.version[b])))

    def absorb_small(self, min_size: float) -> None:
        """Small or fringe-thin regions (area < boundary length) join, smallest first, the neighbour of
        closest mean colour among those sharing at least half as much boundary as the longest-shared one
        (so the blended row along a horizon joins sky or ground, not an object it happens to touch)."""
        merged = True
        while merged:  # again until none is left: a region that took in another may still be small
            merged = False
            for i in sorted(np.flatnonzero(self.alive).tolist(), key=lambda i: (self.size[i], i)):
                if not self.alive[i] or not self.neighbours[i]:
                    continue
                boundary = sum(float(h.sum()) for h in self.neighbours[i].values())
                if self.size[i] >= min_size and self.size[i] >= boundary:
                    continue
                shared = {k: float(h.sum()) for k, h in self.neighbours[i].items()}
                longest = max(shared.values())
                colour = self.mean_colour(i)
                target = min((k for k in shared if shared[k] >= 0.5 * longest),
                             key=lambda k: (np.linalg.norm(self.mean_colour(k) - colour), k))
                self.join(target, i)
                merged = True

    def label_map(self) -> np.ndarray:
        """(h, w) consecutive labels 0..R-1 of the merged regions."""
        root = self.parent.copy()
        while True:  # follow parents up to the roots
            nxt = root[root]
            if np.array_equal(nxt, root):
                break
            root = nxt
        _, compact = np.unique(root, return_inverse=True)
        return compact[self.labels]


def _objects(regions: np.ndarray, lab: np.ndarray, background_distance: float) -> np.ndarray:
    """(h, w) int32 label map: 0 for background regions (step 5), 1..N for the others."""
    h, w = regions.shape
    n = int(regions.max()) + 1
    flat = regions.ravel()
    size = np.bincount(flat, minlength=n).astype(np.float64)
    y, x = np.mgrid[0:h, 0:w]
    phi = np.stack([(x.ravel() + 0.5) / w, (y.ravel() + 0.5) / h, np.ones(h * w)], 1)  # (P, 3) [x, y, 1]
    colours = lab.reshape(-1, 3).astype(np.float64)  # (P, 3)

    sides = [regions[0], regions[-1], regions[:, 0], regions[:, -1]]
    touches = sum(np.bincount(side, minlength=n) > 0 for side in sides)  # (n,) sides touched
    seeds = np.flatnonzero(touches >= 2)
    if len(seeds) == 0:  # nothing spans two sides: the region with the most border pixels
        seeds = np.array([int(np.argmax(sum(np.bincount(side, minlength=n) for side in sides)))])
    background = np.zeros(n, bool)
    background[seeds] = True
    for seed in seeds:  # each seed's affine colour model, least squares over its pixels
        inside = flat == seed
        model, *_ = np.linalg.lstsq(phi[inside], colours[inside], rcond=None)  # (3, 3): Lab ≈ phi @ model
        residual = np.linalg.norm(colours - phi @ model, axis=1)  # (P,) ΔE from the seed's colour there
        background |= np.bincount(flat, residual, n) / size < background_distance
    relabel = np.zeros(n, np.int32)
    relabel[~background] = np.arange(1, int((~background).sum()) + 1, dtype=np.int32)
    return relabel[regions]


def _largest_first(objects: np.ndarray) -> np.ndarray:
    """Renumber labels 1..N by decreasing area (ties: old label order); 0 stays background."""
    area = np.bincount(objects.ravel(), minlength=int(objects.max()) + 1)[1:]
    rank = np.zeros(len(area) + 1, np.int32)
    rank[1:][np.lexsort((np.arange(len(area)), -area))] = np.arange(1, len(area) + 1, dtype=np.int32)
    return rank[objects]
