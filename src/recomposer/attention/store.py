"""An attention store: the cross-attention maps of each sample's conditional row, summed per resolution over the
layers and steps of a run, to look at (``recomposer attention``) or to blend by (Prompt-to-Prompt's local blend).

Only conditional rows are stored (the plan's set 1, the prompt, for each sample); maps are averaged over
heads. ``maps(sample)`` gives {(h, w): (K, h, w)} per resolution, ``at(sample, size)`` one (K, H, W)
average over every resolution resized to ``size`` (bilinear): a map at any resolution of any backbone.
Storing only reads the probabilities (processors.READ): an image made with a store equals one made without.
"""

import torch
import torch.nn.functional as F

from .processors import READ, Call, Layer


class AttentionStore:
    def __init__(self, steps: range | None = None):
        self.steps = steps  # the step indices to store (None: all)
        self.sums: dict[int, dict[tuple[int, int], torch.Tensor]] = {}  # sample -> (h, w) -> (K, h, w)
        self.counts: dict[tuple[int, int], int] = {}  # (h, w) -> layer-steps summed, per sample

    def wants(self, layer: Layer, call: Call, queries: int) -> str | None:
        if not layer.cross or call.rows is None:
            return None
        index = getattr(call.step, "index", None)
        return READ if self.steps is None or index in self.steps else None

    def edit(self, layer: Layer, call: Call, probs: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        self.record(call, probs, grid)
        return probs

    def record(self, call: Call, probs: torch.Tensor, grid: tuple[int, int]) -> None:
        h, w = grid
        seen = set()
        for r, role in enumerate(call.rows):
            if role.set != 1 or role.sample in seen:
                continue
            seen.add(role.sample)
            m = probs[r].float().mean(0).T.reshape(-1, h, w)  # (K, h, w): heads averaged
            per = self.sums.setdefault(role.sample, {})
            per[grid] = per[grid] + m if grid in per else m.clone()
        if seen:
            self.counts[grid] = self.counts.get(grid, 0) + 1

    def maps(self, sample: int) -> dict[tuple[int, int], torch.Tensor]:
        """{(h, w): (K, h, w)} the maps of ``sample`` averaged over the layers and steps stored at each resolution."""
        return {grid: m / self.counts[grid] for grid, m in self.sums.get(sample, {}).items()}

    def at(self, sample: int, size: tuple[int, int]) -> torch.Tensor:
        """(K, H, W): every resolution's average resized to ``size`` and averaged (each resolution weighs alike)."""
        maps = self.maps(sample)
        if not maps:
            raise ValueError(f"no cross-attention maps were stored for sample {sample}")
        resized = [F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)[0] for m in maps.values()]
        return torch.stack(resized).mean(0)
