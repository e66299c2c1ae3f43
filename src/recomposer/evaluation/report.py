"""The controllability report as people read it: a markdown table, per-condition bars and an example grid."""

import math

from PIL import Image, ImageDraw

from ..io.sheets import stacked, titled_row
from .controllability import KINDS, SETTINGS
from ..io.sheets import label_font
from ..models.bundled import PSNR_TOP  # dB at the top of the bars (infinite PSNR is drawn there)

COLOURS = {"floor": (170, 170, 170), "single": (40, 110, 200), "pairs": (80, 170, 90), "mixed": (230, 150, 40),
           "ceiling": (40, 40, 40), "vae": (150, 60, 160)}
LABELS = {"pairs": "in pairs", "mixed": "mixed sources", "vae": "ceiling through the VAE"}


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def markdown(report: dict) -> str:
    s = report["settings"]
    settings = _settings(report)
    lines = ["# Controllability report", "",
             f"{s['scenes']} held-out scenes (seeds {s['scene_seeds'][0]}…), {s['held_out_scenes']} scenes with "
             f"held-out attribute combinations; {s['size']} px, {s['steps']} steps"
             + (f" of {s['scheduler']}" if s.get("scheduler", "dpmpp_2m") != "dpmpp_2m" else "")
             + f", guidance {s['guidance']}"
             + (f", rescaled by φ {s['guidance_rescale']}" if s.get("guidance_rescale") else "")
             + (" in [{:g}, {:g}] of the steps".format(*s["guidance_interval"])
                if tuple(s.get("guidance_interval", (0, 1))) != (0, 1) else "") + ". "
             "Judge: the shapes-world analyser. Floor: no condition; ceiling: the judge on the scenes' own renders"
             + ("; through the VAE: the same renders encoded and decoded by the model's VAE (what a perfect generator "
                "in its latents would score)." if "vae" in settings else "."),
             "", "| condition | figure | " + " | ".join(LABELS.get(k, k) for k in settings) + " |",
             "|---|---|" + "---|" * len(settings)]
    for kind, row in report["conditions"].items():
        lines.append(f"| {kind} | {row['figure']} | " + " | ".join(_cell(row[k]) for k in settings) + " |")
    lines += ["", "## Caption, per attribute", "", "| setting | shape | colour | count | relation |", "|---|---|---|---|---|"]
    caption = report["conditions"]["caption"]["details"]
    held = report["held_out_caption"]
    rows = [(LABELS.get(name, name), caption.get(name, {})) for name in settings] + [
        (f"held-out combinations: {LABELS.get(name, name)}", held.get(name, {}))
        for name in ("floor", "caption", "ceiling", "vae") if name in held]
    for name, d in rows:
        lines.append(f"| {name} | " + " | ".join(_cell(d.get(f"{a}_accuracy")) for a in ("shape", "colour", "count",
                                                                                          "relation")) + " |")
    depth = report["conditions"]["depth"]["details"]
    lines += ["", "## Depth occlusion order (pairs where one object hides part of the other, front read as nearer)",
              "",
              "| " + " | ".join(LABELS.get(name, name) for name in settings if name in depth) + " |",
              "|" + "---|" * sum(name in depth for name in settings),
              "| " + " | ".join(_cell(depth[name].get("order_accuracy")) for name in settings if name in depth) + " |"]
    realism = report["realism"]
    lines += ["", f"## Realism: Fréchet distance of analyser features to {realism['reference_renders']} renders "
                  "(lower is better)", "", "| images | count | Fréchet distance |", "|---|---|---|"]
    for name in ("renders", "vae", "floor", "conditioned", "controlnet"):
        if name in realism:
            lines.append(f"| {name} | {realism[name]['images']} | {realism[name]['frechet_distance']:.2f} |")
    if "controlnet" in report:
        c = report["controlnet"]
        scale = report["settings"].get("control_scale", 1.0)
        mode = report["settings"].get("control_mode", "balanced")
        lines += ["", "## ControlNet beside the Composer adapter (each given the scene's hint alone; "
                  f"the net at conditioning scale {scale:g}, {mode} mode)", "",
                  "| hint | figure | floor | Composer adapter | ControlNet | ceiling |"
                  + (" ceiling through the VAE |" if "vae" in settings else ""),
                  "|---|---|---|---|---|---|" + ("---|" if "vae" in settings else "")]
        columns = ("floor", "composer", "controlnet", "ceiling") + (("vae",) if "vae" in settings else ())
        for kind, row in c["kinds"].items():
            lines.append(f"| {kind} | {row['figure']} | " + " | ".join(_cell(row.get(k)) for k in columns) + " |")
        lines += ["", "Seconds per image: " + ", ".join(f"{name} {value:.3f} s" for name, value
                                                       in c["seconds_per_image"].items())]
    return "\n".join(lines) + "\n"


def _settings(report: dict) -> tuple[str, ...]:
    """The report's columns: every setting, but the VAE round trip only where the report has it (older ones lack it)."""
    return tuple(k for k in SETTINGS if k != "vae" or "vae" in next(iter(report["conditions"].values())))


def bars(report: dict, width: int = 900) -> Image.Image:
    """One group of bars per condition (floor, single, pairs, mixed, ceiling, through the VAE), each on its figure's
    scale: [0, 1] for accuracies, IoU, F1, ρ, intersections and cosines; [0, 50] dB for PSNRs."""
    rows, settings = report["conditions"], _settings(report)
    group, bar, top, height = width // len(rows), 0, 40, 260
    image = Image.new("RGB", (width, height + top + 60), "white")
    draw = ImageDraw.Draw(image)
    for i, name in enumerate(settings):
        draw.rectangle((10 + 110 * i, 10, 22 + 110 * i, 22), fill=COLOURS[name])
        draw.text((26 + 110 * i, 10), "through VAE" if name == "vae" else name, fill="black", font=label_font())
    bar = (group - 16) // len(settings)
    for g, (kind, row) in enumerate(rows.items()):
        db = row["figure"].endswith("_db")
        x0 = g * group + 8
        for k, setting in enumerate(settings):
            value = row[setting]
            if value is None:
                continue
            share = min(value, PSNR_TOP) / PSNR_TOP if db else value
            share = max(0.0, min(1.0, share))
            x = x0 + k * bar
            draw.rectangle((x, top + height - round(share * height), x + bar - 2, top + height), fill=COLOURS[setting])
        small = label_font(11)  # a group's labels fit its width (``image_embedding`` beside ``palette``)
        draw.text((x0, top + height + 6), kind, fill="black", font=small)
        draw.text((x0, top + height + 22), row["figure"] + (f" /{PSNR_TOP:.0f}" if db else ""), fill="gray",
                  font=small)
    draw.line((0, top + height, width, top + height), fill="black")
    return image


def example_grid(examples: dict) -> Image.Image:
    """Two rows per scene: pictures of its conditions, then the scene, the unconditioned floor and the image
    generated from each condition alone (``examples``: (scene, name) -> image, (scene, "conditions") -> dict)."""
    scenes = sorted({i for i, _ in examples})
    rows = []
    for i in scenes:
        conditions = examples[i, "conditions"]
        rows.append((f"scene {i}\nconditions", titled_row(
            [("scene", examples[i, "scene"]), ("(none)", Image.new("RGB", (8, 8), "white"))]
            + [(kind, conditions[kind].picture()) for kind in KINDS], tile=96)))
        rows.append((f"scene {i}\ngenerated", titled_row(
            [("scene", examples[i, "scene"]), ("floor", examples[i, "floor"])]
            + [(kind, examples[i, kind]) for kind in KINDS], tile=96, nearest=True)))
    return stacked(rows, label_width=90)


def figures(report: dict) -> dict:
    """The report's single-condition figures beside their floor and ceiling, with the model they belong to: what a
    parts folder ships as ``benchmark.json`` so that the tasks can say when a condition is barely heard
    (tasks/composer.py, ``weak_conditions``)."""
    keys = ("figure", "floor", "single", "ceiling")
    out = {"format": 1, "model": report["settings"]["model"],
           "conditions": {kind: {k: c[k] for k in keys} for kind, c in report["conditions"].items()}}
    if report.get("controlnet"):  # the parts' ControlNet, each hint kind beside the same floor and ceiling
        out["controlnet"] = {kind: {k: c[k] for k in ("figure", "floor", "controlnet", "ceiling")}
                             for kind, c in report["controlnet"]["kinds"].items()}
    return out
