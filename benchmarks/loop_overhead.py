"""Framework overhead of recomposer's loop: figures 1-3 of the speed benchmark (recomposer/evaluation/speed.py),
on the tiny SD-shaped components (random weights) on the CPU.

1. per image: recomposer's generate vs diffusers' StableDiffusionPipeline, same components, prompt, scheduler,
   steps, guidance, size and seed (runs interleaved);
2. the loop vs the raw UNet forwards it performs, timed inside the same runs;
3. multi-term guidance (base + 2 / base + 3 terms) vs one raw batch-3 / batch-4 UNet forward.

    python benchmarks/loop_overhead.py [--size 64] [--steps 20] [--repeats 11] [--threads 1] [--json out.json]

`python benchmarks/speed.py` runs these and every other speed figure.
"""

import argparse
import json

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from recomposer.evaluation.speed import SpeedConfig, generation_figures, table
    from recomposer.models.tiny import tiny_sd

    config = SpeedConfig(repeats=args.repeats, steps=args.steps, size=args.size, threads=args.threads,
                         device="cpu").check()
    figures = generation_figures(tiny_sd(sample_size=args.size), config, args.size)
    print("\n".join(table(figures)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": {"size": args.size, "steps": args.steps, "repeats": args.repeats,
                                 "threads": args.threads, "torch": torch.__version__}, "figures": figures}, f, indent=2)


if __name__ == "__main__":
    main()
