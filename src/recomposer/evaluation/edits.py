"""The instruction-edit benchmark: does an instruction model make the edit it is asked for, and only that edit?

For each edit kind (world/edits.py) and each of ``scenes`` held-out scenes (``eval_seeds``; the training stream never
draws them) that allows the kind, the model edits the scene's 64 px render by the edit's instruction, and each result
is judged against the world's own edit (the analyser reads every image at 64 px):

    success      the analyser reads the edited attribute as the instruction asks (``edit_success``)
    background   PSNR (dB) of the result against the edited render outside the edit's changed region (the pixels
                 that render identically before and after; not defined for background edits)

The floor is the unedited render (what doing nothing scores), the ceiling the world's edited render (what a perfect
editor scores; below 1 where the analyser misreads), and "vae" the world's edited render through the model's VAE
(encoded to its posterior mode and decoded): what a perfect editor that works in those latents can reach, the
practical ceiling of both figures. Visii is judged on ``visii_scenes`` other scenes: an edit learnt
from one pair of a first scene (tasks/visii.py) and applied to the others, beside the written instruction applied to
the same scenes, with the seconds the learning took. The model's figures are also kept edit by edit ("each"), so
that two runs of the same edits can be compared scene by scene (``paired``; benchmarks/edit_pairs.py).
"""

import hashlib
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image

from .. import validation as v
from ..errors import InvalidParameter
from ..models.analyser import Analyser, Analysis
from ..requests import InstructRequest
from ..world.dataset import eval_seeds, make_sample
from ..world.edits import EDIT_KINDS, Edit, footprint, make_edit
from ..world.render import render
from ..world.scene import Scene
from .judges import psnr

SIZE = 64
VISII_KINDS = ("recolour", "background")  # edits whose instruction reads the same on other scenes


@dataclass(frozen=True)
class EditBenchConfig:
    scenes: int = 40  # held-out scenes tried per edit kind (those that allow it are edited)
    steps: int = 20  # sampler steps per edit
    scheduler: str = "euler_a"  # the sampler (instruct's default: Euler ancestral)
    guidance: float = 7.5  # s_T
    image_guidance: float = 1.5  # s_I
    guidance_rescale: float = 0.0  # φ of the guidance rescale (guidance.py; 0: none)
    visii_scenes: int = 20  # scenes a learnt instruction is applied to
    visii_steps: int = 1000  # Visii's iterations per learnt instruction (the reference's loop length)

    def check(self) -> "EditBenchConfig":
        v.integer("scenes", self.scenes, 1, 10_000)
        v.integer("steps", self.steps, 1, 1000)
        self.request("an instruction", 0).check()  # the sampling settings, as instruct checks them
        v.integer("visii-scenes", self.visii_scenes, 0, 10_000)
        v.integer("visii-steps", self.visii_steps, 1, 100_000)
        return self

    def request(self, instruction: str, seed: int, learned: str = "") -> InstructRequest:
        """The edit of scene ``seed`` by ``instruction`` (or a learnt one's sha256) at this benchmark's settings."""
        return InstructRequest(instruction, guidance=self.guidance, image_guidance=self.image_guidance,
                               guidance_rescale=self.guidance_rescale, scheduler=self.scheduler, steps=self.steps,
                               seed=seed, allow_flat=True, learned=learned)


QUICK_EDITS = EditBenchConfig(scenes=2, steps=4, visii_scenes=2, visii_steps=4)


# ---------------------------------------------------------------- judging one edit

def _match(analysis: Analysis, region: np.ndarray) -> int | None:
    """The analysed instance that covers most of ``region`` (64 × 64 bool), or None when none touches it."""
    if not len(analysis.masks):
        return None
    overlap = (analysis.masks & region[None]).sum((1, 2))
    return int(overlap.argmax()) if overlap.max() > 0 else None


def _near(analysis: Analysis, obj, k: int) -> bool:
    """Whether instance k is read as ``obj``'s colour and shape with its centre within ``obj``'s radius."""
    cx, cy = analysis.centres[k]
    close = np.hypot(cx / SIZE - obj.x, cy / SIZE - obj.y) <= max(obj.size, 2 / SIZE)
    return bool(close and analysis.colours[k] == obj.colour and analysis.shapes[k] == obj.shape)


def edit_success(analysis: Analysis, image: np.ndarray, edit: Edit) -> bool:
    """Whether ``image`` (64 × 64 × 3 uint8; ``analysis`` its reading) shows ``edit`` as its instruction asks."""
    if edit.kind == "background":
        return _background_success(image, edit)
    if edit.kind == "remove":
        gone = edit.before.objects[edit.target]
        return not any(_near(analysis, gone, k) for k in range(len(analysis.shapes)))
    new = edit.after.objects[edit.target]
    if edit.kind == "add":
        return any(_near(analysis, new, k) for k in range(len(analysis.shapes)))
    old = edit.before.objects[edit.target]
    region = footprint(new, SIZE)
    k = _match(analysis, region)
    if k is None:
        return False
    if edit.kind == "recolour":
        return analysis.colours[k] == new.colour
    if edit.kind == "restyle":
        return analysis.styles[k] == new.style
    if edit.kind == "swap_shape":
        return analysis.shapes[k] == new.shape
    if edit.kind == "resize":
        area = analysis.masks[k].sum()
        return abs(area - region.sum()) < abs(area - footprint(old, SIZE).sum())
    if edit.kind == "move":
        cx, cy = analysis.centres[k] / SIZE
        return bool(np.hypot(cx - new.x, cy - new.y) < np.hypot(cx - old.x, cy - old.y))
    raise InvalidParameter("edit.kind", "one of " + ", ".join(EDIT_KINDS), edit.kind)


def _background_success(image: np.ndarray, edit: Edit) -> bool:
    """A background edit shows when the pixels no object covers are nearer the new background than the old one."""
    free = np.ones((SIZE, SIZE), bool)
    for obj in edit.before.objects + edit.after.objects:
        free &= ~footprint(obj, SIZE)
    if free.sum() < 16:
        free = np.ones((SIZE, SIZE), bool)
    pixels = image[free].astype(np.float64)
    before, after = (_plain(s)[free].astype(np.float64) for s in (edit.before, edit.after))
    return bool(np.abs(pixels - after).mean() < np.abs(pixels - before).mean())


def _plain(scene: Scene) -> np.ndarray:
    """The scene's background alone, rendered (64 × 64 × 3)."""
    return render(Scene((), scene.background), SIZE).image


def background_psnr(image: np.ndarray, edit: Edit) -> float | None:
    """PSNR (dB) against the edited render outside the changed region (None for background edits)."""
    if edit.kind == "background":
        return None
    keep = ~edit.changed_mask(SIZE)
    return psnr(image[keep] / 255.0, render(edit.after, SIZE).image[keep] / 255.0)


# ---------------------------------------------------------------- the run

def edits_of(kind: str, count: int, offset: int = 0) -> list[Edit]:
    """Edits of ``kind`` of held-out scenes offset … offset + count − 1 (scenes that allow no such edit skipped)."""
    found = []
    for s in eval_seeds(count, offset):
        try:
            found.append(make_edit(make_sample(s).scene, kind, np.random.default_rng([s, 3])))
        except InvalidParameter:
            continue
    return found


def run(backbone, analyser: Analyser, config: EditBenchConfig = EditBenchConfig(), progress=None) -> dict:
    """The report (module docstring): per kind, model / floor / ceiling success and background PSNR; Visii."""
    from ..tasks.instruct import instruct

    config.check()
    report = {"config": asdict(config), "kinds": {}}
    started = time.perf_counter()
    done = 0
    for kind in EDIT_KINDS:
        edits = edits_of(kind, config.scenes)
        images = []
        for i, e in enumerate(edits):
            before = Image.fromarray(render(e.before, SIZE).image)
            images.append(np.asarray(instruct(backbone, before, config.request(e.instruction, i))[0].image
                                     .convert("RGB")))
            done += 1
            if progress is not None:
                progress(done)
        report["kinds"][kind] = judge_edits(analyser, edits, images, through_vae(backbone, edits))
    report["seconds"] = round(time.perf_counter() - started, 1)
    if config.visii_scenes:
        report["visii"] = visii_figures(backbone, analyser, config)
    return report


def through_vae(backbone, edits: list[Edit]) -> list[np.ndarray]:
    """The world's edited renders encoded by ``backbone``'s VAE (posterior mode) and decoded, as 8-bit images: the
    round trip whose PSNR the VAE's own figure reports (training/vae.py)."""
    from ..training.vae import round_trip

    return round_trip(backbone.vae, [render(e.after, SIZE).image for e in edits])


def judge_edits(analyser: Analyser, edits: list[Edit], images: list[np.ndarray],
                vae: list[np.ndarray] | None = None) -> dict:
    """{"edits": n, "success"/"background_psnr_db": {model, floor, ceiling[, vae]}} of ``images`` made for
    ``edits`` (``vae``: the edited renders through the model's VAE), and the model's figures edit by edit ("each":
    the same scenes in every run, so two models can be paired)."""
    rows = {"model": images, "floor": [render(e.before, SIZE).image for e in edits],
            "ceiling": [render(e.after, SIZE).image for e in edits]}
    if vae is not None:
        rows["vae"] = vae
    out = {"edits": len(edits), "success": {}, "background_psnr_db": {}}
    for name, pictures in rows.items():
        if not pictures:
            out["success"][name] = out["background_psnr_db"][name] = None
            continue
        analyses = analyser.analyse(np.stack(pictures))
        success = [bool(edit_success(a, p, e)) for a, p, e in zip(analyses, pictures, edits)]
        each = [background_psnr(p, e) for p, e in zip(pictures, edits)]
        out["success"][name] = float(np.mean(success))
        out["background_psnr_db"][name] = mean_psnr(each)
        if name == "model":
            out["each"] = {"success": success, "background_psnr_db": [None if x is None else round(x, 3) for x in each]}
    return out


def mean_psnr(values: list[float | None]) -> float | None:
    """The mean of the finite PSNRs (inf where every one is; None where none is defined: background edits)."""
    values = [x for x in values if x is not None]
    finite = [x for x in values if np.isfinite(x)]
    return None if not values else (float(np.mean(finite)) if finite else float("inf"))


PAIR_GROUPS = (("neither", False, False), ("both", True, True), ("only A", True, False), ("only B", False, True))


def paired(a: dict, b: dict) -> dict:
    """Two reports of the same edits (same scenes, seeds and settings), edit by edit: per kind and group of
    PAIR_GROUPS (which model's edit the judge calls a success), the count and each model's mean finite background
    PSNR. A model that does nothing keeps the whole scene, so the groups tell what a model loses while failing (copying
    lost, or paint in the wrong place) from what its successful edits cost."""
    out = {}
    for kind, ra in a["kinds"].items():
        ea, eb = ra.get("each"), b["kinds"][kind].get("each")
        if ea is None or eb is None:
            raise InvalidParameter("report", "reports with edit-by-edit figures (bench edits since 2026-12-07)",
                                   kind)
        if len(ea["success"]) != len(eb["success"]):
            raise InvalidParameter("report", "two reports of the same edits (the same --scenes)",
                                   f"{kind}: {len(ea['success'])} vs {len(eb['success'])} edits")
        out[kind] = {}
        for name, sa, sb in PAIR_GROUPS:
            rows = [i for i, (x, y) in enumerate(zip(ea["success"], eb["success"])) if x == sa and y == sb]
            out[kind][name] = {"edits": len(rows), "A": _finite_mean(ea, rows), "B": _finite_mean(eb, rows)}
    return out


def _finite_mean(each: dict, rows: list[int]) -> float | None:
    """``mean_psnr`` of ``rows`` as a report file holds them (infinity written "inf"), None unless some is finite."""
    mean = mean_psnr([None if x is None else float(x) for x in (each["background_psnr_db"][i] for i in rows)])
    return None if mean is None or np.isinf(mean) else mean


def visii_figures(backbone, analyser: Analyser, config: EditBenchConfig) -> dict:
    """Per kind of VISII_KINDS: an instruction learnt from one pair of a first held-out scene and applied to
    ``visii_scenes`` other scenes, judged beside the written instruction on the same scenes."""
    from ..tasks.instruct import instruct
    from ..tasks.visii import VisiiRequest, learn_instruction

    out = {}
    for kind in VISII_KINDS:
        example = visii_example(kind)
        targets = _same_edit(example, config.visii_scenes)
        pair = (Image.fromarray(render(example.before, SIZE).image), Image.fromarray(render(example.after, SIZE).image))
        learned = learn_instruction(backbone, [pair], VisiiRequest(steps=config.visii_steps, seed=0))
        learned.info["sha256"] = hashlib.sha256(learned.states.cpu().numpy().tobytes()).hexdigest()  # (no file)
        shown = {"text": [], "visii": []}
        for i, e in enumerate(targets):
            before = Image.fromarray(render(e.before, SIZE).image)
            shown["text"].append(np.asarray(instruct(backbone, before, config.request(e.instruction, i))[0]
                                            .image.convert("RGB")))
            request = config.request("", i, learned=learned.info["sha256"])
            shown["visii"].append(np.asarray(instruct(backbone, before, request, learned=learned)[0].image
                                             .convert("RGB")))
        judged = {name: judge_edits(analyser, targets, pictures) for name, pictures in shown.items()}
        out[kind] = {"instruction": example.instruction, "scenes": len(targets),
                     "learn_seconds": learned.info["seconds"], "iterations": config.visii_steps,
                     "text": judged["text"], "visii": judged["visii"]}
    return out


def visii_example(kind: str) -> Edit:
    """The first held-out edit of ``kind`` (VISII_KINDS) whose words would mean the same on another scene: any
    background edit; a recolour of a scene's only object of its shape (the world names it by its shape alone)."""
    for edit in edits_of(kind, 200, offset=20_000):
        if kind == "background":
            return edit
        shape = edit.before.objects[edit.target].shape
        if [o.shape for o in edit.before.objects].count(shape) == 1:
            return edit
    raise InvalidParameter("kind", "an edit kind with a scene-independent instruction", kind)


def _same_edit(example: Edit, count: int) -> list[Edit]:
    """The example's edit, word for word (``visii_example``), on other held-out scenes where it means the same and
    changes something: its background on scenes with another background; its recolour on scenes with exactly one
    object of the example's shape, not already of the new colour."""
    found = []
    for s in eval_seeds(count * 20, offset=30_000):
        if len(found) == count:
            break
        scene = make_sample(s).scene
        if example.kind == "background":
            if scene.background != example.after.background:
                found.append(Edit("background", scene, replace(scene, background=example.after.background),
                                  example.instruction, None))
            continue
        new = example.after.objects[example.target]
        same = [k for k, o in enumerate(scene.objects) if o.shape == new.shape]
        if len(same) != 1 or scene.objects[same[0]].colour == new.colour:
            continue
        k = same[0]
        objects = tuple(replace(o, colour=new.colour) if j == k else o for j, o in enumerate(scene.objects))
        found.append(Edit("recolour", scene, replace(scene, objects=objects), example.instruction, k))
    return found


def markdown(report: dict) -> str:
    """The report as tables: per kind, then Visii."""
    def cell(x):
        return "–" if x is None else ("inf" if x == float("inf") else f"{x:.3g}")

    lines = ["| edit | n | success model / floor / ceiling (/ through the VAE) | background PSNR dB model (/ the "
             "edited render through the VAE) |", "|---|---|---|---|"]
    for kind, r in report["kinds"].items():
        s, b = r["success"], r["background_psnr_db"]
        vae = (f" / {cell(s['vae'])}", f" / {cell(b['vae'])}") if "vae" in s else ("", "")  # (older reports: none)
        lines.append(f"| {kind} | {r['edits']} | {cell(s['model'])} / {cell(s['floor'])} / {cell(s['ceiling'])}"
                     f"{vae[0]} | {cell(b['model'])}{vae[1]} |")
    for kind, r in report.get("visii", {}).items():
        lines += ["", f"Visii, {kind} learnt from one pair ({r['instruction']!r}, {r['iterations']} iterations, "
                      f"{r['learn_seconds']} s) on {r['scenes']} other scenes:",
                  "| instruction | success model / floor / ceiling | background PSNR dB |", "|---|---|---|"]
        for name in ("text", "visii"):
            s = r[name]["success"]
            lines.append(f"| {name} | {cell(s['model'])} / {cell(s['floor'])} / {cell(s['ceiling'])} | "
                         f"{cell(r[name]['background_psnr_db']['model'])} |")
    return "\n".join(lines) + "\n"

