"""What a VAE allows, without generating anything: the benchmarks' "through the VAE" rows for each parts folder given.

    python benchmarks/vae_ceilings.py PARTS [PARTS ...] [--scenes 40] [--edit-scenes 40] [-o ceilings.json]

For each folder's VAE: its held-out PSNR (256 scenes, as ``train vae`` writes it), the "vae" column of
``recomposer bench controllability`` (each held-out scene's render encoded and decoded, judged as the benchmark judges
it, on the same scenes, with the round trips' Fréchet distance to the same renders) and the "vae" row of
``recomposer bench edits`` (the world's edited renders through the VAE, the same edits). The shipped weights give the
committed reports' columns to the digit, so a new decoder (``recomposer train vae --decoder-only``) can be judged by
what it would lift every benchmark's ceiling to in a few minutes, before any full run. Ceilings are not the whole
story: a decoder better on the encoder's latents can draw a sampler's worse (docs/recipes.md, "A longer, deeper
decoder"), so each folder's PSNR with its latents perturbed (``training.vae.perturbed_psnr``) is reported too.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from recomposer.evaluation import controllability as c
from recomposer.evaluation import judges
from recomposer.evaluation.edits import judge_edits, edits_of, through_vae
from recomposer.models.analyser import load_bundled_analyser
from recomposer.tasks.composer import load_composer
from recomposer.training.vae import held_out, perturbed_psnr, round_trip, summary
from recomposer.world.dataset import eval_seeds, make_sample
from recomposer.world.edits import EDIT_KINDS
from recomposer.world.scene import WorldConfig


def controllability_column(model, analyser, scenes: int, held_out: int, reference: int) -> dict:
    sources = [c.make_source(model, seed) for seed in eval_seeds(scenes)]
    held = [c.make_source(model, seed, WorldConfig(held_out="only"))
            for seed in eval_seeds(held_out, c.HELD_OUT_OFFSET)]
    images = round_trip(model.backbone.vae, [s.render for s in sources + held])
    scores, held_scores, features = c.Scores(), c.Scores(), []
    for image, source in zip(images, sources):
        image = Image.fromarray(image)
        read = c.reading(analyser, image)
        features.append(read.features)
        for kind in c.KINDS:
            scores.judge(model, read, image, kind, source)
    for image, source in zip(images[len(sources):], held):
        image = Image.fromarray(image)
        held_scores.judge(model, c.reading(analyser, image), image, "caption", source)
    renders = [make_sample(s).rendered.image for s in eval_seeds(reference, c.REFERENCE_OFFSET)]
    reference_features = np.stack([a.features for a in analyser.analyse(np.stack(renders))])
    figures = scores.summary()
    return {"conditions": {kind: figures[kind][c.HEADLINE[kind]] for kind in c.KINDS},
            "caption": {k: figures["caption"][k] for k in figures["caption"] if not k.endswith("_n")},
            "held_out_caption": {k: v for k, v in held_scores.summary()["caption"].items() if not k.endswith("_n")},
            "frechet_distance": round(judges.frechet_distance(np.stack(features), reference_features), 3)}


def edits_row(backbone, analyser, scenes: int) -> dict:
    out = {}
    for kind in EDIT_KINDS:
        edits = edits_of(kind, scenes)
        row = judge_edits(analyser, edits, through_vae(backbone, edits))  # its "model" row: the round trips themselves
        out[kind] = {"success": row["success"]["model"], "background_psnr_db": row["background_psnr_db"]["model"]}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="+", type=Path, help="parts folders (src/recomposer/weights: the shipped one)")
    parser.add_argument("--scenes", type=int, default=40, help="controllability scenes (the benchmark's 40)")
    parser.add_argument("--held-out-scenes", type=int, default=40)
    parser.add_argument("--reference", type=int, default=200, help="renders the Fréchet distance is measured to")
    parser.add_argument("--edit-scenes", type=int, default=40, help="held-out scenes per edit kind (the benchmark's)")
    parser.add_argument("-o", "--output", type=Path, help="write the figures as JSON here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    analyser = load_bundled_analyser()
    results = {}
    for folder in args.parts:
        model = load_composer(str(folder))
        results[str(folder)] = {
            "vae": {k: v for k, v in summary(model.backbone.vae, 256).items() if k.startswith("psnr")},
            "psnr_perturbed_latents": perturbed_psnr(model.backbone.vae, held_out(256, 64)),
            "controllability": controllability_column(model, analyser, args.scenes, args.held_out_scenes,
                                                      args.reference),
            "edits": edits_row(model.backbone, analyser, args.edit_scenes)}
        print(json.dumps({str(folder): results[str(folder)]}, indent=1), flush=True)
    if args.output:
        args.output.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
