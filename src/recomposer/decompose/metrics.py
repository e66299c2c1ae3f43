"""Scores for decompositions against exact ground truth (the shapes world), shared by tests and benchmarks.

- Edge F1 with a distance tolerance (as in the BSDS benchmark, without its one-to-one matching):
  a predicted pixel is correct when a true edge pixel lies within ``tolerance`` pixels (Euclidean),
  a true pixel is found when a predicted pixel lies within ``tolerance``; both distances come from a
  Euclidean distance transform. Counts can be pooled over a data set (``EdgeCounts``), so F1 over
  many images weighs every edge pixel equally (BSDS "ODS" at one fixed threshold).
- Matched mean IoU for instances: predicted and true masks are matched one-to-one by the Hungarian
  algorithm maximising total IoU; the score is the mean over the *true* objects of their matched IoU,
  an unmatched true object (or one matched with IoU 0) counting 0. Extra predicted masks cost nothing
  here, so report their number beside it (``MatchResult.unmatched_predictions``).
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class EdgeCounts:
    """Pixel counts behind an edge F1; add them to pool images."""

    predicted: int = 0  # predicted edge pixels
    correct: int = 0  # predicted pixels within tolerance of a true edge
    true: int = 0  # true edge pixels
    found: int = 0  # true pixels within tolerance of a predicted edge

    def __add__(self, other: "EdgeCounts") -> "EdgeCounts":
        return EdgeCounts(self.predicted + other.predicted, self.correct + other.correct,
                          self.true + other.true, self.found + other.found)

    @property
    def precision(self) -> float:
        return self.correct / self.predicted if self.predicted else float(self.true == 0)

    @property
    def recall(self) -> float:
        return self.found / self.true if self.true else float(self.predicted == 0)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0


def edge_counts(pred: np.ndarray, truth: np.ndarray, tolerance: float = 2.0) -> EdgeCounts:
    """Tolerance-matched pixel counts of a predicted edge map against a true one (both (H, W) bool)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"edge maps must be (H, W) of one shape, got {pred.shape} and {truth.shape}")
    correct = found = 0
    if pred.any() and truth.any():
        to_truth = ndimage.distance_transform_edt(~truth)  # distance of every pixel to the nearest true edge
        to_pred = ndimage.distance_transform_edt(~pred)
        correct = int((to_truth[pred] <= tolerance).sum())
        found = int((to_pred[truth] <= tolerance).sum())
    return EdgeCounts(int(pred.sum()), correct, int(truth.sum()), found)


def edge_f1(pred: np.ndarray, truth: np.ndarray, tolerance: float = 2.0) -> float:
    """F1 of one edge map against the truth, with a distance tolerance in pixels (see module docstring)."""
    return edge_counts(pred, truth, tolerance).f1


@dataclass(frozen=True)
class MatchResult:
    ious: np.ndarray  # (N_true,) IoU of each true object with its matched prediction (0 when unmatched)
    pairs: tuple[tuple[int, int], ...]  # (true index, predicted index) of matches with IoU > 0
    unmatched_predictions: int  # predicted masks matched to no true object

    @property
    def miou(self) -> float:
        return float(self.ious.mean()) if len(self.ious) else 1.0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU between every mask of a (N, H, W) and of b (M, H, W)."""
    a = np.asarray(a, bool).reshape(len(a), -1).astype(np.float32)
    b = np.asarray(b, bool).reshape(len(b), -1).astype(np.float32)
    inter = a @ b.T  # (N, M)
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def match_masks(pred_masks: np.ndarray, true_masks: np.ndarray) -> MatchResult:
    """Hungarian matching of predicted to true masks by IoU (see module docstring)."""
    true_masks = np.asarray(true_masks, bool)
    pred_masks = np.asarray(pred_masks, bool)
    ious = np.zeros(len(true_masks))
    pairs: list[tuple[int, int]] = []
    if len(true_masks) and len(pred_masks):
        m = iou_matrix(true_masks, pred_masks)
        rows, cols = linear_sum_assignment(m, maximize=True)
        for i, j in zip(rows, cols):
            if m[i, j] > 0:
                ious[i] = m[i, j]
                pairs.append((int(i), int(j)))
    return MatchResult(ious, tuple(pairs), len(pred_masks) - len(pairs))


def nonempty(masks: np.ndarray) -> np.ndarray:
    """The masks (N, H, W) that have at least one pixel: objects hidden entirely cannot be found, so
    the shapes world's true masks are scored without them."""
    masks = np.asarray(masks, bool)
    return masks[masks.reshape(len(masks), -1).any(axis=1)]


def matched_miou(pred_masks: np.ndarray, true_masks: np.ndarray) -> float:
    """Mean over true objects of the IoU with their Hungarian-matched prediction (unmatched: 0)."""
    return match_masks(pred_masks, true_masks).miou
