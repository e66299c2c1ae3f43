"""The controllability benchmark: does a Composer model obey each condition, alone, in pairs and mixed?

For each scene of a fixed held-out set (``eval_seeds``: the training stream never draws them), every
condition is taken from the world's ground truth at the model's size, and images are generated under
    floor                 no condition at all (what the judges score by chance)
    single                each condition alone
    pairs                 realistic same-scene pairs (PAIRS)
    mixed                 conditions taken from two different scenes (MIXED: first from scene i, second
                          from scene i + 1)
and judged (judges.py; the analyser reads every image at 64 px) against the scene each condition came
from. The ceiling is the same judges on the scenes' own renders: what a perfect generator would score; the
"vae" row the same renders through the model's VAE (encoded, decoded): what a perfect generator that draws in
this VAE's latents would score, so the gap between the two is the VAE's, not the UNet's.
Scenes with held-out attribute combinations (colour × shape, shape × style, nesting never seen in
training) are generated from their captions and reported apart. Realism is the Fréchet distance of
analyser features against a separate set of renders. Each generation is seeded by its scene, so the
floor, single and paired images of a scene share their starting noise.
"""

import time
from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .. import validation as v
from ..conditions import Caption, ConditionSet, Depth, Instances, Palette, Sketch
from ..decompose.intensity import intensity
from ..decompose.masking import box_mask, masked_image
from ..decompose.metrics import EdgeCounts
from ..models.controlnet import hint_picture
from ..requests import CONTROL_DEFAULTS, ControlRequest, check_control
from ..tasks.composer import ComposeRequest, ComposerModel, compose, psnr_outside
from ..tasks.generate import ControlInput
from ..training.vae import round_trip
from ..world.dataset import WorldSample, eval_seeds, make_sample
from ..world.scene import WorldConfig
from . import judges
from ..models.analyser import SIZE, Analyser

KINDS = ("caption", "image_embedding", "palette", "sketch", "instances", "depth", "intensity", "masked_image")
PAIRS = (("sketch", "palette"), ("instances", "caption"), ("depth", "caption"), ("intensity", "palette"),
         ("masked_image", "caption"))
MIXED = (("sketch", "palette"), ("depth", "image_embedding"), ("instances", "palette"), ("caption", "palette"))
SETTINGS = ("floor", "single", "pairs", "mixed", "ceiling", "vae")  # a report's columns, in order
HEADLINE = {"caption": "colour_accuracy", "image_embedding": "cosine", "palette": "intersection", "sketch": "edge_f1",
            "instances": "miou", "depth": "spearman", "intensity": "psnr_db", "masked_image": "psnr_outside_db"}
# offsets into the evaluation seeds, so that the three sets never share a scene
HELD_OUT_OFFSET, REFERENCE_OFFSET = 50_000, 100_000


@dataclass(frozen=True)
class BenchConfig:
    scenes: int = 40  # held-out scenes, each generated under every setting
    held_out_scenes: int = 40  # scenes with a held-out attribute combination (caption only)
    reference: int = 200  # renders the Fréchet distances are measured against
    steps: int = 20  # sampler steps per image
    scheduler: str = "dpmpp_2m"  # the sampler (compose's default)
    guidance: float = 3.0  # Composer guidance w
    guidance_rescale: float = 0.0  # φ of the guidance rescale (guidance.py; 0: none)
    guidance_interval: tuple[float, float] = (0.0, 1.0)  # shares of the steps inside which guidance holds
    examples: int = 4  # scenes shown in the example grid
    control_scale: float = CONTROL_DEFAULTS["bundled"][0]  # the conditioning scale of the ControlNet's rows
    control_mode: str = CONTROL_DEFAULTS["bundled"][1]  # and their mode (models/controlnet.py)

    def check(self) -> "BenchConfig":
        v.integer("scenes", self.scenes, 2)
        v.integer("held_out_scenes", self.held_out_scenes, 1)
        v.integer("reference", self.reference, 2)
        v.integer("examples", self.examples, 0)
        self.request().check()
        check_control(self.control_scale, 0.0, 1.0, self.control_mode)
        return self

    def request(self) -> ComposeRequest:
        """The sampling settings every image of the benchmark is made with."""
        start, end = self.guidance_interval
        return ComposeRequest(scheduler=self.scheduler, steps=self.steps, guidance=self.guidance,
                              guidance_rescale=self.guidance_rescale, guidance_start=start, guidance_end=end)


QUICK = BenchConfig(scenes=2, held_out_scenes=1, reference=16, steps=6, examples=2)


@dataclass(frozen=True)
class Source:
    """One scene: its truth at 64 px (what the judges compare with) and its conditions at the model's size."""

    truth: WorldSample
    conditions: dict  # kind -> Condition
    render: Image.Image  # at the model's size
    mask: np.ndarray  # (H, W) bool at the model's size: the region the masked-image condition regenerates


def make_source(model: ComposerModel, seed: int, config: WorldConfig = WorldConfig()) -> Source:
    truth, sample = make_sample(seed, config, SIZE), make_sample(seed, config, model.size)
    r, size = sample.rendered, model.size
    render = Image.fromarray(r.image)
    rng = np.random.default_rng([seed, 2])
    x0, y0 = rng.uniform(0, size / 2, 2)
    mask = box_mask(size, size, (x0, y0, x0 + size / 2, y0 + size / 2))  # a random quarter of the image
    conditions = {"caption": Caption(sample.caption), "image_embedding": model.encoder(render),
                  "palette": Palette(sample.palette.astype(np.float32)), "sketch": Sketch(r.sketch.astype(bool)),
                  "instances": Instances(r.masks), "depth": Depth(r.depth), "intensity": intensity(r.image),
                  "masked_image": masked_image(render, mask)}
    return Source(truth, conditions, render, mask)


class Scores:
    """Raw judgements pooled per kind; ``summary`` turns them into the reported figures."""

    def __init__(self):
        self.lists = defaultdict(list)  # (kind, figure) -> values
        self.edges: EdgeCounts | None = None  # pooled over the images the sketch judge saw

    def judge(self, model: ComposerModel, analyser_reading, image: Image.Image, kind: str, source: Source) -> None:
        a, pixels, truth = analyser_reading, np.asarray(_at_64(image)), source.truth
        r = truth.rendered
        if kind == "caption":
            for name, verdicts in judges.caption_scores(a, truth.caption).items():
                self.lists[kind, f"{name}_accuracy"] += verdicts
        elif kind == "instances":
            self.lists[kind, "miou"].append(judges.instances_miou(a, r.masks))
        elif kind == "sketch":
            self.edges = (self.edges or EdgeCounts()) + judges.sketch_counts(a, r.sketch)
        elif kind == "depth":
            for name, values in judges.depth_scores(a, truth).items():
                self.lists[kind, {"spearman": "spearman", "order": "order_accuracy"}[name]] += values
        elif kind == "palette":
            self.lists[kind, "intersection"].append(judges.palette_intersection(pixels, truth.palette))
        elif kind == "intensity":
            self.lists[kind, "psnr_db"].append(judges.intensity_psnr(pixels, r.intensity))
        elif kind == "masked_image":
            self.lists[kind, "psnr_outside_db"].append(psnr_outside(image, source.render, source.mask))
        elif kind == "image_embedding":
            self.lists[kind, "cosine"].append(judges.cosine(model.encoder(image).vector,
                                                            source.conditions[kind].vector))

    def summary(self) -> dict:
        out = defaultdict(dict)
        for (kind, name), values in sorted(self.lists.items()):
            out[kind][name] = _mean(values)
            out[kind][f"{name}_n"] = len(values)
        if self.edges is not None:
            out["sketch"].update(edge_f1=round(self.edges.f1, 4), edge_precision=round(self.edges.precision, 4),
                                 edge_recall=round(self.edges.recall, 4))
        return dict(out)


def _mean(values: list) -> float | None:
    if not values:
        return None
    values = np.asarray(values, np.float64)
    if np.isinf(values).all() and (values > 0).all():
        return float("inf")
    finite = values[np.isfinite(values)]
    return round(float(np.mean(np.minimum(values, 100.0) if len(finite) < len(values) else values)), 4)


def reading(analyser: Analyser, image: Image.Image):
    """The analyser's reading of ``image`` at 64 px: what every judge reads."""
    (read,) = analyser.analyse([_at_64(image)])
    return read


def _at_64(image: Image.Image) -> Image.Image:
    image = image.convert("RGB")
    return image if image.size == (SIZE, SIZE) else image.resize((SIZE, SIZE), Image.Resampling.BOX)


def generations(config: BenchConfig, control_kinds: tuple[str, ...] = ()) -> int:
    """Images a run generates: per scene the floor, each single condition, the pairs, the mixes and each kind of
    a ControlNet; per held-out scene its floor and its caption."""
    return config.scenes * (1 + len(KINDS) + len(PAIRS) + len(MIXED) + len(control_kinds)) \
        + 2 * config.held_out_scenes


@dataclass(frozen=True)
class NetUnderTest:
    """A ControlNet judged beside the Composer adapter: a net of the world's hint kinds (``bundled:KIND``)."""

    net: object  # a diffusers ControlNetModel that fits the model's backbone
    kinds: tuple[str, ...]  # the hint kinds it reads, in the order of its kind planes

    def given(self, source: Source, k: int) -> ControlInput:
        """The net given ``source``'s hint of its k-th kind, drawn as it reads hints."""
        return ControlInput(self.net, hint_picture(source.conditions[self.kinds[k]]), None, (k, len(self.kinds)))


def run(model: ComposerModel, analyser: Analyser, config: BenchConfig = BenchConfig(),
        progress=None, controlnet: NetUnderTest | None = None) -> tuple[dict, dict]:
    """The report (JSON-ready) and the example grid's material: {(scene, setting): image} and
    {(scene, "conditions"): {kind: Condition}} for the first ``config.examples`` scenes. With ``controlnet``,
    each of its kinds is also given to the net alone (the scene's hint, no Composer condition, the same seed as
    the adapter's single-condition image) and judged the same way, with the seconds each image took."""
    config.check()
    request = config.request()
    sources = [make_source(model, seed) for seed in eval_seeds(config.scenes)]
    held = [make_source(model, seed, WorldConfig(held_out="only"))
            for seed in eval_seeds(config.held_out_scenes, HELD_OUT_OFFSET)]
    scores = defaultdict(Scores)  # setting name -> Scores
    features = defaultdict(list)  # "floor" / "conditioned" / "renders" -> analyser features
    examples = {}
    control_kinds = controlnet.kinds if controlnet is not None else ()
    total = generations(config, control_kinds)
    done = 0
    seconds = defaultdict(list)  # "composer" (single conditions) / "controlnet" -> seconds per image

    def generate(conds: ConditionSet, seed: int, timed: str | None = None, controls=()) -> Image.Image:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)
        # controls: (kind, ControlInput)
        nets = tuple(ControlRequest(f"bundled:{kind}", config.control_scale, mode=config.control_mode)
                     for kind, _ in controls)
        start = time.perf_counter()
        image = compose(model, conds, ComposeRequest(**{**asdict(request), "seed": seed, "controls": nets}),
                        controls=[given for _, given in controls])[0].image
        if timed:
            seconds[timed].append(time.perf_counter() - start)
        return image

    def judge(setting: str, image: Image.Image, parts: list[tuple[str, Source]], pool: str | None) -> None:
        read = reading(analyser, image)
        if pool:
            features[pool].append(read.features)
        for kind, source in parts:
            scores[setting].judge(model, read, image, kind, source)

    through_vae = round_trip(model.backbone.vae, [s.render for s in sources + held])
    for i, source in enumerate(sources):
        everything = [(kind, source) for kind in KINDS]
        judge("ceiling", Image.fromarray(source.truth.rendered.image), everything, "renders")
        judge("vae", Image.fromarray(through_vae[i]), everything, "vae")
        floor = generate(ConditionSet(), i)
        judge("floor", floor, everything, "floor")
        if i < config.examples:
            examples[i, "scene"], examples[i, "floor"] = source.render, floor
            examples[i, "conditions"] = source.conditions
        for kind in KINDS:
            image = generate(ConditionSet.of(source.conditions[kind]), i, "composer")
            judge("single", image, [(kind, source)], "conditioned")
            if i < config.examples:
                examples[i, kind] = image
        for k, kind in enumerate(control_kinds):
            image = generate(ConditionSet(), i, "controlnet", [(kind, controlnet.given(source, k))])
            judge("controlnet", image, [(kind, source)], "controlnet")
        for pair in PAIRS:
            image = generate(ConditionSet.of(*(source.conditions[k] for k in pair)), i)
            judge("pairs", image, [(k, source) for k in pair], "conditioned")
        other = sources[(i + 1) % len(sources)]
        for first, second in MIXED:
            image = generate(ConditionSet.of(source.conditions[first], other.conditions[second]), i)
            judge("mixed", image, [(first, source), (second, other)], "conditioned")
    for i, source in enumerate(held):
        caption = [("caption", source)]
        judge("held_out_ceiling", Image.fromarray(source.truth.rendered.image), caption, None)
        judge("held_out_vae", Image.fromarray(through_vae[len(sources) + i]), caption, None)
        judge("held_out_floor", generate(ConditionSet(), 10_000 + i), caption, None)
        judge("held_out_caption", generate(ConditionSet.of(source.conditions["caption"]), 10_000 + i), caption, None)

    references = [make_sample(s).rendered.image for s in eval_seeds(config.reference, REFERENCE_OFFSET)]
    reference = np.stack([a.features for a in analyser.analyse(np.stack(references))])
    realism = {name: {"frechet_distance": round(judges.frechet_distance(np.stack(f), reference), 3),
                      "images": len(f)} for name, f in features.items()}
    summaries = {name: s.summary() for name, s in scores.items()}
    report = {"settings": {**asdict(config), "size": model.size, "model": _describe(model),
                           "pairs": [list(p) for p in PAIRS], "mixed_sources": [list(m) for m in MIXED],
                           "scene_seeds": [int(s) for s in eval_seeds(config.scenes)],
                           "held_out_seeds": [int(s) for s in eval_seeds(config.held_out_scenes, HELD_OUT_OFFSET)]},
              "conditions": _per_condition(summaries), "held_out_caption": {
                  k: summaries[f"held_out_{k}"].get("caption", {}) for k in ("floor", "caption", "ceiling", "vae")},
              "realism": {**realism, "reference_renders": config.reference}}
    if controlnet is not None:
        report["controlnet"] = _controlnet_rows(summaries, control_kinds, seconds)
    return report, examples


def _controlnet_rows(summaries: dict, kinds: tuple[str, ...], seconds: dict) -> dict:
    """Per hint kind: the headline figure for the ControlNet and for the Composer adapter given the same hint alone,
    beside the floor, ceiling and VAE round trip of the same run; and the median seconds per image of each."""
    rows = {kind: {"figure": HEADLINE[kind], **{name: summaries.get(setting, {}).get(kind, {}).get(HEADLINE[kind])
                                                 for name, setting in (("floor", "floor"), ("composer", "single"),
                                                                       ("controlnet", "controlnet"),
                                                                       ("ceiling", "ceiling"), ("vae", "vae"))},
                   "details": summaries.get("controlnet", {}).get(kind, {})} for kind in kinds}
    return {"kinds": rows, "seconds_per_image": {name: round(float(np.median(t)), 4) for name, t in seconds.items()}}


def _per_condition(summaries: dict) -> dict:
    """kind -> {headline figure name, floor, single, pairs, mixed, ceiling, vae (headline values), details}."""
    out = {}
    for kind in KINDS:
        name = HEADLINE[kind]
        row = {"figure": name}
        for setting in SETTINGS:
            row[setting] = summaries.get(setting, {}).get(kind, {}).get(name)
        row["details"] = {setting: summaries[setting][kind] for setting in SETTINGS
                          if kind in summaries.get(setting, {})}
        out[kind] = row
    return out


def _describe(model: ComposerModel) -> dict:
    from ..models.local import weights_sha256

    return {"backbone": model.backbone.describe(), "adapter_sha256": weights_sha256(model.adapter),
            "image_encoder": model.encoder.describe()}
