"""The bundled ControlNet's rows of ``recomposer bench controllability`` over modes, scales and guidance.

    python benchmarks/controlnet_sweep.py [--scenes 40] [--threads 2] [--sheets DIR] [--setting MODE,SCALE,W ...]
        [--with-condition] [-o benchmarks/results/controllability/controlnet_sweep.json]

The same 40 held-out scenes, seeds, 20 steps and judges as the benchmark's ControlNet rows (each hint kind given to
the net alone, no caption and no Composer condition), per setting (mode, conditioning scale, guidance w):

    sketch edge F1, depth Spearman ρ and occlusion order, instances mIoU, the Fréchet distance of the images'
    analyser features to 200 renders (the benchmark's realism; its renders score 2.63), seconds per image

and, with ``--sheets``, a contact sheet per setting there (the first six scenes, one column per kind). ``--setting``
(repeatable) runs those settings instead of SETTINGS; ``--with-condition`` gives the Composer adapter the same
scene's condition of the hint's kind as well (both controls at once).

Why modes matter here: with the hint alone, the guidance plan's two rows carry the same (empty) caption; in balanced
mode the net runs on both, so they are alike and guidance w amplifies nothing; in control mode it runs on the
conditional row only, so w amplifies the hint exactly as it does a Composer condition (models/controlnet.py gives
each mode's formula).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SETTINGS = [("balanced", 1.0, 3.0), ("prompt", 1.0, 3.0), ("guess", 1.0, 3.0),  # (mode, scale, guidance)
            ("control", 1.0, 3.0), ("control", 1.5, 3.0), ("control", 2.0, 3.0), ("control", 3.0, 3.0),
            ("control", 1.0, 5.0), ("control", 1.5, 5.0), ("control", 2.0, 5.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sheets", type=Path, default=None)
    parser.add_argument("--setting", action="append", default=None, help="MODE,SCALE,W (repeatable)")
    parser.add_argument("--with-condition", action="store_true")
    parser.add_argument("-o", "--output", type=Path,
                        default=Path("benchmarks/results/controllability/controlnet_sweep.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from recomposer.commands.bench import _bundled_controlnet
    from recomposer.conditions import ConditionSet
    from recomposer.evaluation import judges
    from recomposer.evaluation.controllability import REFERENCE_OFFSET, Scores, make_source, reading
    from recomposer.models.analyser import load_bundled_analyser
    from recomposer.requests import ControlRequest
    from recomposer.tasks.composer import ComposeRequest, compose, load_composer
    from recomposer.world.dataset import eval_seeds, make_sample

    model = load_composer(None, None)
    net, analyser = _bundled_controlnet(model), load_bundled_analyser()
    sources = [make_source(model, seed) for seed in eval_seeds(args.scenes)]
    renders = [make_sample(s).rendered.image for s in eval_seeds(200, REFERENCE_OFFSET)]
    reference = np.stack([a.features for a in analyser.analyse(np.stack(renders))])
    settings = SETTINGS if not args.setting else [(m, float(s), float(w)) for m, s, w in
                                                  (given.split(",") for given in args.setting)]
    rows = []
    for mode, scale, guidance in settings:
        scores, features, seconds, sheet = Scores(), [], [], []
        for i, source in enumerate(sources):
            for k, kind in enumerate(net.kinds):
                request = ComposeRequest(steps=20, guidance=guidance, seed=i,
                                         controls=(ControlRequest(f"bundled:{kind}", scale, mode=mode),))
                conds = ConditionSet.of(source.conditions[kind]) if args.with_condition else ConditionSet()
                start = time.perf_counter()
                image = compose(model, conds, request, controls=[net.given(source, k)])[0].image
                seconds.append(time.perf_counter() - start)
                read = reading(analyser, image)
                features.append(read.features)
                scores.judge(model, read, image, kind, source)
                if i < 6:
                    sheet.append(image)
        s = scores.summary()
        rows.append({"mode": mode, "scale": scale, "guidance": guidance, "sketch_f1": s["sketch"]["edge_f1"],
                     "depth_spearman": s["depth"]["spearman"], "depth_order": s["depth"]["order_accuracy"],
                     "instances_miou": s["instances"]["miou"],
                     "frechet_distance": round(judges.frechet_distance(np.stack(features), reference), 3),
                     "seconds_per_image": round(statistics.median(seconds), 3)})
        print(json.dumps(rows[-1]), flush=True)
        if args.sheets:
            side, columns = sheet[0].size[0], len(net.kinds)
            picture = Image.new("RGB", (side * columns, side * len(sheet) // columns))
            for j, image in enumerate(sheet):
                picture.paste(image, (side * (j % columns), side * (j // columns)))
            args.sheets.mkdir(parents=True, exist_ok=True)
            picture.save(args.sheets / f"{mode}-scale{scale:g}-w{guidance:g}.png")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"scenes": args.scenes, "steps": 20, "kinds": list(net.kinds),
                                       "with_condition": args.with_condition,
                                       "threads": args.threads, "settings": rows}, indent=1) + "\n")
    print(args.output)


if __name__ == "__main__":
    main()
