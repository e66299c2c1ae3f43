"""Sketch: an image's edges as 1-pixel binary lines (Composer's sketch: edge detection, then simplification).

Three sources of edges, one finishing step:
- ``"canny"`` (default): Canny (1986) on the CIELab image, so that edges between colours of equal
  lightness are found too. Lab is smoothed by a Gaussian of ``sigma`` (default scaled with the image
  side); the colour gradient is Di Zenzo's (the largest eigenvalue of the Lab structure tensor, in ΔE
  per pixel, and its direction); then OpenCV's non-maximum suppression and hysteresis. Thresholds are
  *step contrasts* in ΔE (CIE76) units, i.e. the height of an ideal step edge whose smoothed gradient
  reaches the threshold: ``gradient = contrast / (sigma·√(2π))``. The same numbers mean the same
  edges at every image size.
- ``"xdog"``: extended difference of Gaussians on lightness (Winnemöller, Kyprianidis & Olsen 2012),
  thresholded: a pen-drawing look; its dark strokes are thinned to their centre lines.
- ``"model"``: a learned edge model (``model=``), any callable image -> edge probability
  (``SketchModel``), e.g. HED or PiDiNet wrapped by ``TorchEdgeModel`` with weights from a local
  safetensors file; thresholded at ``threshold``.
Finishing ("simplification"): thinning to 1-pixel lines (skimage.morphology.thin: no 2x2 block of
line pixels remains) and removal of specks, connected lines shorter than ``min_length`` pixels.
"""

import math
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from ..conditions.sketch import finish
from ..errors import InvalidParameter

METHODS = ("canny", "xdog", "model")


@runtime_checkable
class SketchModel(Protocol):
    """A learned edge detector: RGB float32 (H, W, 3) in [0, 1] -> edge probability float (H, W) in [0, 1]."""

    def __call__(self, image: np.ndarray) -> np.ndarray: ...


def sketch(image, method: str = "canny", *, sigma: float | None = None, low: float = 6.0, high: float = 12.0,
           min_length: int | None = None, model: SketchModel | None = None, threshold: float = 0.5) -> np.ndarray:
    """1-pixel binary lines of an image: bool (H, W).

    image: RGB uint8 (H, W, 3), RGB float in [0, 1], grayscale (H, W), or a PIL image.
    method: "canny" (default), "xdog", or "model" (then ``model`` is required).
    sigma: Gaussian smoothing in pixels; default max(1, side / 256) for the shorter side.
    low, high: Canny hysteresis thresholds as step contrasts in ΔE units (see module docstring).
    min_length: lines with fewer pixels are dropped; default max(4, side / 32).
    model, threshold: the learned edge model and the probability above which a pixel is an edge.
    """
    rgb = as_rgb_float(image)
    side = min(rgb.shape[:2])
    if method not in METHODS:
        raise InvalidParameter("method", "one of " + ", ".join(METHODS), method)
    if (method == "model") != (model is not None) or (model is not None and not callable(model)):
        raise InvalidParameter("model", "a SketchModel (callable) exactly when method is 'model'", model)
    sigma = max(1.0, side / 256) if sigma is None else sigma
    if not _number(sigma) or not 0.3 <= sigma <= 32:
        raise InvalidParameter("sigma", "a number of pixels in [0.3, 32]", sigma)
    if not (_number(low) and _number(high) and 0 < low <= high):
        raise InvalidParameter("low", "a number with 0 < low <= high", (low, high))
    min_length = max(4, round(side / 32)) if min_length is None else min_length
    if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < 0:
        raise InvalidParameter("min_length", "an integer >= 0 (pixels)", min_length)
    if not _number(threshold) or not 0 < threshold < 1:
        raise InvalidParameter("threshold", "a probability in (0, 1)", threshold)

    if method == "canny":
        edges = _canny_lab(rgb, sigma, low, high)
    elif method == "xdog":
        edges = _xdog(rgb, sigma)
    else:
        prob = np.asarray(model(rgb), np.float32)
        if prob.shape != rgb.shape[:2]:
            raise InvalidParameter("model", f"a map of shape {rgb.shape[:2]}", prob.shape)
        edges = prob > threshold
    return finish(edges, min_length)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _canny_lab(rgb: np.ndarray, sigma: float, low: float, high: float) -> np.ndarray:
    lab = cv2.GaussianBlur(to_lab(rgb), (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    magnitude, theta = colour_gradient(lab)
    # cv2.Canny takes int16 gradients: fixed point, `scale` steps per ΔE/pixel; thresholds likewise.
    scale = 64.0
    dx = np.clip(np.rint(magnitude * np.cos(theta) * scale), -32767, 32767).astype(np.int16)
    dy = np.clip(np.rint(magnitude * np.sin(theta) * scale), -32767, 32767).astype(np.int16)
    peak = 1 / (sigma * math.sqrt(2 * math.pi))  # smoothed gradient of a unit step
    return cv2.Canny(dx, dy, low * peak * scale, high * peak * scale, L2gradient=True) > 0


def colour_gradient(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Di Zenzo (1986) gradient of a (smoothed) Lab image: the rate (ΔE per pixel) and direction (radians)
    of fastest change of the colour vector, from the structure tensor [[gxx, gxy], [gxy, gyy]] summed
    over channels (its largest eigenvalue and eigenvector). Sobel derivatives, reflected borders."""
    gx = cv2.Sobel(lab, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT) / 8  # (H, W, 3)
    gy = cv2.Sobel(lab, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT) / 8
    gxx, gyy, gxy = (gx * gx).sum(2), (gy * gy).sum(2), (gx * gy).sum(2)  # (H, W)
    largest = 0.5 * (gxx + gyy + np.sqrt((gxx - gyy) ** 2 + 4 * gxy * gxy))
    return np.sqrt(largest), 0.5 * np.arctan2(2 * gxy, gxx - gyy)


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """RGB float32 in [0, 1] -> CIELab float32 (D65; L in [0, 100]), OpenCV's conversion."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)


def _xdog(rgb: np.ndarray, sigma: float, k: float = 1.6, tau: float = 0.98, epsilon: float = -0.005) -> np.ndarray:
    """Dark strokes where the sharpened lightness D = G_σ − τ·G_kσ falls below ε (hard-threshold XDoG)."""
    lightness = to_lab(rgb)[..., 0] / 100.0
    d = (cv2.GaussianBlur(lightness, (0, 0), sigma) - tau * cv2.GaussianBlur(lightness, (0, 0), k * sigma))
    return d < epsilon


def as_rgb_float(image) -> np.ndarray:
    """An image as RGB float32 (H, W, 3) in [0, 1]; refuses anything else naming the field ``image``."""
    from PIL import Image

    a = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 8:
        raise InvalidParameter("image", "an RGB (H, W, 3) or grayscale (H, W) image at least 8 px a side",
                               a.shape)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == bool or not np.issubdtype(a.dtype, np.floating):
        raise InvalidParameter("image", "uint8, or float in [0, 1]", a.dtype)
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise InvalidParameter("image", "float values in [0, 1]", (float(np.nanmin(a)), float(np.nanmax(a))))
    return np.ascontiguousarray(a, dtype=np.float32)


class TorchEdgeModel:
    """A torch edge network as a SketchModel: (1, 3, H, W) in [0, 1] -> (1, 1, H, W) logits (or
    probabilities with ``logits=False``), weights loaded from a local safetensors file (never a pickle).

    Build the network yourself (e.g. a PiDiNet or HED module), then ``TorchEdgeModel(net, "edges.safetensors")``.
    """

    def __init__(self, network, weights: str | Path | None = None, logits: bool = True):
        import torch

        if weights is not None:
            from ..errors import ModelError
            from ..io.weights import load_safetensors

            try:
                network.load_state_dict(load_safetensors(weights))
            except RuntimeError as e:  # missing, unexpected or mis-shaped tensors
                raise ModelError(str(weights), f"does not fit the edge network: {str(e).splitlines()[0]}") from None
        self.network, self.logits, self._torch = network.eval(), logits, torch

    def __call__(self, image: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(image, np.float32)).permute(2, 0, 1)[None]  # (1, 3, H, W)
        with torch.no_grad():
            y = self.network(x)
        y = torch.sigmoid(y) if self.logits else y
        return y[0, 0].float().numpy()
