"""Train the whole bundled chain on one GPU (H100/H200) in about 12 minutes: VAE, image encoder, world cache,
UNet + Composer adapter jointly, the ControlNet of the world's hint kinds, a decoder-only VAE pass; weights and
logs under OUT, figures printed.

    python benchmarks/gpu_chain.py OUT [--minutes 12] [--recipe v-zero-snr] [--from-bundled] [--smoke]

Every stage is a `recomposer` command (so each resumes if the script is run again into the same OUT) with
its own wall-clock share of ``--minutes``: VAE 13%, encoder 7%, cache 10%, UNet + adapter 50%, ControlNet 12%,
decoder 8%. ``--from-bundled`` starts from the shipped weights instead of from scratch: the VAE and encoder
stages are skipped (their time goes to the UNet), and the UNet, adapter and ControlNet go on from what ships.
OUT/parts/ then holds a complete parts folder; judge it on the CPU with

    recomposer bench controllability --model OUT/parts -o OUT/bench

and copy it over src/recomposer/weights/ only when the benchmark says it is better. ``--smoke`` runs every
stage for a few steps on the CPU (the test suite's check that the chain is wired).
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

SHARES = {"vae": 0.13, "encoder": 0.07, "cache": 0.10, "composer": 0.50, "controlnet": 0.12, "decoder": 0.08}
RECIPES = {"baseline": [], "min-snr-5": ["--min-snr-gamma", "5"], "v-zero-snr": ["--parameterisation", "v-zero-snr"],
           "attention-16": ["--unet-shape", "attention-16"],
           "v-zero-snr-attention-16": ["--parameterisation", "v-zero-snr", "--unet-shape", "attention-16"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--recipe", choices=tuple(RECIPES), default="v-zero-snr",
                        help="the recipe benchmarks/recipes.py chose (docs/recipes.md)")
    parser.add_argument("--caption-alone", type=float, default=0.5,
                        help="share of samples that keep the caption alone (train composer --caption-alone)")
    parser.add_argument("--from-bundled", action="store_true", help="go on from the shipped weights")
    parser.add_argument("--scenes", type=int, default=131072, help="scenes in the world cache")
    parser.add_argument("--smoke", action="store_true", help="a few steps of each stage on the CPU")
    args = parser.parse_args()
    out, parts = args.out, args.out / "parts"
    shares = dict(SHARES)
    if args.from_bundled:
        from recomposer.models.bundled import WEIGHTS

        if not parts.is_dir():
            import shutil

            shutil.copytree(WEIGHTS, parts)
        shares["composer"] += shares.pop("vae") + shares.pop("encoder")
    parts.mkdir(parents=True, exist_ok=True)
    smoke = args.smoke
    budget = {k: f"{args.minutes * v:.2f}" for k, v in shares.items()}
    big = not smoke
    device = ["--cpu"] if smoke else ["--mixed-precision", "bf16"]
    workers = str(min(16, os.cpu_count() or 1)) if big else "1"
    started = time.monotonic()

    def stage(name: str, *command: str) -> None:
        log = out / f"{name}.log"
        print(f"[{time.monotonic() - started:6.0f} s] {name}: recomposer {' '.join(command)}", flush=True)
        with log.open("a") as f:
            code = subprocess.call([sys.executable, "-m", "recomposer", *command], stdout=f, stderr=subprocess.STDOUT)
        print("".join(log.read_text().splitlines(keepends=True)[-2:]), end="", flush=True)
        if code != 0:
            sys.exit(f"{name} failed ({code}); see {log}")

    steps = lambda n: str(2 if smoke else n)  # noqa: E731
    if not args.from_bundled:  # a fresh VAE and image encoder (the shipped ones otherwise)
        stage("vae", "train", "vae", "-o", str(out / "runs" / "vae"), "--parts", str(parts), "--steps", steps(100_000),
              "--batch-size", "8" if smoke else "128", "--lr", "1e-3", "--sample-every", "0", "--checkpoint-every",
              steps(500), "--max-minutes", budget["vae"], *device)
        stage("encoder", "train", "encoder", "-o", str(out / "runs" / "encoder"), "--parts", str(parts), "--steps",
              steps(100_000), "--batch-size", "8" if smoke else "256", "--pool", "64" if smoke else "32768",
              "--checkpoint-every", steps(500), "--max-minutes", budget["encoder"], *(["--cpu"] if smoke else []))
    stage("cache", "world", "cache", "-o", str(out / "cache"), "--parts", str(parts), "--scenes",
          "16" if smoke else str(args.scenes), "--shard-size", "8" if smoke else "4096", "--workers", workers,
          "--device", "cpu" if smoke else "cuda")
    stage("composer", "train", "composer", "-o", str(out / "runs" / "composer"), "--parts", str(parts),
          "--train-unet", "--cache", str(out / "cache"), "--batch-size", "4" if smoke else "256", "--lr",
          "3e-4" if smoke else "6e-4", "--warmup-steps", steps(500), "--ema-decay", "0.999", "--steps",
          steps(1_000_000), "--checkpoint-every", steps(1000), "--max-minutes", budget["composer"],
          "--caption-alone", str(args.caption_alone), *RECIPES[args.recipe], *device)
    stage("controlnet", "train", "controlnet", "-o", str(out / "runs" / "controlnet"), "--parts", str(parts),
          "--cache", str(out / "cache"), "--batch-size", "4" if smoke else "256", "--lr", "3e-4" if smoke else "2e-4",
          "--warmup-steps", steps(200), "--ema-decay", "0.999", "--steps", steps(1_000_000), "--checkpoint-every",
          steps(1000), "--max-minutes", budget["controlnet"], *device)
    decoder = out / "decoder"
    stage("decoder", "train", "vae", "-o", str(out / "runs" / "decoder"), "--init", str(parts), "--decoder-only",
          "--parts", str(decoder), "--steps", steps(100_000), "--batch-size", "8" if smoke else "128", "--lr",
          "3e-4", "--sample-every", "0", "--checkpoint-every", steps(500), "--max-minutes", budget["decoder"],
          *device)
    for suffix in (".safetensors", ".json"):
        os.replace(decoder / f"vae{suffix}", parts / f"vae{suffix}")
    print(f"[{time.monotonic() - started:6.0f} s] done: {parts}", flush=True)


if __name__ == "__main__":
    main()
