"""The speed benchmark (recomposer/evaluation/speed.py), full mode: every figure, and the bundled model end to end.

    python benchmarks/speed.py [--repeats 7] [--steps 20] [--size 64] [--threads 1] [--device auto] [--quick]
                               [--json out.json] [--markdown out.md]

On a CUDA machine (--device auto or cuda) the loop figures run on an SD-1.5-shaped model in fp16 at 512 px.
"""

import argparse
import json

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="the CI configuration (QUICK_SPEED) on --device")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from dataclasses import replace

    from recomposer.evaluation.speed import QUICK_SPEED, SpeedConfig, markdown, run

    config = replace(QUICK_SPEED, device=args.device, threads=args.threads) if args.quick else SpeedConfig(
        repeats=args.repeats, steps=args.steps, size=args.size, threads=args.threads, device=args.device)
    report = run(config)
    text = markdown(report)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, allow_nan=False)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
