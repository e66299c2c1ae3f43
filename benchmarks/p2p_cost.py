"""What Prompt-to-Prompt costs over a plain generation of the same two-row batch (issue 14's figure).

    python benchmarks/p2p_cost.py [--repeats 7] [--steps 20] [--threads 1] [-o benchmarks/results/p2p_cost.json]

Ours: ``prompt_to_prompt`` (source and edited rows in one forward per step, attention processors installed,
cross-attention replaced for 80% of the steps, self-attention for 40%, a local blend). Theirs: ``generate``
with batch 2 and the same prompt, steps, scheduler and guidance (the same UNet rows per step). Both in one
process, interleaved (ours first in even rounds), the median of ``--repeats`` runs after one warm-up each;
on the bundled model (64 px, MiniLM) and on tiny SD (32 px, CLIP). Goal: <= 1.15x.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from recomposer.models.loading import load_bundled
    from recomposer.models.tiny import tiny_sd
    from recomposer.requests import Edit, GenerateRequest, P2PRequest
    from recomposer.tasks.generate import generate
    from recomposer.tasks.p2p import prompt_to_prompt

    source, edited = "a red circle above a blue square", "a green circle above a blue square"
    report = {"steps": args.steps, "repeats": args.repeats, "threads": args.threads, "models": {}}
    for name, backbone in (("bundled", load_bundled(torch.device("cpu"), torch.float32)), ("tiny-sd", tiny_sd(0))):
        p2p = P2PRequest(source, edited, scheduler="ddim", steps=args.steps, guidance=7.5,
                         edit=Edit(cross_replace=0.8, self_replace=0.4, blend=("circle",)))
        plain = GenerateRequest(edited, scheduler="ddim", steps=args.steps, guidance=7.5, batch=2)

        def ours():
            prompt_to_prompt(backbone, p2p)

        def theirs():
            generate(backbone, plain)

        ours(), theirs()
        times = {"ours": [], "theirs": []}
        for i in range(args.repeats):
            for label, fn in (("ours", ours), ("theirs", theirs)) if i % 2 == 0 else (("theirs", theirs), ("ours", ours)):
                start = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - start)
        medians = {k: statistics.median(v) for k, v in times.items()}
        report["models"][name] = {"p2p_s": medians["ours"], "plain_two_rows_s": medians["theirs"],
                                  "ratio": medians["ours"] / medians["theirs"], "runs": times}
        print(f"{name}: Prompt-to-Prompt {medians['ours']:.3f} s vs plain batch-2 generation {medians['theirs']:.3f} s"
              f" = {medians['ours'] / medians['theirs']:.3f}x (goal <= 1.15)", file=sys.stderr)
    text = json.dumps(report, indent=2)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
