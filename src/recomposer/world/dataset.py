"""Streaming the shapes world: samples with every ground-truth layer, seeded so that nothing repeats
across workers or processes and the evaluation split never meets the training stream.

Seeds: the training stream uses seeds in [0, EVAL_SEED_BASE); evaluation splits use
EVAL_SEED_BASE + i. A sample is a pure function of (seed, config, size).
"""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..colour import colour_histogram
from .captions import caption, describe_object
from ..ellipse import Ellipse
from .render import Rendered, blobs, render
from .scene import Scene, WorldConfig, sample_scene

EVAL_SEED_BASE = 2**40


@dataclass(frozen=True)
class WorldSample:
    seed: int
    scene: Scene
    rendered: Rendered
    caption: str
    descriptions: tuple[str, ...]  # one sentence per object, back to front
    blobs: tuple[Ellipse, ...]  # one ellipse per object, pixels at this size
    palette: np.ndarray  # (180,) Composer's colour histogram of the image (colour.py)

    def tensors(self) -> dict:
        """Model-ready tensors: image in [-1, 1] (3, S, S); depth, sketch, intensity (1, S, S); labels (S, S)."""
        r = self.rendered
        return {"image": torch.from_numpy(r.image).permute(2, 0, 1).float() / 127.5 - 1.0,
                "labels": torch.from_numpy(r.labels.astype(np.int64)),
                "depth": torch.from_numpy(r.depth)[None], "sketch": torch.from_numpy(r.sketch).float()[None],
                "intensity": torch.from_numpy(r.intensity)[None], "palette": torch.from_numpy(self.palette),
                "caption": self.caption, "seed": self.seed}


def make_sample(seed: int, config: WorldConfig = WorldConfig(), size: int = 64) -> WorldSample:
    scene = sample_scene(seed, config)
    rng = np.random.default_rng([seed, 1])  # the words, independent of the scene's own draws
    rendered = render(scene, size)
    return WorldSample(seed, scene, rendered, caption(scene, rng),
                       tuple(describe_object(scene, k, rng) for k in range(len(scene.objects))),
                       tuple(blobs(scene, size)), colour_histogram(rendered.image))


def eval_seeds(n: int, offset: int = 0) -> range:
    """The fixed evaluation split: n seeds that the training stream never draws."""
    return range(EVAL_SEED_BASE + offset, EVAL_SEED_BASE + offset + n)


class WorldStream(torch.utils.data.IterableDataset):
    """An endless training stream. Worker w of W in process r of R (torch.distributed or accelerate)
    takes seeds start + (r·W + w), stepping by R·W: no two workers ever share a seed."""

    def __init__(self, config: WorldConfig = WorldConfig(), size: int = 64, start: int = 0, rank: int = 0,
                 world_size: int = 1):
        super().__init__()
        self.config, self.size, self.start = config.check(), size, start
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stride = self.world_size * workers
        seed = self.start + self.rank * workers + worker
        while seed < EVAL_SEED_BASE:
            yield make_sample(seed, self.config, self.size).tensors()
            seed += stride
