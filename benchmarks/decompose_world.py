"""Classical decomposition (sketch, instances) scored against the shapes world's exact ground truth,
and timed on a 512x512 photo on one core.

    python benchmarks/decompose_world.py [--size 128] [--scenes 100] [--repeats 7] [--json out.json]

Scenes: the fixed evaluation split, seeds ``recomposer.world.dataset.eval_seeds(--scenes)``, sampled
once with flat objects only (``WorldConfig(styles=("flat",))``: all four background kinds) and once
with every style (``WorldConfig()``), rendered at ``--size`` pixels (128 by default).

Figures (recomposer.decompose.metrics, the code the tests use too):
- sketch F1: a predicted line pixel is correct when a true outline pixel (``Rendered.sketch``) lies
  within 2 px (Euclidean, by distance transform); a true pixel is found when a predicted one lies within
  2 px. Counts are pooled over all scenes (every outline pixel weighs the same; BSDS "ODS" at the one
  default threshold); the per-scene mean is given beside it.
- instance mIoU: predicted and true masks matched one-to-one by the Hungarian algorithm on IoU; mean
  over the true objects with at least one visible pixel of their matched IoU, unmatched counting 0.
  Extra predicted masks do not lower it, so their total count is reported beside it.
- timings: median of --repeats runs on scikit-image's astronaut resized to 512x512 (Lanczos), one
  thread for OpenCV, torch and BLAS.
Goals (issue): sketch F1 >= 0.9 and instance mIoU >= 0.8 on flat scenes; all classical representations
of a 512x512 photo within 1 s on one core (sketch about 150 ms, instances about 400 ms).
"""

import argparse
import json
import os
import statistics
import time

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")


def world_scores(config, seeds, size: int) -> dict:
    """Sketch counts and instance IoUs over the given scenes, pooled; also broken down by background kind."""
    import numpy as np

    from recomposer.decompose.instances import ClassicalSegmenter
    from recomposer.decompose.metrics import EdgeCounts, edge_counts, match_masks, nonempty
    from recomposer.decompose.sketch import sketch
    from recomposer.world.dataset import make_sample

    segmenter = ClassicalSegmenter()
    pooled, xdog, per_scene, ious, extra = EdgeCounts(), EdgeCounts(), [], [], 0
    by_background: dict[str, dict] = {}
    for seed in seeds:
        sample = make_sample(seed, config, size)
        r = sample.rendered
        counts = edge_counts(sketch(r.image), r.sketch)
        pooled, per_scene = pooled + counts, per_scene + [counts.f1]
        xdog = xdog + edge_counts(sketch(r.image, "xdog"), r.sketch)
        match = match_masks(segmenter(r.image).masks, nonempty(r.masks))
        ious.extend(match.ious.tolist())
        extra += match.unmatched_predictions
        kind = by_background.setdefault(sample.scene.background.kind, {"edges": EdgeCounts(), "ious": []})
        kind["edges"] = kind["edges"] + counts
        kind["ious"].extend(match.ious.tolist())
    return {"scenes": len(seeds), "objects": len(ious),
            "sketch_f1": pooled.f1, "sketch_precision": pooled.precision, "sketch_recall": pooled.recall,
            "sketch_f1_mean_per_scene": float(np.mean(per_scene)), "xdog_f1": xdog.f1,
            "instance_miou": float(np.mean(ious)), "extra_predicted_masks": extra,
            "by_background": {k: {"sketch_f1": v["edges"].f1, "instance_miou": float(np.mean(v["ious"])),
                                  "objects": len(v["ious"])} for k, v in sorted(by_background.items())}}


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (imports, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def photo_512():
    import numpy as np
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((512, 512), Image.Resampling.LANCZOS))


def timings(repeats: int) -> dict:
    """Median ms per classical representation of a 512x512 photo, and of decompose() making all of them."""
    import cv2
    import numpy as np
    from PIL import Image

    from recomposer.decompose.blobs import blobs_from_instances
    from recomposer.decompose.decomposer import decompose
    from recomposer.decompose.instances import ClassicalSegmenter
    from recomposer.decompose.intensity import intensity
    from recomposer.colour import colour_histogram
    from recomposer.decompose.sketch import sketch

    cv2.setNumThreads(1)
    photo = photo_512()
    segmenter = ClassicalSegmenter()
    instances = segmenter(photo)
    mask = np.zeros(photo.shape[:2], bool)
    mask[100:300, 150:350] = True
    jobs = {"palette": lambda: colour_histogram(photo), "sketch": lambda: sketch(photo),
            "instances": lambda: segmenter(photo), "intensity": lambda: intensity(photo),
            "blobs (given instances)": lambda: blobs_from_instances(instances),
            "decompose(), all classical kinds": lambda: decompose(Image.fromarray(photo), mask=mask,
                                                                  caption="an astronaut")}
    result = {name: median_ms(job, repeats) for name, job in jobs.items()}
    result["instances_found"] = int(instances.masks.shape[0])
    return result


def world_histograms_identical(seeds, size: int) -> bool:
    """decompose()'s palette of a rendered scene equals the histogram the world sample carries."""
    import numpy as np
    from PIL import Image

    from recomposer.decompose.decomposer import decompose
    from recomposer.world.dataset import make_sample

    for seed in seeds:
        sample = make_sample(seed, size=size)
        made = decompose(Image.fromarray(sample.rendered.image), kinds=("palette",)).conditions["palette"]
        if not np.array_equal(made.histogram, sample.palette):
            return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="render size of the world scenes, pixels")
    parser.add_argument("--scenes", type=int, default=100, help="evaluation seeds per configuration")
    parser.add_argument("--repeats", type=int, default=7, help="timing runs (median)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from recomposer.world.dataset import eval_seeds
    from recomposer.world.scene import WorldConfig

    seeds = eval_seeds(args.scenes)
    flat = world_scores(WorldConfig(styles=("flat",)), seeds, args.size)
    every = world_scores(WorldConfig(), seeds, args.size)
    times = timings(args.repeats)

    where = f"{args.scenes} eval scenes, {args.size} px"
    print("| figure | value | goal |")
    print("| --- | --- | --- |")
    for name, s, goal in (("flat", flat, ">= 0.9"), ("all styles", every, "-")):
        print(f"| sketch F1 (2 px), {name}, {where} | {s['sketch_f1']:.3f} (P {s['sketch_precision']:.3f}, "
              f"R {s['sketch_recall']:.3f}; per-scene mean {s['sketch_f1_mean_per_scene']:.3f}) | {goal} |")
    for name, s in (("flat", flat), ("all styles", every)):
        print(f"| sketch F1 (2 px), xdog, {name} | {s['xdog_f1']:.3f} | - |")
    for name, s, goal in (("flat", flat, ">= 0.8"), ("all styles", every, "-")):
        print(f"| instance mIoU (Hungarian), {name}, {s['objects']} objects | {s['instance_miou']:.3f} "
              f"({s['extra_predicted_masks']} extra predicted masks) | {goal} |")
    for kind, v in flat["by_background"].items():
        print(f"| flat, {kind} backgrounds ({v['objects']} objects) | sketch F1 {v['sketch_f1']:.3f}, "
              f"mIoU {v['instance_miou']:.3f} | - |")
    found = times.pop("instances_found")
    for name, ms in times.items():
        goal = "<= 1000 ms" if name.startswith("decompose") else "-"
        print(f"| {name}, 512x512 photo, 1 core | {ms:.0f} ms | {goal} |")
    print(f"| instances found on the photo | {found} | - |")
    histogram_same = world_histograms_identical(seeds, args.size)
    print(f"| colour histogram identical to the world's, {len(seeds)} scenes | {histogram_same} | True |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": {"size": args.size, "scenes": args.scenes, "repeats": args.repeats},
                       "flat": flat, "all_styles": every, "timings_ms": times}, f, indent=2)


if __name__ == "__main__":
    main()
