"""The full controllability benchmark (issue 6): every condition alone, in pairs and from mixed sources on 40
held-out scenes, plus 40 scenes with held-out attribute combinations, judged by the shapes-world analyser.

    python benchmarks/controllability.py [-o benchmarks/results/controllability] [--threads 2] [any option of
        `recomposer bench controllability`, e.g. --model PARTS --scenes 80 --steps 20]

About 30 minutes on two CPU threads for the bundled model. Writes report.json, report.md, bars.png and
examples.png into a new folder (the CLI refuses an existing one).
"""

import sys

import torch


def main() -> None:
    args = sys.argv[1:]
    threads = 2
    if "--threads" in args:
        i = args.index("--threads")
        threads = int(args[i + 1])
        del args[i:i + 2]
    torch.set_num_threads(threads)
    if "-o" not in args and "--output" not in args:
        args += ["-o", "benchmarks/results/controllability"]
    from recomposer.cli import main as cli

    sys.exit(cli(["bench", "controllability", *args]))


if __name__ == "__main__":
    main()
