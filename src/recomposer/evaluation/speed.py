"""The speed benchmark: what recomposer's machinery costs, measured side by side with plain diffusers.

Figures (all in one process; every timing is the median of ``repeats`` runs after a warm-up run):
1. per image: ``generate`` vs diffusers' ``StableDiffusionPipeline`` on the same components, prompt,
   negative prompt, scheduler, steps, guidance, size and seed;
2. the loop vs the UNet forwards it performs: ``sample`` with classifier-free guidance, each run's time
   inside ``UNet.forward`` summed by a timing wrapper (the ratio - 1 is the loop's overhead);
3. multi-term guidance (base + 2 terms, base + 3 terms) vs one raw UNet forward of batch 3 / 4;
4. decomposition throughput (images/s) of every kind ``decompose`` makes with no extra model, one by one and
   all together, on shapes-world 64 px renders;
5. a training step: ``train`` + ``BaseTraining`` vs a diffusers step written out by hand on the same UNet
   (VAE encode -> DDPM add_noise -> UNet -> MSE -> backward -> clip -> AdamW). Ours is the interval between
   consecutive loss.jsonl lines (everything ``train`` does per step, logging included); theirs is each step
   timed directly; the first step of each run (optimizer state allocation) is not counted. Runs go
   ours, theirs, theirs, ours (ABBA, so linear drift cancels) with ceil(repeats / 2) timed steps each;
6. shapes-world scenes/s (``make_sample`` at 64 px, all ground truth).
A / B timings are interleaved (round i runs A first when i is even, B first when odd), so drift in clock
speed or a neighbour's load falls on both alike; a ratio is always median(A) / median(B) of the seconds
reported beside it. On a GPU every timed call is bracketed by ``torch.cuda.synchronize``.

Models: on the CPU and in quick mode the tiny SD-shaped backbone (models/tiny.py) at ``size`` px; on CUDA an
SD-1.5-shaped UNet, VAE and CLIP text encoder in fp16 at 512 px (training: fp32 weights, fp16 autocast).
Weights are random: compute is what is measured. Full mode adds the bundled Composer model end to end.
"""

import math
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import validation as v
from ..errors import InvalidParameter
from ..models.backbone import Backbone

DEVICES = ("auto", "cpu", "cuda")
PROMPT, NEGATIVE = "a red circle above a blue square", "blurry"
SCHEDULER, GUIDANCE = "euler", 7.5  # figures 1-2: sampler and classifier-free guidance scale
SD15_SIZE = 512  # the SD-1.5-shaped model's native side
LR = 1e-4  # AdamW learning rate of both training steps
CPU = torch.device("cpu")


@dataclass(frozen=True)
class SpeedConfig:
    repeats: int = 7  # timed runs per figure, after one warm-up; the figure is their median (at least 5)
    steps: int = 20  # sampler steps per image
    size: int = 64  # image side for the tiny backbone (the SD-1.5-shaped CUDA model runs at 512)
    threads: int = 1  # torch CPU threads for the whole run (restored afterwards)
    quick: bool = False  # CI mode: tiny backbone on any device, smaller workloads, no bundled model
    device: str = "auto"  # "auto" (cuda if available, else cpu), "cpu" or "cuda"
    images: int = 16  # shapes-world renders per decomposition run
    scenes: int = 200  # shapes-world scenes per world run
    train_batch: int = 4  # images per training step

    def check(self) -> "SpeedConfig":
        v.integer("repeats", self.repeats, 5)
        v.integer("steps", self.steps, 1, 1000)
        v.multiple_of("size", self.size, 8, 16, 1024)
        v.integer("threads", self.threads, 1, 256)
        if not isinstance(self.quick, bool):
            raise InvalidParameter("quick", "True or False", self.quick)
        v.choice("device", self.device, DEVICES)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise InvalidParameter("device", "'cpu' or 'auto' (no CUDA device is available)", self.device)
        v.integer("images", self.images, 1)
        v.integer("scenes", self.scenes, 1)
        v.integer("train_batch", self.train_batch, 1, 64)
        return self

    @property
    def torch_device(self) -> torch.device:
        return torch.device("cuda" if self.device == "cuda" or (
            self.device == "auto" and torch.cuda.is_available()) else "cpu")


QUICK_SPEED = SpeedConfig(repeats=5, steps=4, size=32, quick=True, images=2, scenes=20, train_batch=2)


# --- timing rules --------------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queue to drain (a no-op on the CPU, whose work is done when a call returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def elapsed(fn: Callable[[], object], device: torch.device = CPU) -> float:
    """Seconds of one call; on a GPU the queue is drained before and after, so the time is the call's work."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], repeats: int, device: torch.device = CPU) -> float:
    """Median seconds of ``repeats`` calls (warm up first: a first call pays for lazy initialisation)."""
    return statistics.median(elapsed(fn, device) for _ in range(repeats))


def side_by_side(a: Callable[[], object], b: Callable[[], object], repeats: int,
                 device: torch.device = CPU) -> tuple[list[float], list[float]]:
    """Seconds of ``repeats`` calls of a and of b, after one warm-up call each, in interleaved rounds:
    a first in even rounds, b first in odd ones."""
    a(), b()
    times_a, times_b = [], []
    for i in range(repeats):
        pairs = [(a, times_a), (b, times_b)]
        for fn, times in pairs if i % 2 == 0 else pairs[::-1]:
            times.append(elapsed(fn, device))
    return times_a, times_b


@contextmanager
def timed_forwards(module: torch.nn.Module, device: torch.device):
    """Time every ``module.forward`` call inside the block; yields a list whose last entry accumulates the
    seconds (append 0.0 to start a new tally)."""
    inner, tally = module.forward, [0.0]

    def forward(*args, **kwargs):
        synchronize(device)
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        synchronize(device)
        tally[-1] += time.perf_counter() - start
        return out

    module.forward = forward  # an instance attribute shadows the class's forward
    try:
        yield tally
    finally:
        del module.forward


def figure(what: str, value: float, unit: str, runs: int, how: str, baseline: float | None = None,
           against: str | None = None, goal: tuple[str, float] | None = None) -> dict:
    """One row of the report. ``ratio`` = value / baseline; ``goal`` ("<=" or ">=", bound) applies to the
    ratio when there is a baseline, else to the value."""
    ratio = None if baseline is None else value / baseline
    headline = value if ratio is None else ratio
    met = None if goal is None else (headline <= goal[1] if goal[0] == "<=" else headline >= goal[1])
    return {"what": what, "value": value, "unit": unit, "baseline": baseline, "against": against, "ratio": ratio,
            "goal": None if goal is None else f"{'ratio' if ratio is not None else 'value'} {goal[0]} {goal[1]:g}",
            "met": met, "runs": runs, "how": how}


# --- components ----------------------------------------------------------------------------------------------

def sd15_shaped(device: torch.device) -> Backbone:
    """Random weights in Stable Diffusion 1.5's shapes, fp32: UNet (320, 640, 1280, 1280), 2 layers per block,
    cross-attention 768, 8 heads (diffusers' defaults); SD's VAE; a CLIP ViT-L/14-sized text encoder (12 layers,
    768 wide, quick GELU) over the offline byte-level tokenizer (tiny.py; SD's BPE vocabulary is not needed
    to measure compute)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..models.tiny import SCHEDULER_CONFIG, byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    with torch.random.fork_rng(devices=[]), torch.device(device):  # initialised on the device itself
        torch.manual_seed(0)
        unet = UNet2DConditionModel(sample_size=SD15_SIZE // 8, cross_attention_dim=768)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=SD15_SIZE,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_attention_heads=12,
            num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0,
            eos_token_id=1, pad_token_id=1))
    return Backbone(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                    scheduler_config=dict(SCHEDULER_CONFIG)).to(device, torch.float32)


def describe(backbone: Backbone, name: str) -> dict:
    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    unet, vae, text = backbone.unet.config, backbone.vae.config, backbone.text_encoder.config
    return {"name": name, "weights": "random",
            "unet": {"block_out_channels": list(unet.block_out_channels), "layers_per_block": unet.layers_per_block,
                     "cross_attention_dim": unet.cross_attention_dim, "parameters": count(backbone.unet)},
            "vae": {"block_out_channels": list(vae.block_out_channels), "parameters": count(backbone.vae)},
            "text_encoder": {"hidden_size": text.hidden_size, "layers": text.num_hidden_layers,
                             "parameters": count(backbone.text_encoder)}}


# --- 1-3: the loop --------------------------------------------------------------------------------------------

def generation_figures(b: Backbone, config: SpeedConfig, size: int) -> dict:
    """Figures 1-3 on backbone ``b`` (already on its device and dtype) at ``size`` px."""
    from diffusers.utils import logging

    logging.set_verbosity_error()
    return {"per_image": per_image_figure(b, config, size), "loop_vs_unet": loop_figure(b, config, size),
            **{f"guidance_{terms + 1}_sets": guidance_figure(b, config, size, terms) for terms in (2, 3)}}


def per_image_figure(b: Backbone, config: SpeedConfig, size: int) -> dict:
    """Figure 1: one image, prompt to PIL, by ``generate`` and by diffusers' pipeline on the same modules."""
    from diffusers import StableDiffusionPipeline

    from ..schedulers import make_scheduler
    from ..tasks.generate import GenerateRequest, generate

    steps = config.steps
    request = GenerateRequest(PROMPT, negative=NEGATIVE, scheduler=SCHEDULER, steps=steps, guidance=GUIDANCE, seed=0,
                              width=size, height=size)
    pipe = StableDiffusionPipeline(vae=b.vae, unet=b.unet, text_encoder=b.text_encoder, tokenizer=b.tokenizer,
                                   scheduler=make_scheduler(SCHEDULER, b.scheduler_config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ours, theirs = side_by_side(
        lambda: generate(b, request),
        lambda: pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=GUIDANCE,
                     width=size, height=size, generator=[torch.Generator().manual_seed(0)], output_type="pil"),
        config.repeats, b.device)
    return figure(f"one image ({size} px, {steps} steps, CFG): recomposer generate", statistics.median(ours), "s",
                  config.repeats, "prompt to PIL image both ways, same components, scheduler and seed; "
                  "interleaved runs", statistics.median(theirs), "diffusers StableDiffusionPipeline", ("<=", 1.02))


def loop_figure(b: Backbone, config: SpeedConfig, size: int) -> dict:
    """Figure 2: ``sample`` with classifier-free guidance vs the time spent inside the UNet during those runs."""
    from ..conditions import Caption, ConditionSet
    from ..denoiser import BackboneDenoiser
    from ..guidance import cfg, guided
    from ..sampling import noise, sample
    from ..schedulers import make_scheduler

    plan = cfg(ConditionSet.of(Caption(PROMPT)), GUIDANCE, ConditionSet.of(Caption(NEGATIVE)))
    denoise, inputs = guided(BackboneDenoiser(b, (size, size)), plan, 1)
    latent = (1, b.latent_channels, size // b.vae_factor, size // b.vae_factor)

    def loop():
        scheduler = make_scheduler(SCHEDULER, b.scheduler_config)
        scheduler.set_timesteps(config.steps, device=b.device)
        generators = [torch.Generator().manual_seed(0)]
        x = noise(latent, generators, b.device, b.dtype) * scheduler.init_noise_sigma
        return sample(denoise, inputs, scheduler, x, generators)

    loop()  # warm-up
    loop_times = []
    with timed_forwards(b.unet, b.device) as in_unet:
        for _ in range(config.repeats):
            in_unet.append(0.0)
            loop_times.append(elapsed(loop, b.device))
    return figure(f"the sampling loop ({config.steps} steps, CFG batch 2)", statistics.median(loop_times), "s",
                  config.repeats, "each run's time inside UNet.forward summed by a timing wrapper, from the same "
                  "runs; ratio - 1 is the loop's overhead", statistics.median(in_unet[1:]),
                  "the UNet forwards it performs", ("<=", 1.05))


def guidance_figure(b: Backbone, config: SpeedConfig, size: int, terms: int) -> dict:
    """Figure 3: one guided step with a base and ``terms`` terms (all in one batched forward) vs the bare UNet
    on the same batch of terms + 1, stacked beforehand."""
    from ..conditions import Caption, ConditionSet
    from ..denoiser import BackboneDenoiser, Step
    from ..guidance import GuidancePlan, Term, guided

    captions = ("a red circle", "a blue square", "a yellow star")[:terms]
    plan = GuidancePlan(ConditionSet(), tuple(Term(ConditionSet.of(Caption(c)), 2.0) for c in captions))
    denoise, inputs = guided(BackboneDenoiser(b, (size, size)), plan, 1)
    latent = (1, b.latent_channels, size // b.vae_factor, size // b.vae_factor)
    x = torch.randn(latent, generator=torch.Generator().manual_seed(0)).to(b.device, b.dtype)
    t = torch.tensor(500, device=b.device)
    step = Step(0, config.steps, 0, config.steps, t)
    context = b.encode_text(["", *captions])  # (terms + 1, T, D)
    xs = x.repeat(terms + 1, 1, 1, 1)  # (terms + 1, C, h, w)

    @torch.no_grad()
    def raw():
        return b.unet(xs, t, encoder_hidden_states=context, return_dict=False)[0]

    @torch.no_grad()
    def ours():
        return denoise(x, step, inputs)

    guided_t, raw_t = side_by_side(ours, raw, config.repeats, b.device)
    return figure(f"one guided step, base + {terms} terms", statistics.median(guided_t), "s", config.repeats,
                  "guided denoiser call (one batched forward plus the weighted sum) vs the bare UNet call on "
                  "pre-stacked inputs; interleaved runs", statistics.median(raw_t),
                  f"one raw batch-{terms + 1} UNet forward", ("<=", 1.1))


# --- 4 and 6: the shapes world and its decomposition ---------------------------------------------------------

def decomposition_figures(config: SpeedConfig) -> dict:
    """Figure 4: images/s per kind that ``decompose`` makes with its default backends (no caption, mask or
    extra model), and for all of them in one call."""
    from PIL import Image

    from ..decompose.decomposer import decompose
    from ..world.dataset import eval_seeds, make_sample

    images = [Image.fromarray(make_sample(seed).rendered.image) for seed in eval_seeds(config.images)]
    kinds = tuple(decompose(images[0]).conditions)  # what the defaults make: skipped kinds are not in it
    figures = {}
    for name, wanted in [(kind, (kind,)) for kind in kinds] + [("all", kinds)]:
        run = partial(decompose_each, images, wanted)
        run()  # warm-up
        seconds = median_time(run, config.repeats)
        figures[f"decompose_{name}"] = figure(
            f"decomposition, {name if name != 'all' else 'all kinds in one call'}", len(images) / seconds,
            "images/s", config.repeats, f"per run {len(images)} held-out 64 px renders; default backends, CPU; "
            f"the kinds made with no caption, mask or extra model: {', '.join(kinds)}")
    return figures


def decompose_each(images: list, kinds: tuple[str, ...]) -> list:
    from ..decompose.decomposer import decompose

    return [decompose(image, kinds) for image in images]


def world_figure(config: SpeedConfig) -> dict:
    """Figure 6: shapes-world scenes/s at 64 px with all ground truth."""
    from ..world.dataset import make_sample
    from ..world.render import canonical_blob
    from ..world.shapes import SHAPES

    for shape in SHAPES:  # a one-off per process: each shape's canonical ellipse fit
        canonical_blob(shape)

    def run():
        return [make_sample(seed) for seed in range(config.scenes)]

    run()  # warm-up
    seconds = median_time(run, config.repeats)
    return {"world_scenes": figure("shapes world, 64 px, all ground truth", config.scenes / seconds, "scenes/s",
                                   config.repeats, f"make_sample over seeds 0..{config.scenes - 1} per run, CPU",
                                   goal=(">=", 300))}


# --- 5: a training step --------------------------------------------------------------------------------------

def training_figure(b: Backbone, config: SpeedConfig, size: int) -> dict:
    """Figure 5 on backbone ``b`` (fp32 weights). On CUDA both sides use fp16 autocast with loss scaling."""
    from ..training import TrainConfig, read_loss_log, train
    from ..training.base import BaseTraining, base_step, encode_batch
    from ..training.vae import world_images

    device = b.device
    fp16 = device.type == "cuda"
    raw = world_images(config.train_batch, size)(0)
    batch = encode_batch(b, raw["image"], raw["caption"])  # both sides take encoded batches (as a cache holds)
    steps = math.ceil(config.repeats / 2) + 1  # per run; the first is not timed
    model = BaseTraining(b)

    def ours() -> list[float]:
        with tempfile.TemporaryDirectory() as folder:
            train(TrainConfig(folder, steps=steps, batch_size=config.train_batch, lr=LR, checkpoint_every=steps,
                              keep_checkpoints=1, mixed_precision="fp16" if fp16 else "no", cpu=device.type == "cpu"),
                  model, base_step, lambda index: batch, resume=False)
            times = [r["time"] for r in read_loss_log(Path(folder) / "loss.jsonl")]
        return [later - earlier for earlier, later in pairwise(times)]

    def theirs() -> list[float]:
        return diffusers_training(b, batch, steps, fp16)[1:]

    ours_t, theirs_t = [], []
    for run in (ours, theirs, theirs, ours):  # ABBA
        (ours_t if run is ours else theirs_t).extend(run())
    b.unet.requires_grad_(False).eval()
    return {"train_step": figure(
        f"one training step (batch {config.train_batch}, {size} px): recomposer train + BaseTraining",
        statistics.median(ours_t), "s", len(ours_t),
        "both sides on the same encoded batch (VAE moments, caption tokens: what a world cache holds); "
        "ours: intervals between consecutive loss.jsonl lines (all train() does per step; logged to the ms); "
        "theirs: each step timed; the first step of each run not counted; runs ours, theirs, theirs, ours",
        statistics.median(theirs_t), "a diffusers training step written out by hand")}


def diffusers_training(b: Backbone, batch: dict, steps: int, fp16: bool, unet: torch.nn.Module | None = None,
                       extra: dict | None = None) -> list[float]:
    """Seconds of each of ``steps`` plain text-to-image steps on b's UNet, as diffusers' train_text_to_image.py
    does them, on an encoded batch (the VAE posterior's moments, the caption's token states and padding mask):
    sample the posterior, add noise (DDPM), UNet, MSE on ε, backward, clip to 1, AdamW. ``extra``: more UNet
    keyword arguments (a Composer-attached UNet's class_labels)."""
    from diffusers import DDPMScheduler

    device = b.device
    noise_scheduler = DDPMScheduler.from_config(b.scheduler_config)
    unet = (unet or b.unet).requires_grad_(True).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=LR, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    mean, std = batch["latent_mean"].to(device), batch["latent_std"].to(device)
    context = batch["tokens"].to(device)
    mask = batch["token_mask"].to(device) if "token_mask" in batch else None

    def step():
        with torch.autocast(device.type, torch.float16, enabled=fp16):
            latents = (mean + std * torch.randn_like(mean)) * b.vae.config.scaling_factor
            noise = torch.randn_like(latents)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(latents),), device=device)
            prediction = unet(noise_scheduler.add_noise(latents, noise, t), t, context, encoder_attention_mask=mask,
                              **(extra or {})).sample
            loss = F.mse_loss(prediction.float(), noise.float())
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return [elapsed(step, device) for _ in range(steps)]


# --- the bundled model, end to end (full mode) ---------------------------------------------------------------

def bundled_figures(config: SpeedConfig, device: torch.device) -> tuple[dict, dict]:
    """Per image with the bundled Composer model (fp32): caption only, and a held-out render decomposed into
    five kinds plus its caption (decomposition included). Returns (figures, setup notes)."""
    from PIL import Image

    from ..conditions import Caption, ConditionSet
    from ..tasks.composer import ComposeRequest, compose, load_composer
    from ..world.dataset import eval_seeds, make_sample

    start = time.perf_counter()
    model = load_composer(device=device)
    loaded = time.perf_counter() - start
    scene = make_sample(eval_seeds(1)[0])
    image = Image.fromarray(scene.rendered.image)
    kinds = ("image_embedding", "palette", "sketch", "instances", "intensity")
    request = ComposeRequest(steps=config.steps, scheduler="dpmpp_2m", guidance=3.0)
    # issue 5's goal: a 64 px image in <= 2 s at 20 steps on one CPU thread
    goal = ("<=", 2.0) if (config.steps, device.type, config.threads) == (20, "cpu", 1) else None
    runs = {
        "bundled_caption": (f"bundled Composer, caption only ({model.size} px, {config.steps} steps)", goal,
                            lambda: compose(model, ConditionSet.of(Caption(scene.caption)), request)),
        "bundled_six_conditions": (f"bundled Composer, image to six conditions to image ({config.steps} steps)", None,
                                   lambda: compose(model, model.decompose(image, kinds, caption=scene.caption),
                                                   request)),
    }
    figures = {}
    for name, (what, goal, fn) in runs.items():
        fn()  # warm-up
        figures[name] = figure(what, median_time(fn, config.repeats, device), "s", config.repeats,
                               "model loaded beforehand; dpmpp_2m, guidance 3", goal=goal)
    return figures, {"load_seconds": loaded, "size": model.size}


# --- the report ----------------------------------------------------------------------------------------------

def run(config: SpeedConfig = SpeedConfig()) -> dict:
    """Every figure above as a JSON-ready dict: {"setup": {...}, "figures": {name: figure(...)}}."""
    import diffusers

    from ..models.tiny import tiny_sd

    config.check()
    device = config.torch_device
    sd15 = device.type == "cuda" and not config.quick
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    size = SD15_SIZE if sd15 else config.size
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with torch.random.fork_rng(devices=[]):  # train() reseeds the global RNG; the caller's is kept
            backbone = sd15_shaped(device) if sd15 else tiny_sd(sample_size=size).to(device, torch.float32)
            model = describe(backbone, "SD-1.5-shaped" if sd15 else "tiny SD-shaped (models/tiny.py)")
            training = training_figure(backbone, config, size)  # fp32 weights, before the cast below
            figures = {**generation_figures(backbone.to(device, dtype), config, size),
                       **decomposition_figures(config), **training, **world_figure(config)}
            bundled = None
            if not config.quick:
                more, bundled = bundled_figures(config, device)
                figures.update(more)
    finally:
        torch.set_num_threads(threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    setup = {"device": str(device), "device_name": name, "dtype": str(dtype).removeprefix("torch."),
             "threads": config.threads, "torch": torch.__version__, "diffusers": diffusers.__version__, "size": size,
             "steps": config.steps, "repeats": config.repeats, "scheduler": SCHEDULER, "guidance": GUIDANCE,
             "quick": config.quick, "config": asdict(config), "model": model, "bundled": bundled,
             "cpu_work": "decomposition and the shapes world run on the CPU whatever the device"}
    return {"setup": setup, "figures": figures}


def _number(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def table(figures: dict) -> list[str]:
    """Markdown table lines: each figure, what it is compared with, their ratio and the goal."""
    lines = ["| figure | ours | against | baseline | ratio | goal | runs |", "|---|---|---|---|---|---|---|"]
    for f in figures.values():
        baseline = "–" if f["baseline"] is None else f"{_number(f['baseline'])} {f['unit']}"
        ratio = "–" if f["ratio"] is None else f"{f['ratio']:.3f}x"
        goal = "–" if f["goal"] is None else f"{f['goal']} {'✓' if f['met'] else '✗'}"
        lines.append(f"| {f['what']} | {_number(f['value'])} {f['unit']} | {f['against'] or '–'} | {baseline} | "
                     f"{ratio} | {goal} | {f['runs']} |")
    return lines


def markdown(report: dict) -> str:
    """The report for people: the setup in a sentence, the table of figures, then how each was measured."""
    s, figures = report["setup"], report["figures"]
    lines = ["# Speed report", "",
             f"{s['device_name']} ({s['device']}, {s['dtype']}, {s['threads']} CPU thread(s)); torch {s['torch']}, "
             f"diffusers {s['diffusers']}; model: {s['model']['name']}, random weights, {s['size']} px; "
             f"{s['steps']} steps ({s['scheduler']}, guidance {s['guidance']:g}); each figure the median of its "
             "timed runs after a warm-up" + (" (quick mode)" if s["quick"] else "") + ".", "", *table(figures),
             "", "How they are measured:", ""]
    methods: dict[str, list[str]] = {}
    for f in figures.values():
        methods.setdefault(f["how"], []).append(f["what"])
    lines += [f"- {'; '.join(whats)}: {how}." for how, whats in methods.items()]
    if s.get("bundled"):
        lines += ["", f"The bundled model loaded in {s['bundled']['load_seconds']:.2f} s (not in its figures)."]
    return "\n".join(lines) + "\n"
