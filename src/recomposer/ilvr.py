"""Masked ILVR (Hachnochi et al. 2023, after Choi et al. 2021's ILVR) as one step hook of the loop (sampling.py).

ILVR steers each step's x_{t−1} towards a reference y in its low frequencies:

    x_{t−1} ← x'_{t−1} + M_t·(φ(y_{t−1}) − φ(x'_{t−1})),     y_{t−1} ~ q(y_{t−1} | y_0)

with φ a low-pass filter, φ_N(x) = up_N(down_N(x)) (average over N × N cells, then bilinear back). Cross-domain
compositing localises it: inside the region mask M_b and outside it the filter and the time differ,

    φ(x; M_b) = M_b·φ_in(x) + (1 − M_b)·φ_out(x)                 (factors N_in, N_out)
    M_t = M_b·[f < T_in] + (1 − M_b)·[f < T_out]                  (f: the share of the schedule done, 0 at the noisiest)

so T_in = 0.5 guides the region for the first half of the steps and leaves it free after; N = 1 keeps every
detail, N = 4 only a 4× coarser image. M_b is the mask smoothed outwards, max(M, G_blur * M) (a Gaussian of ``blur``
latent cells, never below the mask itself): the two filters meet without a seam outside the region, and the region
keeps its own rule (a symmetric blur would give a small object's cells half the outside's rule: with T_out = 1 and
N_out = 1 that pins the object to y at every step, whatever T_in says). Everything runs on the latents (a VAE latent
is spatially aligned with its image).

Two spaces (``space``):
    xt  the update above, y_{t−1} drawn afresh each step at the noise level of x'_{t−1} (the next timestep; the
        clean y_0 after the last step) with the scheduler's own q, so any scheduler works. The reference draws y at
        the pre-step level t, one step early (METHODS trap 5); ours is the level x'_{t−1} is at.
    x0  the aliasing fix: the predicted clean latents are filtered, x̂₀' = x̂₀ + M_t·(φ(y_0) − φ(x̂₀)), and re-noised
        by the step's own noise part: x_{t−1} ← x'_{t−1} + a_{t−1}·(x̂₀' − x̂₀), a_{t−1} the clean part's scale at
        the next level (√ᾱ for DDIM-like schedulers, 1 for σ-scaled ones such as Euler). For DDIM this is exactly
        the DDIM update from x̂₀'. No noise is drawn.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import validation as v
from .errors import InvalidParameter
from .sampling import StepHook, StepState, noise

SPACES = ("xt", "x0")


def low_pass(x: torch.Tensor, n: int) -> torch.Tensor:
    """φ_N: the mean over N × N cells, back to x's size bilinearly (N = 1: x itself)."""
    if n == 1:
        return x
    return F.interpolate(F.avg_pool2d(x, n), size=x.shape[-2:], mode="bilinear", align_corners=False)


def check_factor(name: str, n: int, size: tuple[int, int]) -> int:
    """A low-pass factor: a whole number ≥ 1 that divides both latent sides."""
    v.integer(name, n, 1, 4096)
    if size[0] % n or size[1] % n:
        raise InvalidParameter(name, f"a factor that divides the latent size {size[1]}x{size[0]} (the image's side "
                                     "over the VAE's factor)", n)
    return n


def blurred(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """The mask (B, 1, h, w) smoothed by a Gaussian of ``sigma`` cells (0: as it is), values kept in [0, 1]."""
    if sigma <= 0:
        return mask
    radius = max(1, int(3 * sigma + 0.5))
    taps = torch.arange(-radius, radius + 1, dtype=mask.dtype, device=mask.device)
    kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    x = F.pad(mask, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.clamp(0, 1)


def masked_ilvr(y0: torch.Tensor, mask: torch.Tensor, t_in: float, t_out: float, n_in: int = 1, n_out: int = 1,
                space: str = "xt", blur: float = 0.0, generators: Sequence[torch.Generator] = ()) -> StepHook:
    """The after-step hook (module docstring). ``y0`` (B, C, h, w): the reference's clean latents (scaled as the
    loop's); ``mask`` (1, 1, h, w) or (B, 1, h, w) in [0, 1], 1 = the region; ``generators``: one per sample, for
    y_{t−1}'s noise in the xt space."""
    v.real("t-in", t_in, 0.0, 1.0)
    v.real("t-out", t_out, 0.0, 1.0)
    v.choice("space", space, SPACES)
    v.real("blur", blur, 0.0, 1000.0)
    size = tuple(y0.shape[-2:])
    check_factor("n-in", n_in, size)
    check_factor("n-out", n_out, size)
    if tuple(mask.shape[-2:]) != size:
        raise InvalidParameter("mask", f"a mask at the latent size {size[1]}x{size[0]}", tuple(mask.shape[-2:]))
    if space == "xt" and len(generators) != len(y0):
        raise InvalidParameter("generators", f"one per sample ({len(y0)})", len(generators))
    m_b = torch.maximum(mask.to(y0), blurred(mask.to(y0), blur))  # smoothed outwards only

    def phi(x: torch.Tensor) -> torch.Tensor:
        return m_b * low_pass(x, n_in) + (1 - m_b) * low_pass(x, n_out)

    def hook(state: StepState) -> torch.Tensor:
        f = state.step.fraction  # the share of the schedule done before this step
        m_t = m_b * float(f < t_in) + (1 - m_b) * float(f < t_out)
        if not bool(m_t.any()):
            return state.x_next
        scheduler, t_next = state.scheduler, state.t_next
        if space == "x0":
            corrected = m_t * (phi(y0) - phi(state.x0.to(y0)))  # x̂₀' − x̂₀
            if t_next is None:
                return state.x_next + corrected.to(state.x_next)
            scale = scheduler.add_noise(torch.ones_like(y0[:1]), torch.zeros_like(y0[:1]), t_next.reshape(1))
            return state.x_next + (scale * corrected).to(state.x_next)
        if t_next is None:
            y = y0
        else:
            eps = noise(y0.shape, generators, y0.device, y0.dtype)
            y = scheduler.add_noise(y0, eps, t_next.reshape(1).repeat(len(y0)))
        return state.x_next + (m_t * (phi(y) - phi(state.x_next.to(y0)))).to(state.x_next)

    return hook
