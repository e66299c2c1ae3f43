"""Training recipes for the bundled model, compared at equal CPU time (issue 13).

    python benchmarks/recipes.py train    --cache CACHE --parts PARTS --runs RUNS [--minutes 25] [--parallel 2]
    python benchmarks/recipes.py evaluate --runs RUNS [--scenes 12] [--points 2] [--parallel 2]
    python benchmarks/recipes.py report   --runs RUNS [--json benchmarks/results/recipes.json] [--plot docs/images/recipes.png]
    python benchmarks/recipes.py curve    --json benchmarks/results/long_runs.json --plot docs/images/long-runs.png

train: every recipe from scratch (a fresh UNet and Composer adapter, trained jointly from the same world
    cache, batch 32, lr 3e-4 after 200 warm-up steps, EMA 0.995, seed 0), each for the same wall-clock
    budget on one torch thread, ``--parallel`` of them at a time (so each has one core to itself).
    Checkpoints every 250 steps are kept, with the CPU seconds each step had used (loss.jsonl).
evaluate: the EMA weights at ``--points`` checkpoints spread over each run (the last one included) become a
    parts folder and are judged by ``recomposer bench controllability`` on the same held-out scenes
    (``--scenes`` ordinary + as many with held-out attribute combinations, 20 steps, guidance 3).
report: a markdown table of every figure at each run's end, and a plot of the score against CPU-minutes.
    The score is the mean, over seven figures, of the progress from the benchmark's floor (no condition)
    to its ceiling (the renders themselves): (x − floor) / (ceiling − floor) for caption colour-on-the-right-
    shape, caption shape and count accuracy, palette intersection, image-embedding cosine, sketch edge F1 and
    instances mIoU, each under its own condition alone. The winner is the recipe with the best score at the
    end of its budget.
curve: the long runs' score against CPU-minutes from scratch, from a JSON of measured points (each line's
    points with the score of their full benchmark; a branch starts from its parent line's point ``from``).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

RECIPES = {
    "baseline": [],  # the recipe behind the first bundled weights: ε, every timestep weighs 1, the default UNet
    "min-snr-5": ["--min-snr-gamma", "5"],  # Hang et al. 2023
    "v-zero-snr": ["--parameterisation", "v-zero-snr"],  # Lin et al. 2024: v-prediction, zero terminal SNR
    "attention-16": ["--unet-shape", "attention-16"],  # cross-attention at 16 x 16 too (2x the step's cost)
}
COMMON = ["--train-unet", "--batch-size", "32", "--lr", "3e-4", "--warmup-steps", "200", "--ema-decay", "0.995",
          "--steps", "10000000", "--checkpoint-every", "250", "--keep-checkpoints", "100000", "--seed", "0"]
SCORED = [("caption", "colour_accuracy"), ("caption", "shape_accuracy"), ("caption", "count_accuracy"),
          ("palette", None), ("image_embedding", None), ("sketch", None), ("instances", None)]


def one_thread() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_all(commands: list[tuple[list[str], Path]], parallel: int) -> None:
    """Run commands ``parallel`` at a time, each logging to its path; fail if any fails."""
    waiting, running = list(commands), []
    while waiting or running:
        while waiting and len(running) < parallel:
            command, log = waiting.pop(0)
            log.parent.mkdir(parents=True, exist_ok=True)
            running.append((subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                             env=one_thread()), command))
        process, command = running.pop(0)
        if process.wait() != 0:
            sys.exit(f"failed ({process.returncode}): {' '.join(command)}")


def train(args) -> None:
    commands = []
    for name, options in RECIPES.items():
        if args.only and name not in args.only:
            continue
        run = args.runs / name
        parts = run / "parts"
        if not parts.is_dir():
            shutil.copytree(args.parts, parts)
        commands.append(([sys.executable, "-m", "recomposer", "train", "composer", "-o", str(run / "train"),
                          "--parts", str(parts), "--cache", str(args.cache), "--max-minutes", str(args.minutes),
                          *COMMON, *options], run / "train.log"))
    run_all(commands, args.parallel)


def export(run: Path, step: int) -> Path:
    """The EMA weights of checkpoint ``step`` of a run as a parts folder (VAE and image encoder from the run's)."""
    import torch

    from recomposer.models.bundled import load_bundled_backbone, load_bundled_image_encoder, unet_settings, write_part
    from recomposer.training.checkpoint import load_checkpoint, step_folder
    from recomposer.training.composer import new_adapter

    out = run / f"eval-{step:06d}"
    if (out / "composer.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("vae", "image_encoder"):
        for suffix in (".safetensors", ".json"):
            shutil.copy(run / "parts" / f"{name}{suffix}", out)
    settings = json.loads((run / "train" / "composer-run.json").read_text())
    recipe = RECIPES[run.name]
    shape = recipe[recipe.index("--unet-shape") + 1] if "--unet-shape" in recipe else "default"
    parameterisation = recipe[recipe.index("--parameterisation") + 1] if "--parameterisation" in recipe else "epsilon"
    backbone = load_bundled_backbone(torch.device("cpu"), torch.float32, out, fresh_unet=(shape, parameterisation))
    encoder = load_bundled_image_encoder(folder=out)
    adapter = new_adapter(backbone, encoder.dim, encoder.identity)
    weights = load_checkpoint(step_folder(run / "train", step)).ema
    for module, prefix in ((backbone.unet, "unet."), (adapter, "adapter.")):
        state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        missing = set(module.state_dict()) - set(state)
        if missing:
            sys.exit(f"{run} checkpoint {step} lacks {sorted(missing)[:3]}")
        module.load_state_dict(state)
    write_part(backbone.unet, "unet", out, unet_settings(backbone, steps=step, joint=True))
    write_part(adapter, "composer", out, {"config": adapter.config.__dict__, "steps": step,
                                          "kinds": settings["kinds"]})
    return out


def checkpoints(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run / "train" / "checkpoints").glob("step-*"))


def evaluate(args) -> None:
    commands = []
    for name in RECIPES:
        run = args.runs / name
        if (args.only and name not in args.only) or not (run / "train").is_dir():
            continue
        steps = checkpoints(run)
        chosen = sorted({steps[max(0, round(len(steps) * k / args.points) - 1)] for k in range(1, args.points + 1)})
        if args.at:  # checkpoints named by step (a long run's curve)
            chosen = sorted(set(args.at) & set(steps))
        for step in chosen:
            report = run / f"bench-{step:06d}"
            if (report / "report.json").is_file():
                continue
            parts = export(run, step)
            commands.append(([sys.executable, "-m", "recomposer", "bench", "controllability", "--model", str(parts),
                              "--scenes", str(args.scenes), "--held-out-scenes", str(args.scenes), "-o", str(report)],
                             run / f"bench-{step:06d}.log"))
    run_all(commands, args.parallel)


def score(report: dict) -> tuple[float, dict]:
    """The score of a controllability report (module docstring) and the seven progress values it averages."""
    parts = {}
    for kind, detail in SCORED:
        c = report["conditions"][kind]
        if detail is None:
            x, lo, hi = c["single"], c["floor"], c["ceiling"]
        else:
            d = c["details"]
            x, lo, hi = d["single"][detail], d["floor"][detail], d["ceiling"][detail]
        parts[f"{kind}.{detail}" if detail else kind] = (x - lo) / (hi - lo) if hi > lo else 0.0
    return sum(parts.values()) / len(parts), parts


def cpu_minutes(run: Path, step: int) -> float:
    for line in (run / "train" / "loss.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["step"] == step:
            return record["cpu_seconds"] / 60
    raise SystemExit(f"{run}: no loss record of step {step}")


def collect(runs: Path) -> dict:
    results = {}
    for name in RECIPES:
        run = runs / name
        points = []
        for report_path in sorted(run.glob("bench-*/report.json")):
            step = int(report_path.parent.name.split("-")[1])
            report = json.loads(report_path.read_text())
            value, parts = score(report)
            points.append({"step": step, "cpu_minutes": round(cpu_minutes(run, step), 2), "score": round(value, 4),
                           "progress": {k: round(v, 4) for k, v in parts.items()},
                           "figures": headline(report)})
        if points:
            results[name] = {"options": RECIPES[name], "points": points}
    return results


def headline(report: dict) -> dict:
    c = report["conditions"]
    single = c["caption"]["details"]["single"]
    realism = {k: v["frechet_distance"] for k, v in report["realism"].items() if isinstance(v, dict)}
    return {"caption_shape": single["shape_accuracy"], "caption_colour": single["colour_accuracy"],
            "caption_count": single["count_accuracy"], "palette": c["palette"]["single"],
            "image_embedding": c["image_embedding"]["single"], "sketch_f1": c["sketch"]["single"],
            "instances_miou": c["instances"]["single"], "fd_conditioned": realism.get("conditioned"),
            "fd_unconditioned": realism.get("floor"), "fd_renders": realism.get("renders")}


def report(args) -> None:
    results = collect(args.runs)
    if not results:
        sys.exit(f"no evaluated runs under {args.runs}")
    winner = max(results, key=lambda n: results[n]["points"][-1]["score"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"winner": winner, "recipes": results}, indent=2) + "\n")
    plot(results, args.plot)
    lines = ["| recipe | options | steps | CPU-min | score | caption shape | colour | count | palette | "
             "image emb. | sketch F1 | instances mIoU | FD cond. / uncond. (renders) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        end, f = result["points"][-1], result["points"][-1]["figures"]
        realism = f"{f['fd_conditioned']:.2f} / {f['fd_unconditioned']:.2f} ({f['fd_renders']:.2f})" \
            if f["fd_conditioned"] is not None else "-"
        lines.append(f"| {'**' + name + '**' if name == winner else name} | {' '.join(result['options']) or '-'} | "
                     f"{end['step']} | {end['cpu_minutes']:.1f} | {end['score']:.3f} | {f['caption_shape']:.3f} | "
                     f"{f['caption_colour']:.3f} | {f['caption_count']:.3f} | {f['palette']:.3f} | "
                     f"{f['image_embedding']:.3f} | {f['sketch_f1']:.3f} | {f['instances_miou']:.3f} | {realism} |")
    print("\n".join(lines))
    print(f"\nwinner: {winner}")


def plot(results: dict, path: Path) -> None:
    """Score against CPU-minutes, one line per recipe (PIL; no plotting library needed). A line starts at
    (0, 0), or at its ``start`` point ({"cpu_minutes", "score"}) where it branches from another."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(14)
    names = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(name, font=font) for name in results)
    w, h, m = 490 + int(names) + 20, 400, 60
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    xs = [p["cpu_minutes"] for r in results.values() for p in r["points"]]
    ys = [p["score"] for r in results.values() for p in r["points"]]
    x_hi, y_lo, y_hi = max(xs) * 1.05, min(0.0, min(ys)), max(ys) * 1.15 + 1e-6
    x0, y0, x1, y1 = m, 20, 480, h - m

    def at(x, y):
        return x0 + (x1 - x0) * x / x_hi, y1 - (y1 - y0) * (y - y_lo) / (y_hi - y_lo)

    d.rectangle((x0, y0, x1, y1), outline="black")
    for k in range(5):
        y = y_lo + (y_hi - y_lo) * k / 4
        d.text((8, at(0, y)[1] - 7), f"{y:.2f}", fill="black", font=font)
        x = x_hi * k / 4
        d.text((at(x, 0)[0] - 10, y1 + 6), f"{x:.0f}", fill="black", font=font)
    d.text(((x0 + x1) // 2 - 40, h - 28), "CPU-minutes", fill="black", font=font)
    d.text((x0, 2), "score (mean progress floor -> ceiling)", fill="black", font=font)
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    label_y = []
    for (name, result), colour in sorted(zip(results.items(), colours), key=lambda rc: -rc[0][1]["points"][-1]["score"]):
        start = result.get("start", {"cpu_minutes": 0, "score": 0})
        points = [at(p["cpu_minutes"], p["score"]) for p in [start, *result["points"]]]
        d.line(points, fill=colour, width=3)
        for x, y in points[1:]:
            d.ellipse((x - 4, y - 4, x + 4, y + 4), fill=colour)
        y = max([points[-1][1] - 7] + [prev + 16 for prev in label_y])  # labels never overlap
        label_y.append(y)
        d.text((x1 + 10, y), name, fill=colour, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def curve(args) -> None:
    """Plot the long runs' measured points (``--json``): {"lines": {name: {"from": [line, index] or absent,
    "points": [{"step", "cpu_minutes", "score", ...}]}}}."""
    lines = json.loads(args.json.read_text())["lines"]
    for name, line in lines.items():
        if "from" in line:
            parent, index = line["from"]
            line["start"] = lines[parent]["points"][index]
    plot(lines, args.plot)
    for name, line in lines.items():
        print(name + ": " + ", ".join(f"{p['score']:.3f} at {p['cpu_minutes']:.0f} CPU-min" for p in line["points"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=("train", "evaluate", "report", "curve"))
    parser.add_argument("--runs", type=Path, help="a folder of one run folder per recipe")
    parser.add_argument("--cache", type=Path, help="the world cache (train)")
    parser.add_argument("--parts", type=Path, help="parts with the VAE and image encoder the cache is for (train)")
    parser.add_argument("--minutes", type=float, default=25.0, help="wall-clock budget of each recipe (train)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once, one thread each")
    parser.add_argument("--only", nargs="*", help="recipes to run (default: all)")
    parser.add_argument("--scenes", type=int, default=12, help="held-out scenes of each kind (evaluate)")
    parser.add_argument("--points", type=int, default=2, help="checkpoints judged per run (evaluate)")
    parser.add_argument("--at", type=int, nargs="*", help="judge exactly these checkpoint steps (evaluate)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/recipes.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/images/recipes.png"))
    args = parser.parse_args()
    if args.phase == "train" and (args.cache is None or args.parts is None):
        parser.error("train needs --cache and --parts")
    if args.phase != "curve" and args.runs is None:
        parser.error(f"{args.phase} needs --runs")
    {"train": train, "evaluate": evaluate, "report": report, "curve": curve}[args.phase](args)


if __name__ == "__main__":
    main()
