"""A fine-tuned module shipped as a low-rank delta of its base (LoRA-style: Hu et al. 2022's ΔW = B·A, here found
after full fine-tuning by a truncated SVD, as LoRA-extraction tools do), instead of a second full copy.

For each weight W (out, in) or (out, in, k, k) that training changed, with D = W_tuned − W_base flattened to
(out, in·k·k) and D = U·diag(S)·Vᵀ:

    ΔW ≈ up · down,   up = U_r·diag(S_r)^½  (out, r),   down = diag(S_r)^½·V_rᵀ  (r, in·k·k)

r = ``rank`` (or the full rank where that is smaller, or where storing D whole is cheaper). Tensors of other
shapes (biases, norms, a widened conv_in whose shape changed) are stored whole, as the tuned values. ``merge``
adds up·down back into a copy of the base weights, so sampling costs exactly what the full model costs.
``kept_energy`` says how much of each D the rank keeps (Σ S_r² / Σ S²): what the truncation threw away.
"""

import torch

from .. import validation as v
from ..errors import ModelError

UP, DOWN, WHOLE = ".delta_up", ".delta_down", ""


def extract(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], rank: int,
            dtype: torch.dtype = torch.float16) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """(the delta's tensors, kept energy per factored weight) of ``tuned`` against ``base`` (state dicts, any
    device). Unchanged tensors are left out; every tensor of ``tuned`` must be in ``base`` (``merge`` adds to it)."""
    v.integer("rank", rank, 1, 4096)
    delta, energy = {}, {}
    for name, w in tuned.items():
        if name not in base:
            raise ModelError("delta", f"the tuned weights hold {name}, which the base has not (a delta of it could "
                                      "never be merged)")
        w, b = w.detach().cpu(), base[name].detach().cpu()
        if b.shape == w.shape and torch.equal(b, w):
            continue
        if b.shape != w.shape or w.ndim < 2:
            delta[name + WHOLE] = w.to(dtype)
            continue
        d = (w.double() - b.double()).flatten(1)  # (out, in·k·k)
        r = min(rank, *d.shape)
        if r * sum(d.shape) >= d.numel():  # factors no smaller than D itself
            delta[name + WHOLE] = w.to(dtype)
            continue
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        root = s[:r].sqrt()
        delta[name + UP] = (u[:, :r] * root).to(dtype)  # (out, r)
        delta[name + DOWN] = (root[:, None] * vh[:r]).to(dtype)  # (r, in·k·k)
        energy[name] = float((s[:r].square().sum() / s.square().sum().clamp(min=1e-30)).item())
    return delta, energy


def merge(base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tuned state dict: ``base`` with every whole tensor replaced and every factored delta added (float32
    arithmetic, each result in its base tensor's dtype). A delta naming a tensor ``base`` lacks is refused."""
    merged = dict(base)
    for key, value in delta.items():
        if key.endswith(DOWN):
            continue
        if key.endswith(UP):
            name = key[:-len(UP)]
            down = delta.get(name + DOWN)
            if name not in base or down is None:
                raise ModelError("delta", f"holds {key} for a weight its base has no match for ({name})")
            w = base[name]
            up = value.float()
            if up.shape[0] != w.shape[0] or down.shape[1] != w[0].numel() or down.shape[0] != up.shape[1]:
                raise ModelError("delta", f"{name}: factors {tuple(up.shape)} · {tuple(down.shape)} do not fit the "
                                          f"base weight {tuple(w.shape)}")
            merged[name] = (w.float() + (up @ down.float()).reshape(w.shape)).to(w.dtype)
        else:
            if key not in base:
                raise ModelError("delta", f"holds {key}, a tensor its base does not have")
            merged[key] = value.to(base[key].dtype)
    return merged
