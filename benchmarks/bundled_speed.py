"""Generation time of the bundled model on one CPU thread (issue 5's figure: a 64 px image in <= 2 s at 20 steps).

Measured per image, models loaded beforehand (loading is reported separately), median of --repeats:
1. text-to-image with the bare backbone (``generate``, classifier-free guidance: 20 batch-2 forwards);
2. Composer with a caption only, and with six conditions (caption, image embedding, palette, sketch,
   instances, intensity) taken from a held-out shapes-world scene: encoding the conditions is included.

    python benchmarks/bundled_speed.py [--steps 20] [--repeats 5] [--threads 1] [--json out.json]
"""

import argparse
import json
import time

import torch

from recomposer.evaluation.speed import median_time  # the speed benchmark's timing rule


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from PIL import Image

    from recomposer.conditions import Caption, ConditionSet
    from recomposer.models.bundled import load_bundled_backbone
    from recomposer.tasks.composer import ComposeRequest, compose, load_composer
    from recomposer.tasks.generate import GenerateRequest, generate
    from recomposer.world.dataset import eval_seeds, make_sample

    t0 = time.perf_counter()
    backbone = load_bundled_backbone(torch.device("cpu"), torch.float32)
    load_backbone = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = load_composer()
    load_composer_s = time.perf_counter() - t0

    scene = make_sample(eval_seeds(1)[0])
    image = Image.fromarray(scene.rendered.image)
    kinds = ("image_embedding", "palette", "sketch", "instances", "intensity")
    six = model.decompose(image, ("caption", *kinds), caption=scene.caption)
    caption = ConditionSet.of(Caption(scene.caption))
    request = ComposeRequest(steps=args.steps, scheduler="dpmpp_2m", guidance=3.0)

    runs = {
        "text_to_image_backbone_s": lambda: generate(backbone, GenerateRequest(
            prompt=scene.caption, steps=args.steps, scheduler="dpmpp_2m", guidance=3.0)),
        "composer_caption_only_s": lambda: compose(model, caption, request),
        "composer_six_conditions_s": lambda: compose(model, six, request),
        "decompose_five_kinds_s": lambda: model.decompose(image, kinds, caption=scene.caption),
    }
    result = {"steps": args.steps, "threads": args.threads, "repeats": args.repeats, "size": 64,
              "load_backbone_s": round(load_backbone, 3), "load_composer_s": round(load_composer_s, 3)}
    for name, fn in runs.items():
        fn()  # warm-up
        result[name] = round(median_time(fn, args.repeats), 3)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
