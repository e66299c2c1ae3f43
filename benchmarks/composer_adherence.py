"""How closely the bundled model follows single conditions, judged by the classical decomposers (an interim
judge until the benchmark issue's trained analyser lands; its figures are the ones the issue's goals name).

    python benchmarks/composer_adherence.py [--model PARTS] [--scenes 20] [--steps 20] [--json out.json]

For each held-out scene (``eval_seeds``: seeds the training stream never draws), 64 px, all styles:
- sketch: generate from the scene's true outline sketch alone; the classical sketch of the result vs
  that sketch, edge F1 at 2 px (pooled counts, as benchmarks/decompose_world.py);
- instances: generate from the true instance masks alone; the classical segmenter on the result,
  Hungarian-matched mIoU against the true masks;
- palette: generate from the scene's colour histogram alone; histogram intersection Σ min(p, q) of the
  result's normalised histogram with it;
- intensity: generate from the true intensity alone; PSNR (dB) of the result's luminance against it;
- region editing: regenerate a random box with a caption; PSNR outside the box (infinite = identical).
Each beside its floor (the same judge on images generated with no condition: chance agreement) and
its ceiling (the judge on the scene's own render: what a perfect generator would score).
"""

import argparse
import json
import math

import numpy as np
import torch
from PIL import Image


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from recomposer.conditions import Caption, ConditionSet, Instances, Palette, Sketch
    from recomposer.decompose.instances import ClassicalSegmenter
    from recomposer.decompose.intensity import intensity
    from recomposer.decompose.metrics import EdgeCounts, edge_counts, match_masks, nonempty
    from recomposer.decompose.palette import colour_histogram
    from recomposer.decompose.sketch import sketch
    from recomposer.tasks.composer import ComposeRequest, compose, edit_region, load_composer
    from recomposer.world.dataset import eval_seeds, make_sample

    model = load_composer(args.model)
    segmenter = ClassicalSegmenter()
    request = ComposeRequest(steps=args.steps, guidance=args.guidance, seed=0)

    def generate(conds) -> np.ndarray:
        return np.asarray(compose(model, conds, request)[0].image)

    def judge(image: np.ndarray, sample) -> dict:
        r = sample.rendered
        truth_masks = nonempty(r.masks)
        counts = edge_counts(sketch(image), r.sketch.astype(bool))
        matched = match_masks(segmenter(image).masks, truth_masks)
        p, q = colour_histogram(image), sample.palette
        grey = np.asarray(Image.fromarray(image).convert("L"), np.float64) / 255
        mse = float(((grey - r.intensity) ** 2).mean())
        return {"edges": counts, "ious": list(matched.ious),
                "palette": float(np.minimum(p / p.sum(), q / q.sum()).sum()),
                "intensity_psnr": 10 * math.log10(1 / max(mse, 1e-10))}

    rows = {"ceiling": [], "floor": [], "conditioned": []}
    edit_psnr = []
    for seed in eval_seeds(args.scenes):
        sample = make_sample(seed)
        r = sample.rendered
        rows["ceiling"].append(judge(r.image, sample))
        rows["floor"].append(judge(generate(ConditionSet()), sample))
        single = {"sketch": Sketch(r.sketch.astype(bool)), "instances": Instances(r.masks),
                  "palette": Palette(sample.palette.astype(np.float32)), "intensity": intensity(r.image)}
        scores = {kind: judge(generate(ConditionSet.of(cond)), sample) for kind, cond in single.items()}
        rows["conditioned"].append({"edges": scores["sketch"]["edges"], "ious": scores["instances"]["ious"],
                                    "palette": scores["palette"]["palette"],
                                    "intensity_psnr": scores["intensity"]["intensity_psnr"]})
        rng = np.random.default_rng(seed)
        y, x = rng.integers(0, 32, 2)
        mask = np.zeros((64, 64), bool)
        mask[y:y + 32, x:x + 32] = True
        (edited,) = edit_region(model, Image.fromarray(r.image), mask, ConditionSet.of(Caption("a red star")),
                                request)
        edit_psnr.append(edited.provenance["psnr_outside_mask"])

    def summary(items) -> dict:
        edges = sum((i["edges"] for i in items), EdgeCounts())
        return {"sketch_f1": round(edges.f1, 3), "instance_miou": round(float(np.mean(sum((i["ious"] for i in items),
                                                                                          []))), 3),
                "palette_intersection": round(float(np.mean([i["palette"] for i in items])), 3),
                "intensity_psnr_db": round(float(np.mean([i["intensity_psnr"] for i in items])), 2)}

    result = {name: summary(items) for name, items in rows.items()}
    result["region_edit_psnr_outside_db"] = min(edit_psnr)
    result["settings"] = {"scenes": args.scenes, "steps": args.steps, "guidance": args.guidance, "size": 64,
                          "judge": "classical sketch / segmenter / histogram (interim)"}
    print(json.dumps(result, indent=2, default=str))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)


if __name__ == "__main__":
    main()
