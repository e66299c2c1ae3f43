"""Issue 18's figures: an object of one held-out scene immersed into another scene's background, judged per method.

    python benchmarks/composite_figures.py [--cases 50] [--steps 20] [--model PARTS] [-o benchmarks/results/composite]

For each case: the largest object of scene 2i + 1 is pasted (its mask) onto the render of scene 2i, then made by

    paste         the composite y itself (nothing generated: full structure, no harmonisation)
    img2img       generate from y at strength T (for each T below), the whole image re-drawn
    inpainting    generate into the mask (the object's region) from the background alone, the caption of the
                  object's scene as the prompt (the object's words, not its pixels)
    immersion T   composite, object immersion with T_in = T (N_in 2, the background kept: T_out 1, N_out 1,
                  RePaint resampling from 0.2), for T in 0.2, 0.4, 0.6, 0.8

and judged, every image at 64 px:
    structure     edge F1 (2 px) of the analyser's outlines against the pasted object's outline, both cut to the
                  object's mask dilated by 3 px (is the object's shape kept?)
    harmony       palette intersection of the object's region with the background scene's palette (has its look
                  moved towards the scene's?)
    background    PSNR (dB) against the background render outside the mask dilated by 3 px
    realism       Fréchet distance of analyser features against 200 held-out renders (all cases pooled)

Writes report.json and tradeoff.png (structure against harmony, one point per method) into the output folder.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

T_VALUES = (0.2, 0.4, 0.6, 0.8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scheduler", default="euler_a")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results/composite"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from recomposer.decompose.metrics import EdgeCounts, edge_counts
    from recomposer.evaluation.judges import frechet_distance, palette_intersection, psnr
    from recomposer.models.analyser import load_bundled_analyser
    from recomposer.models.loading import load_bundled
    from recomposer.requests import CompositeRequest, GenerateRequest
    from recomposer.tasks.composite import composite
    from recomposer.tasks.generate import generate
    from recomposer.world.dataset import eval_seeds, make_sample
    from recomposer.world.render import outlines

    model = load_bundled(torch.device("cpu"), torch.float32, args.model)
    analyser = load_bundled_analyser()
    seeds = list(eval_seeds(2 * args.cases, offset=70_000))
    made: dict[str, list[np.ndarray]] = {}
    cases = []
    common = dict(steps=args.steps, seed=1, scheduler=args.scheduler, allow_flat=True)
    for i in range(args.cases):
        background, source = make_sample(seeds[2 * i]), make_sample(seeds[2 * i + 1])
        labels = source.rendered.labels
        k = int(np.bincount(labels.ravel())[1:].argmax()) + 1
        region = labels == k
        pasted = np.where(region[..., None], source.rendered.image, background.rendered.image)
        bg, mask = Image.fromarray(background.rendered.image), Image.fromarray((region * 255).astype(np.uint8))
        y = Image.fromarray(pasted)
        cases.append({"region": region, "background": background.rendered.image,
                      "outline": outlines(region.astype(np.int16)), "palette": background.palette})
        results = {"paste": pasted}
        for t in T_VALUES:
            results[f"img2img {t}"] = generate(model, GenerateRequest("", guidance=3.0, strength=t, **common),
                                               image=y)[0].image
            request = CompositeRequest(application="immersion", t_in=t, guidance=3.0, **common)
            obj = Image.fromarray(source.rendered.image)
            results[f"immersion {t}"] = composite(model, bg, mask, request, obj)[0].image
        inpaint_mask = torch.from_numpy(region).float()[None, None]
        results["inpainting"] = generate(model, GenerateRequest(source.caption, guidance=3.0, **common), image=bg,
                                         mask=inpaint_mask)[0].image
        for name, im in results.items():
            made.setdefault(name, []).append(np.asarray(im.convert("RGB")) if not isinstance(im, np.ndarray) else im)
        print(f"case {i + 1}/{args.cases}", flush=True)

    references = np.stack([make_sample(s).rendered.image for s in eval_seeds(200, offset=80_000)])
    reference_features = np.stack([a.features for a in analyser.analyse(references)])
    report = {"cases": args.cases, "steps": args.steps, "scheduler": args.scheduler, "methods": {}}
    for name, images in made.items():
        analyses = analyser.analyse(np.stack(images))
        edges, harmony, background = EdgeCounts(), [], []
        for image, analysis, case in zip(images, analyses, cases):
            near = ndimage.binary_dilation(case["region"], iterations=3)
            edges = edges + edge_counts(outlines(analysis.labels) & near, case["outline"] & near)
            harmony.append(palette_intersection(image[case["region"]][None], case["palette"]))
            outside = ~near
            background.append(psnr(image[outside] / 255.0, case["background"][outside] / 255.0))
        finite = [b for b in background if np.isfinite(b)]
        report["methods"][name] = {
            "structure_f1": edges.f1, "harmony": float(np.mean(harmony)),
            "background_psnr_db": float(np.mean(finite)) if finite else float("inf"),
            "realism_fd": frechet_distance(np.stack([a.features for a in analyses]), reference_features)}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    tradeoff(report).save(args.output / "tradeoff.png")
    for name, r in report["methods"].items():
        print(f"{name:14s} structure {r['structure_f1']:.3f}  harmony {r['harmony']:.3f}  "
              f"background {r['background_psnr_db']:.1f} dB  FD {r['realism_fd']:.2f}")


def tradeoff(report: dict, size: int = 520) -> Image.Image:
    """Structure kept (x) against harmony (y), one labelled point per method, on axes fitted to the points."""
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    points = {name: (r["structure_f1"], r["harmony"]) for name, r in report["methods"].items()}
    xs, ys = [p[0] for p in points.values()], [p[1] for p in points.values()]
    x0, x1 = min(xs) - 0.05, max(xs) + 0.05
    y0, y1 = min(ys) - 0.05, max(ys) + 0.05
    margin = 60

    def at(x, y):
        return (margin + (x - x0) / (x1 - x0) * (size - 2 * margin),
                size - margin - (y - y0) / (y1 - y0) * (size - 2 * margin))

    d.rectangle([margin, margin, size - margin, size - margin], outline="black")
    d.text((size // 2 - 80, size - 35), "structure kept (edge F1) ->", fill="black")
    d.text((5, 25), "harmony (palette intersection with the scene) ^", fill="black")
    for v in (x0, x1):
        d.text((at(v, y0)[0] - 10, size - margin + 5), f"{v:.2f}", fill="black")
    for v in (y0, y1):
        d.text((5, at(x0, v)[1] - 5), f"{v:.2f}", fill="black")
    colours = {"paste": "black", "inpainting": "green"}
    for name, (x, y) in points.items():
        px, py = at(x, y)
        colour = colours.get(name, "red" if name.startswith("immersion") else "blue")
        d.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
        d.text((px + 6, py - 6), name, fill=colour)
    return im


if __name__ == "__main__":
    main()
