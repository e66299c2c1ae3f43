"""Blob ellipses: the tilted ellipse that best covers an instance mask (BlobGEN, Nie et al. 2024, §3.1).

A blob is τ = [c_x, c_y, a, b, θ]: centre, semi-major radius a ≥ semi-minor radius b > 0, and the
angle θ of the major axis. BlobGEN fits it to an instance mask to maximise IoU; so do we:

1. Moments: the ellipse with the mask's mean and second moments. Each pixel is a unit square, so
   Σ = cov(pixel centres) + I/12; a filled ellipse has variance a²/4 and b²/4 along its axes, so
   a = 2√λ₁, b = 2√λ₂, and θ is the direction of λ₁'s eigenvector.
2. Search: Nelder–Mead over (c_x, c_y, log a, log b, θ) maximising a soft IoU Σmin(c, m) / Σmax(c, m),
   where c is the ellipse's anti-aliased coverage, so the objective is continuous rather than
   piecewise constant. It runs on the mask's padded bounding box, area-averaged into cells so that
   the object spans at most `search_cells` cells, which makes its cost independent of the mask size.
3. The exact IoU decides between the moments ellipse and the search result, so the fit is never
   worse than the moments ellipse.

Coordinates are pixels of the mask's grid: pixel (row i, column j) is the unit square
[j, j+1) × [i, i+1), with centre (x, y) = (j + 0.5, i + 0.5); x grows right, y grows down. With this
convention resizing an image by s scales every coordinate by exactly s (`Ellipse.scaled`). θ is measured
from +x towards +y (clockwise on screen): the major axis points along (cos θ, sin θ). θ and θ + π are the
same ellipse, so `Ellipse.canonical` (and hence the fitter) returns θ ∈ (−π/2, π/2], and 0 for a circle.
An ellipse covers the pixels whose centres it contains; IoU is measured on the image grid, so an
ellipse may run off the image for free (an object cut by the border keeps its full ellipse); the search
only prefers, among equally good fits, the one with least area off the image (a mask filling the image
gets an ellipse hugging it, not an arbitrary larger one).
"""

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy.optimize import minimize  # scipy is a dependency of scikit-image

from .errors import InvalidParameter, RecomposerError


@dataclass(frozen=True)
class Ellipse:
    cx: float  # centre x, pixels (a pixel centre is at column + 0.5)
    cy: float  # centre y, pixels (row + 0.5), y down
    a: float  # semi-major radius, pixels; a >= b
    b: float  # semi-minor radius, pixels; b > 0
    theta: float  # major-axis angle from +x towards +y, radians in (-pi, pi]

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidParameter(f"ellipse.{f.name}", "a finite number", value)
        if not self.b > 0:
            raise InvalidParameter("ellipse.b", "> 0", self.b)
        if not self.a >= self.b:
            raise InvalidParameter("ellipse.a", f">= b ({self.b})", self.a)
        if not -math.pi < self.theta <= math.pi:
            raise InvalidParameter("ellipse.theta", "in (-pi, pi]", self.theta)

    @classmethod
    def canonical(cls, cx: float, cy: float, r1: float, r2: float, theta: float) -> "Ellipse":
        """The ellipse with radius r1 along angle θ and r2 across it, written with a >= b and θ ∈ (−π/2, π/2].

        A circle (radii equal to 1e-9 relative) gets θ = 0.
        """
        r1, r2, theta = float(r1), float(r2), float(theta)
        if r2 > r1:  # the major axis is the other one, a quarter turn away
            r1, r2, theta = r2, r1, theta + math.pi / 2
        theta = math.remainder(theta, math.pi)  # [-pi/2, pi/2]
        if theta <= -math.pi / 2:
            theta += math.pi
        if r1 - r2 <= 1e-9 * r1:  # a circle: every angle is the same ellipse
            theta = 0.0
        return cls(float(cx), float(cy), r1, r2, theta)

    def to_json(self) -> dict:
        """A JSON-ready dict {"cx", "cy", "a", "b", "theta"} (pixels, radians)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Ellipse":
        names = [f.name for f in fields(cls)]
        if not isinstance(data, dict) or sorted(data) != sorted(names):
            raise InvalidParameter("ellipse", f"an object with exactly the keys {', '.join(names)}", data)
        return cls(**{name: data[name] for name in names})

    def scaled(self, sx: float, sy: float) -> "Ellipse":
        """The image of this ellipse under (x, y) -> (sx·x, sy·y), e.g. resizing its image by (sx, sy).

        The ellipse is {p : (p − c)ᵀ A (p − c) <= 1} with A = R diag(a⁻², b⁻²) Rᵀ; under p' = S p it is
        A' = S⁻¹ A S⁻¹, whose eigenvalues are the new a⁻², b⁻² (an anisotropic scale also turns θ).
        """
        for name, s in (("sx", sx), ("sy", sy)):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not (math.isfinite(s) and s > 0):
                raise InvalidParameter(name, "a finite number > 0", s)
        cos, sin = math.cos(self.theta), math.sin(self.theta)
        rotation = np.array([[cos, -sin], [sin, cos]])
        shape = rotation @ np.diag([self.a**-2, self.b**-2]) @ rotation.T  # (2, 2)
        unscale = np.diag([1 / sx, 1 / sy])
        eigenvalues, eigenvectors = np.linalg.eigh(unscale @ shape @ unscale)  # ascending
        major = eigenvectors[:, 0]  # the smallest eigenvalue belongs to the longest axis
        return Ellipse.canonical(sx * self.cx, sy * self.cy, eigenvalues[0] ** -0.5, eigenvalues[1] ** -0.5,
                                 math.atan2(major[1], major[0]))

    def normalised(self, width: int, height: int) -> "Ellipse":
        """The same region in coordinates where the image is the unit square: `scaled(1/W, 1/H)`.

        The centre becomes (cx/W, cy/H); for a square image the radii are a/W, b/W and θ is kept,
        otherwise radii and θ are those of the stretched ellipse (so it still covers the same pixels).
        """
        return self.scaled(1 / width, 1 / height)

    def denormalised(self, width: int, height: int) -> "Ellipse":
        """Inverse of `normalised`: from unit-square coordinates to the pixels of a width × height image."""
        return self.scaled(width, height)


def iou(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """|A ∩ B| / |A ∪ B| of two binary masks of one shape; two empty masks are identical (IoU 1)."""
    a, b = _as_mask(mask_a, "mask_a"), _as_mask(mask_b, "mask_b")
    if a.shape != b.shape:
        raise InvalidParameter("mask_b", f"the shape of mask_a {a.shape}", b.shape)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def ellipse_mask(e: Ellipse, height: int, width: int) -> np.ndarray:
    """The (height, width) bool mask of the pixels whose centres lie inside the ellipse."""
    for name, n in (("height", height), ("width", width)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InvalidParameter(name, "an integer >= 1", n)
    out = np.zeros((height, width), dtype=bool)
    i0, start, stop = _row_spans(e, height, width)
    columns = np.arange(width)
    out[i0 : i0 + len(start)] = (columns >= start[:, None]) & (columns < stop[:, None])
    return out


def moments_ellipse(mask: np.ndarray) -> Ellipse:
    """The ellipse with the mask's mean and covariance, each pixel a unit square (step 1 of `fit_ellipse`)."""
    m = _as_nonempty_mask(mask)
    y0, y1, x0, x1 = _bounding_box(m)
    crop = m[y0:y1, x0:x1].astype(np.float32)  # (h, w)
    columns, rows = crop.sum(axis=0, dtype=np.float64), crop.sum(axis=1, dtype=np.float64)  # (w,), (h,)
    xs, ys = np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5  # pixel-centre coordinates
    n = columns.sum()
    mean_x, mean_y = columns @ xs / n, rows @ ys / n
    dx, dy = xs - mean_x, ys - mean_y
    var_x, var_y = columns @ dx**2 / n, rows @ dy**2 / n
    cov_xy = dy @ (crop @ dx.astype(np.float32)).astype(np.float64) / n
    covariance = np.array([[var_x, cov_xy], [cov_xy, var_y]]) + np.eye(2) / 12  # + I/12: pixels are unit squares
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    major = eigenvectors[:, 1]
    return Ellipse.canonical(mean_x, mean_y, 2 * math.sqrt(eigenvalues[1]), 2 * math.sqrt(eigenvalues[0]),
                             math.atan2(major[1], major[0]))


def fit_ellipse(mask: np.ndarray, *, search_cells: int = 64) -> Ellipse:
    """The tilted ellipse of largest IoU with `mask`: moments, then Nelder–Mead on a soft IoU (module docstring).

    search_cells: the search sees the object's longer side as at most this many area-averaged cells
    (more is slower and slightly more precise). The result's IoU is never below `moments_ellipse`'s.
    """
    if isinstance(search_cells, bool) or not isinstance(search_cells, int) or search_cells < 8:
        raise InvalidParameter("search_cells", "an integer >= 8", search_cells)
    m = _as_nonempty_mask(mask)
    start = moments_ellipse(m)
    searched = _search(m, start, search_cells)
    exact = _ExactIoU(m)
    return max([searched, start], key=exact)  # a tie keeps the search result


# --- the search -----------------------------------------------------------------------------------------

OUTSIDE_WEIGHT = 1e-3  # soft-IoU penalty on ellipse area outside the search window (mostly off-image): a tie-breaker


def _search(m: np.ndarray, start: Ellipse, search_cells: int) -> Ellipse:
    """Nelder–Mead on the soft IoU over the padded bounding box, in cells of s × s pixels."""
    height, width = m.shape
    y0, y1, x0, x1 = _bounding_box(m)
    size = max(y1 - y0, x1 - x0)
    s = max(1, math.ceil(size / search_cells))  # pixels per cell side
    pad = math.ceil(0.25 * size) + 2 * s  # room for an ellipse somewhat larger than the mask
    y0, y1, x0, x1 = max(0, y0 - pad), min(height, y1 + pad), max(0, x0 - pad), min(width, x1 + pad)
    nh, nw = -(-(y1 - y0) // s), -(-(x1 - x0) // s)  # cells, rounding up: the last ones may overhang the image

    window = np.zeros((nh * s, nw * s), dtype=np.float32)
    window[: y1 - y0, : x1 - x0] = m[y0:y1, x0:x1]
    cell_mask = window.reshape(nh, s, nw * s).sum(axis=1).reshape(nh, nw, s).sum(axis=2) / s**2  # (nh, nw) in [0, 1]
    row_inside = np.clip((y1 - y0 - np.arange(nh) * s) / s, 0, 1)  # fraction of each cell row on the image
    column_inside = np.clip((x1 - x0 - np.arange(nw) * s) / s, 0, 1)
    cell_inside = np.outer(row_inside, column_inside).astype(np.float32)  # (nh, nw)
    mask_area = float(cell_mask.sum())

    # Cell-centre coordinates in cell units, relative to the start centre (keeps the numbers small).
    xs = ((x0 + (np.arange(nw) + 0.5) * s - start.cx) / s).astype(np.float32)[None, :]  # (1, nw)
    ys = ((y0 + (np.arange(nh) + 0.5) * s - start.cy) / s).astype(np.float32)[:, None]  # (nh, 1)

    def negative_soft_iou(p: np.ndarray) -> float:
        cx, cy, log_a, log_b, theta = p
        a, b = math.exp(log_a), math.exp(log_b)
        cos, sin = math.cos(theta), math.sin(theta)
        dx, dy = xs - cx, ys - cy
        u, v = dx * cos + dy * sin, dy * cos - dx * sin  # (nh, nw) along the major and minor axes
        r = np.sqrt((u / a) ** 2 + (v / b) ** 2)  # (nh, nw) the ellipse's gauge: 1 on the boundary
        gradient = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2) / np.maximum(r, 1e-6)  # |∇r|
        distance = (r - 1) / np.maximum(gradient, 1e-6)  # signed distance to the tangent line at p / r
        coverage = np.clip(0.5 - distance, 0, 1) * cell_inside  # anti-aliased: a linear ramp one cell wide
        intersection = float(np.minimum(coverage, cell_mask).sum())
        covered = float(coverage.sum())
        off_image = max(0.0, math.pi * a * b - covered)  # area of the ellipse outside the window
        return -intersection / (covered + mask_area - intersection + OUTSIDE_WEIGHT * off_image)  # Σmin / Σmax

    p = np.array([0.0, 0.0, math.log(start.a / s), math.log(start.b / s), start.theta])
    step = max(0.5, 0.1 * math.sqrt(start.a * start.b) / s)  # cells
    simplex = p + np.vstack([np.zeros(5), np.diag([step, step, 0.1, 0.1, 0.15])])  # (6, 5)
    p = minimize(negative_soft_iou, p, method="Nelder-Mead",
                 options={"initial_simplex": simplex, "xatol": 2e-2, "fatol": 1e-4, "maxfev": 400}).x
    cx, cy, log_a, log_b, theta = p
    return Ellipse.canonical(start.cx + s * cx, start.cy + s * cy, s * math.exp(log_a), s * math.exp(log_b), theta)


# --- exact rasterisation ------------------------------------------------------------------------------


def _row_spans(e: Ellipse, height: int, width: int) -> tuple[int, np.ndarray, np.ndarray]:
    """First row i0, then for rows i0, i0+1, …: the columns [start, stop) whose pixel centres are inside.

    The ellipse is A dx² + 2B dx dy + C dy² <= 1 with (A B; B C) = R diag(a⁻², b⁻²) Rᵀ, so AC − B² = (ab)⁻²;
    solving for dx on the row dy gives dx = (−B dy ± √(A − dy² / (ab)²)) / A, for |dy| <= ab√A.
    """
    cos, sin = math.cos(e.theta), math.sin(e.theta)
    A = (cos / e.a) ** 2 + (sin / e.b) ** 2
    B = cos * sin * (e.a**-2 - e.b**-2)
    half_height = e.a * e.b * math.sqrt(A)
    i0 = min(max(math.ceil(e.cy - half_height - 0.5), 0), height)
    i1 = max(min(math.floor(e.cy + half_height - 0.5) + 1, height), i0)
    dy = np.arange(i0, i1) + 0.5 - e.cy  # (rows,)
    root = np.sqrt(np.maximum(A - (dy / (e.a * e.b)) ** 2, 0))
    left, right = e.cx + (-B * dy - root) / A, e.cx + (-B * dy + root) / A  # x of the boundary on each row
    start = np.clip(np.ceil(left - 0.5), 0, width).astype(np.int64)  # first column with j + 0.5 >= left
    stop = np.clip(np.floor(right - 0.5) + 1, start, width).astype(np.int64)  # after the last with j + 0.5 <= right
    return i0, start, stop


class _ExactIoU:
    """IoU of rasterised ellipses with one mask, in O(rows) each, from the mask's cumulative row sums."""

    def __init__(self, m: np.ndarray):
        self.shape = m.shape
        self.cumulative = np.zeros((m.shape[0], m.shape[1] + 1), dtype=np.int32)  # (H, W + 1)
        np.cumsum(m, axis=1, dtype=np.int32, out=self.cumulative[:, 1:])
        self.area = int(self.cumulative[:, -1].sum(dtype=np.int64))

    def __call__(self, e: Ellipse) -> float:
        i0, start, stop = _row_spans(e, *self.shape)
        rows = self.cumulative[i0 : i0 + len(start)]
        inside = np.take_along_axis(rows, stop[:, None], 1) - np.take_along_axis(rows, start[:, None], 1)  # (rows, 1)
        intersection = int(inside.sum(dtype=np.int64))
        return intersection / (int((stop - start).sum()) + self.area - intersection)


# --- helpers --------------------------------------------------------------------------------------------


def _as_mask(mask: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InvalidParameter(name, "a 2-D array (height, width)", f"shape {m.shape}")
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.number) or not ((m == 0) | (m == 1)).all():
            raise InvalidParameter(name, "binary (bool, or numbers that are all 0 or 1)", f"dtype {m.dtype}")
        m = m.astype(bool)
    return m


def _as_nonempty_mask(mask: np.ndarray) -> np.ndarray:
    m = _as_mask(mask, "mask")
    if not m.any():
        raise RecomposerError("mask", "must contain at least one pixel")
    return m


def _bounding_box(m: np.ndarray) -> tuple[int, int, int, int]:
    """Rows [y0, y1) and columns [x0, x1) of a non-empty mask's set pixels."""
    rows, columns = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1
