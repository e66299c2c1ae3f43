"""Training curves (loss against step) of the bundled model's runs, drawn with PIL into one PNG.

    python benchmarks/training_curves.py RUN_DIR [RUN_DIR ...] -o docs/images/training-curves.png

Each RUN_DIR is an output folder of `recomposer train ...` (it holds loss.jsonl). Thin grey: every logged
step; black: the moving mean over 50 steps. One panel per run, titled with the folder's name.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from recomposer.io.sheets import label_font

W, H, MARGIN = 420, 260, 46


def panel(name: str, steps: np.ndarray, loss: np.ndarray) -> Image.Image:
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    x0, y0, x1, y1 = MARGIN, 24, W - 12, H - 30
    d.rectangle((x0, y0, x1, y1), outline="black")
    smooth = np.convolve(loss, np.ones(50) / 50, mode="valid") if len(loss) >= 50 else loss
    lo, hi = float(np.percentile(loss, 1)), float(np.percentile(loss, 99))
    hi = max(hi, lo + 1e-9)

    def xy(s, l):
        return (x0 + (x1 - x0) * (s - steps[0]) / max(1, steps[-1] - steps[0]),
                y1 - (y1 - y0) * (min(max(l, lo), hi) - lo) / (hi - lo))

    d.line([xy(s, l) for s, l in zip(steps, loss)], fill=(190, 190, 190))
    d.line([xy(s, l) for s, l in zip(steps[len(steps) - len(smooth):], smooth)], fill="black", width=2)
    d.text((x0, 6), f"{name}: loss vs step (last mean {smooth[-1]:.4f})", fill="black", font=label_font())
    for value in (lo, (lo + hi) / 2, hi):
        d.text((4, xy(steps[0], value)[1] - 6), f"{value:.3f}", fill="black", font=label_font())
    for s in (steps[0], steps[len(steps) // 2], steps[-1]):
        label = str(int(s))
        left = min(xy(s, lo)[0] - 10, W - 4 - d.textlength(label, font=label_font()))  # the last one stays inside
        d.text((left, y1 + 6), label, fill="black", font=label_font())
    return im


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    from recomposer.training import read_loss_log

    panels = []
    for run in args.runs:
        records = read_loss_log(run / "loss.jsonl")
        if not records:
            raise SystemExit(f"{run}/loss.jsonl has no records")
        panels.append(panel(run.name, np.array([r["step"] for r in records]), np.array([r["loss"] for r in records])))
    sheet = Image.new("RGB", (W * len(panels), H), "white")
    for k, p in enumerate(panels):
        sheet.paste(p, (k * W, 0))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output)
    print(args.output)


if __name__ == "__main__":
    main()
