"""Shapes-world throughput: scenes per second with ALL ground truth (scene, render, instance labels,
depth, sketch, intensity, colour histogram, blobs, caption, per-object descriptions), one core.

    python benchmarks/world_speed.py [--size 64] [--scenes 300] [--repeats 5] [--json out.json]

Median of --repeats runs over the same seeds; goal (issue 3): >= 300 scenes/s at 64 px.
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from recomposer.world.dataset import make_sample
    from recomposer.world.render import canonical_blob
    from recomposer.world.shapes import SHAPES

    for shape in SHAPES:  # one-off per process: each shape's canonical ellipse fit
        canonical_blob(shape)
    rates = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for seed in range(args.scenes):
            make_sample(seed, size=args.size)
        rates.append(args.scenes / (time.perf_counter() - t0))
    result = {"size": args.size, "scenes": args.scenes, "repeats": args.repeats,
              "scenes_per_second": statistics.median(rates), "runs": rates}
    print(f"| shapes world, {args.size} px, all ground truth, 1 core | {result['scenes_per_second']:.0f} scenes/s "
          f"| >= 300 |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
