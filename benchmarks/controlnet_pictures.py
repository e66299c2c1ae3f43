"""The README's pictures of the bundled ControlNet, made through the command line (the very commands a user types).

    python benchmarks/controlnet_pictures.py [--model PARTS] [-o docs/images/controlnet.png]

Rows: a hand drawing (PIL strokes, not a world render) read by bundled:sketch with a caption; two nets at once,
each in its own half and window (a sketch on the left for the whole run, depth on the right for the first 80%);
ControlNet and Composer in one call (bundled:instances for the layout, the caption and a palette from another
scene for the look). Three seeds each, Euler a; every scene is held out.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/images/controlnet.png"))
    args = parser.parse_args()

    from recomposer.cli import main as cli
    from recomposer.io.sheets import stacked, titled_row
    from recomposer.models.controlnet import hint_picture
    from recomposer.training.world_cache import world_conditions
    from recomposer.world.dataset import eval_seeds, make_sample

    work = Path(tempfile.mkdtemp())
    model = ["--model", str(args.model)] if args.model else []
    common = ["--steps", str(args.steps), "--scheduler", "euler_a", "--batch", "3", "--seed", "1"]
    busy = [s for s in map(make_sample, eval_seeds(40, offset=90_000)) if len(s.scene.objects) >= 4]
    calm = [s for s in map(make_sample, eval_seeds(40, offset=90_100)) if 2 <= len(s.scene.objects) <= 3]
    scenes = [busy[0], busy[1], calm[0]]  # two busy scenes for the halves, a calmer layout for the third row
    hints = {}
    for k, scene in enumerate(scenes):
        conds = world_conditions(scene)
        for kind in ("sketch", "depth", "instances"):
            hints[kind, k] = work / f"{kind}-{k}.png"
            hint_picture(conds[kind]).save(hints[kind, k])
        Image.fromarray(scene.rendered.image).save(work / f"scene-{k}.png")
    drawing = Image.new("RGB", (64, 64), "white")
    pen = ImageDraw.Draw(drawing)
    pen.ellipse([6, 8, 28, 30], outline="black")  # a circle, a square and a triangle, drawn by hand
    pen.rectangle([36, 10, 58, 32], outline="black")
    pen.polygon([(20, 58), (32, 38), (46, 58)], outline="black")
    drawing.save(work / "drawing.png")
    half = np.zeros((64, 64), np.uint8)
    half[:, :32] = 255
    Image.fromarray(half).save(work / "left.png")
    Image.fromarray(255 - half).save(work / "right.png")

    def made(name: str, *argv: str) -> list[tuple[str, Image.Image]]:
        out = work / name
        code = cli([*argv, *model, *common, "-o", str(out)])
        if code != 0:
            raise SystemExit(f"{name}: exit {code}")
        return [(f"seed {k + 1}", Image.open(out / f"{k + 1}.png").convert("RGB")) for k in range(3)]

    rows = [
        ("a hand drawing\n(bundled:sketch +\ncaption)",
         titled_row([("the drawing", drawing)] + made(
             "drawing", "generate", "a red circle, a blue square and a yellow triangle on a cream background",
             "--controlnet", "bundled:sketch", "--control-image", str(work / "drawing.png")), tile=128, nearest=True)),
        ("two nets, two halves\n(sketch left, whole run;\ndepth right, first 80%)",
         titled_row([("sketch, left", Image.open(hints["sketch", 0]).convert("RGB")),
                     ("depth, right", Image.open(hints["depth", 1]).convert("RGB"))] + made(
             "two", "generate", "",
             "--controlnet", "bundled:sketch", "--control-image", str(hints["sketch", 0]),
             "--control-mask", str(work / "left.png"),
             "--controlnet", "bundled:depth", "--control-image", str(hints["depth", 1]),
             "--control-mask", str(work / "right.png"), "--control-end", "1.0", "--control-end", "0.8"),
             tile=128, nearest=True)),
        ("ControlNet + Composer\n(instances layout,\ncaption and palette)",
         titled_row([("instances", Image.open(hints["instances", 2]).convert("RGB")),
                     ("palette from", Image.open(work / "scene-0.png").convert("RGB"))] + made(
             "mixed", "compose", "--caption", scenes[2].caption, "--palette-from", str(work / "scene-0.png"),
             "--controlnet", "bundled:instances", "--control-image", str(hints["instances", 2])),
             tile=128, nearest=True)),
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    stacked(rows, label_width=200).save(args.output)
    print(args.output)


if __name__ == "__main__":
    main()
