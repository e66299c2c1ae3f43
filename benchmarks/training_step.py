"""A Composer training step from the world cache against the bare UNet step at the same batch (issue 13).

    python benchmarks/training_step.py [--parts PARTS] [--batch 64] [--threads 2] [--repeats 8] [-o OUT.json]

Ours: ``recomposer train composer --train-unet --cache`` as it runs: batches read from a world cache
(built here, in a temp folder, for the parts' VAE and image encoder), condition dropout, the adapter's
encoders and doors, the UNet, the loss, backward, clipping, AdamW over UNet + adapter, the EMA and the
loss log; each step's time is the interval between consecutive loss.jsonl lines. Theirs: the bare UNet
step of diffusers' train_text_to_image.py on the same encoded batch (posterior sample, noise, UNet, MSE,
backward, clip, AdamW over the UNet). Both in one process, runs interleaved ours, theirs, theirs, ours,
the first step of each run not counted; the figure is the ratio of the medians (goal <= 1.15).
"""

import argparse
import json
import statistics
import sys
import tempfile
from itertools import pairwise
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=Path, default=None, help="bundled-format parts (default: the bundled model)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=8, help="timed steps per side (>= 4)")
    parser.add_argument("--output", "-o", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from recomposer.commands.world import bundled_encoders
    from recomposer.evaluation.speed import diffusers_training
    from recomposer.training import TrainConfig, read_loss_log, train
    from recomposer.training import world_cache as wc
    from recomposer.training.composer import WORLD_KINDS, ComposerTraining, cached_batches, composer_step, new_adapter

    backbone, encoder = bundled_encoders(args.parts)  # a fresh UNet of the default shape
    steps = args.repeats // 2 + 1  # per run; the first is not counted
    with tempfile.TemporaryDirectory() as folder:
        spec = wc.spec_for(backbone, encoder, 64, args.batch * steps, 1024)
        cache = wc.WorldCache(wc.build(Path(folder) / "cache", spec, lambda: (backbone, encoder)), spec)
        batches = cached_batches(cache, backbone, args.batch)
        plain_unet = backbone.unet
        adapter = new_adapter(backbone, encoder.dim, encoder.identity)
        kinds = WORLD_KINDS + ("image_embedding",)

        def ours() -> list[float]:
            model = ComposerTraining(backbone, adapter, kinds, train_unet=True)
            with tempfile.TemporaryDirectory() as run:
                config = TrainConfig(run, steps=steps, batch_size=args.batch, lr=3e-4, ema_decay=0.999,
                                     checkpoint_every=10**6, cpu=True)
                train(config, model, composer_step, batches, resume=False)
                times = [r["time"] for r in read_loss_log(Path(run) / "loss.jsonl")]
            return [b - a for a, b in pairwise(times)]

        batch = batches(0)
        attached = {"class_labels": torch.zeros(args.batch, plain_unet.time_embedding.linear_2.out_features)}

        def theirs() -> list[float]:
            return diffusers_training(backbone, batch, steps, fp16=False, unet=plain_unet, extra=attached)[1:]

        ours_t, theirs_t = [], []
        for run in (ours, theirs, theirs, ours):
            (ours_t if run is ours else theirs_t).extend(run())
    report = {"batch": args.batch, "threads": args.threads, "ours_s": statistics.median(ours_t),
              "bare_unet_s": statistics.median(theirs_t), "ours_steps": ours_t, "bare_steps": theirs_t,
              "parts": str(args.parts) if args.parts else "bundled"}
    report["ratio"] = report["ours_s"] / report["bare_unet_s"]
    text = json.dumps(report, indent=2)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(f"training step {report['ours_s']:.3f} s vs bare UNet step {report['bare_unet_s']:.3f} s at batch "
          f"{args.batch}, {args.threads} threads: {report['ratio']:.3f}x (goal <= 1.15)", file=sys.stderr)
    print(text)


if __name__ == "__main__":
    main()
