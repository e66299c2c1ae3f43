"""The README's pictures of Composer's tasks, made with the bundled model (or --model PARTS).

    python benchmarks/task_pictures.py [--model PARTS] [-o docs/images/tasks.png]

One row per task: its inputs, then three seeds. Inputs are held-out shapes-world scenes (seeds the
training stream never draws) and, for out-of-domain rows, scikit-image's photos.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/images/tasks.png"))
    args = parser.parse_args()
    torch.set_num_threads(2)

    from skimage import data

    from recomposer.conditions import Caption, ConditionSet, Depth
    from recomposer.io.sheets import stacked, titled_row
    from recomposer.tasks import composer as t
    from recomposer.world.dataset import eval_seeds, make_sample

    model = t.load_composer(args.model)
    request = t.ComposeRequest(steps=args.steps, batch=3, seed=1)
    scenes = [make_sample(s, size=model.size) for s in eval_seeds(12)]
    image = [Image.fromarray(s.rendered.image) for s in scenes]
    photo = model.fit(Image.fromarray(data.coffee()))
    kinds = ("image_embedding", "palette", "sketch", "instances", "intensity")
    c = [model.decompose(im, ("caption", *kinds), caption=s.caption) for im, s in zip(image, scenes)]

    def seeds(results):
        return [(f"seed {k + 1}", r.image) for k, r in enumerate(results)]

    depth = Depth(scenes[4].rendered.depth)  # no bundled depth estimator: the world's exact depth
    mask = np.zeros((model.size, model.size), bool)
    mask[: model.size // 2, model.size // 2:] = True
    edit = t.edit_region(model, image[3], mask, ConditionSet.of(Caption("a red star")), request)
    grey = image[4].convert("L").convert("RGB")
    rows = [
        ("caption only", [("caption", image[0])], t.compose(model, ConditionSet.of(c[0]["caption"]), request)),
        ("sketch-to-image", [("sketch", c[1]["sketch"].picture())],
         t.compose(model, ConditionSet.of(c[1]["sketch"]), request)),
        ("depth-to-image\n(the world's depth)", [("depth", depth.picture())],
         t.compose(model, ConditionSet.of(depth), request)),
        ("instances-to-image", [("instances", c[2]["instances"].picture())],
         t.compose(model, ConditionSet.of(c[2]["instances"]), request)),
        ("variations\n(embedding+palette)", [("image", image[5])], t.variations(model, image[5], request=request)),
        ("reconstruction\n(all conditions)", [("image", image[6])], t.compose(model, c[6], request)),
        ("colourisation\n(intensity+palette)", [("grey", grey), ("palette of", image[7])],
         t.colourise(model, grey, image[7], None, request)),
        ("palette recolouring", [("layout", image[8]), ("colours", image[9])],
         t.recolour(model, image[8], image[9], request=request)),
        ("mixed sources: A sketch\n+ B palette + C caption", [("A", image[10]), ("B", image[11]),
                                                               ("C: " + scenes[0].caption[:18], image[0])],
         t.compose(model, ConditionSet.of(c[10]["sketch"], c[11]["palette"], c[0]["caption"]), request)),
        ("style transfer\n(embedding of B)", [("A", image[1]), ("B", image[2])],
         t.style_transfer(model, image[1], image[2], request=request)),
        ("region edit: 'a red\nstar' in the box", [("image", image[3]), ("mask", Image.fromarray(mask))], edit),
        ("photo (out of domain):\nsketch + palette", [("photo", photo)],
         t.reconstruct(model, photo, ("sketch", "palette"), request)),
    ]
    width = max(len(inputs) for _, inputs, _ in rows) + 3
    tiles = []
    for label, inputs, results in rows:
        cells = inputs + [("", Image.new("RGB", (8, 8), "white"))] * (width - 3 - len(inputs)) + seeds(results)
        tiles.append((label, titled_row(cells, tile=96, nearest=True)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    stacked(tiles).save(args.output)
    psnr = [r.provenance["psnr_outside_mask"] for r in edit]
    print(args.output, "edit PSNR outside the mask:", psnr)


if __name__ == "__main__":
    main()
