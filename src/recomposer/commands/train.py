"""`recomposer train ...`: train the bundled model's parts and Composer adapters on the shapes world
(training/), each resumable from its output folder.

    recomposer train vae|encoder|base|analyser -o OUT [--parts PARTS ...]   parts of the bundled model
    recomposer train composer (--model DIR | --parts PARTS) -o OUT [--train-unet --steps N ...]
    recomposer train controlnet (--model DIR | --parts PARTS) -o OUT (--hint KIND ... | --data TRIPLETS)

Every parameter is checked before a model loads; a run resumes from OUT's newest complete checkpoint
(``--no-resume`` refuses a folder that has one). At the end the adapter is written, all or nothing, to
OUT/composer.safetensors (``ComposerAdapter.load`` reads it back).
"""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InvalidParameter, ModelError, RecomposerError
from .options import model_option

train_app = typer.Typer(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
                        help="Train adapters on the shapes world (resumable).")

Cache = Annotated[Optional[Path], typer.Option(help="A world cache (`recomposer world cache`) built for this "
                                                     "backbone: batches come from it instead of being encoded "
                                                     "every step.")]
MaxMinutes = Annotated[Optional[float], typer.Option(help="Stop (with a checkpoint) once this much wall time has "
                                                          "passed; a later run resumes.")]
MinSnr = Annotated[Optional[float], typer.Option(help="min-SNR-γ loss weighting (Hang et al. 2023), e.g. 5; "
                                                      "default: none.")]
UnetShape = Annotated[str, typer.Option(help="Shape of a fresh bundled UNet: default or attention-16.")]
Parameterisation = Annotated[str, typer.Option(help="Parameterisation of a fresh bundled UNet: epsilon, or "
                                                    "v-zero-snr (v-prediction, zero terminal SNR).")]
CaptionAlone = Annotated[float, typer.Option(help="Share of samples that keep the caption alone (every other "
                                                  "condition dropped), beside Composer's dropout; may change "
                                                  "when a run resumes (the run file records from which step).")]

Steps = Annotated[int, typer.Option(help="Optimizer updates in all (a resumed run continues up to it).")]
Size = Annotated[Optional[int], typer.Option(help="Image side in pixels: a multiple of the VAE factor (default: the "
                                                  "backbone's native size).")]
WarmupSteps = Annotated[int, typer.Option(help="Linear learning-rate warm-up steps.")]
CooldownSteps = Annotated[int, typer.Option(help="Linear learning-rate decay to 0 over the last this many steps "
                                                 "before --steps (0: none); may be set when a run resumes, to "
                                                 "finish a constant-rate run.")]
CheckpointEvery = Annotated[int, typer.Option(help="A checkpoint every this many steps (and at the end).")]
KeepCheckpoints = Annotated[int, typer.Option(help="Complete checkpoints kept (older ones are pruned).")]
Resume = Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from the newest checkpoint in --output.")]
MixedPrecision = Annotated[str, typer.Option(help="no, fp16 (GPU) or bf16.")]
Cpu = Annotated[bool, typer.Option("--cpu", help="Train on the CPU even where a GPU is present.")]

ADAPTER_FILE = "composer.safetensors"
RUN_FILE = "composer-run.json"  # the settings that must not change when a run is resumed
CONTROLNET_RUN_FILE = "controlnet-run.json"
INSTRUCT_RUN_FILE = "instruct-run.json"


@train_app.command("composer")
def train_composer(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for checkpoints, samples, loss.jsonl "
                                                                "and the adapter; a run resumes from it.")],
    model: model_option("Diffusers model directory (the frozen backbone). Default: the bundled model.") = None,
    steps: Steps = 10_000,
    batch_size: Annotated[int, typer.Option(help="Shapes-world scenes per step (per process).")] = 8,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    size: Size = None,
    warmup_steps: WarmupSteps = 0,
    cooldown_steps: CooldownSteps = 0,
    ema_decay: Annotated[Optional[float], typer.Option(help="EMA of the trained weights (what is written).")]
    = None,
    checkpoint_every: CheckpointEvery = 500,
    keep_checkpoints: KeepCheckpoints = 2,
    sample_every: Annotated[int, typer.Option(help="A sample grid every this many steps (0: never).")] = 0,
    seed: Annotated[int, typer.Option(help="Seeds the adapter's initial weights and every step's draws.")] = 0,
    resume: Resume = True,
    image_encoder: Annotated[Optional[str], typer.Option(help="A local CLIP vision model directory: trains "
                                                              "the image-embedding door too (default with "
                                                              "bundled parts: their image encoder).")] = None,
    parts: Annotated[Optional[Path], typer.Option(help="A folder of bundled-format parts (train vae/encoder/base "
                                                       "write them) to train on instead of --model; a new run "
                                                       "starts from its adapter and UNet where it has them, and "
                                                       "writes them back into it.")] = None,
    train_unet: Annotated[bool, typer.Option("--train-unet", help="Train the UNet with the adapter (the "
                                                                  "paper's setting); with --parts and no "
                                                                  "unet part yet, from a fresh UNet.")] = False,
    mixed_precision: MixedPrecision = "no",
    cpu: Cpu = False,
    cache: Cache = None, max_minutes: MaxMinutes = None, min_snr_gamma: MinSnr = None,
    unet_shape: UnetShape = "default", parameterisation: Parameterisation = "epsilon",
    caption_alone: CaptionAlone = 0.0,
    permute_instances: Annotated[bool, typer.Option("--permute-instances", help="Give each sample's instances "
                                                                              "randomly permuted colour codes (a "
                                                                              "layout's colours then never say an "
                                                                              "object's colour); may change when a "
                                                                              "run resumes.")] = False,
    foreground_weight: Annotated[float, typer.Option("--foreground-weight", metavar="λ",
                                                     help="Weigh each latent position of the loss 1 + λ·(its share "
                                                          "covered by objects), so that small objects' colours and "
                                                          "shapes count (0: off); may change when a run "
                                                          "resumes.")] = 0.0,
) -> None:
    """Train a Composer adapter on a frozen backbone with the shapes world's exact conditions."""
    from .. import validation as v
    from ..training import TrainConfig

    # 1. Every parameter, before anything loads.
    config = TrainConfig(output_dir=output, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                         cooldown_steps=cooldown_steps, checkpoint_every=checkpoint_every,
                         keep_checkpoints=keep_checkpoints, sample_every=sample_every, seed=seed,
                         ema_decay=ema_decay, mixed_precision=mixed_precision, cpu=cpu,
                         max_minutes=max_minutes).check()
    if size is not None:
        v.integer("size", size, 16)
    fresh = _fresh_unet(unet_shape, parameterisation, min_snr_gamma, cache)
    from ..training.dropout import DropoutRates

    try:
        rates = DropoutRates(caption_alone=caption_alone)
    except InvalidParameter as e:
        room = 1 - DropoutRates().all_dropped - DropoutRates().all_kept
        raise RecomposerError("caption-alone", f"a share in [0, {room:g}] (what Composer's all-dropped and "
                                               f"all-kept shares leave), got {caption_alone!r}") from e
    if image_encoder is not None and not Path(image_encoder).is_dir():
        raise RecomposerError("image-encoder", f"no such directory: {image_encoder}")
    from ..training.composer import FOREGROUND_WEIGHT_MAX

    v.real("foreground-weight", foreground_weight, 0.0, FOREGROUND_WEIGHT_MAX)
    size = _check_run_options(output, model, parts, size, resume)

    # 2. Load, then train.
    hold_run_lock(output)

    from ..decompose.embedding import ClipImageEncoder
    from ..models.bundled import (
        has_part,
        load_bundled_image_encoder,
        unet_settings,
        write_part,
    )
    from ..training import train
    from ..training.composer import (
        WORLD_KINDS,
        ComposerTraining,
        composer_step,
        new_adapter,
        save_adapter,
        world_sampler,
    )

    backbone, folder, size = _load_backbone(model, parts, size, fresh if train_unet else None)
    if image_encoder is not None:
        encoder = ClipImageEncoder(image_encoder)
    elif model is None and has_part("image_encoder", folder):
        encoder = load_bundled_image_encoder(folder=folder)
    else:
        encoder = None
    kinds = WORLD_KINDS + (("image_embedding",) if encoder is not None else ())
    run = {"model": str(Path(model).resolve()) if model else str(folder), "size": size, "kinds": list(kinds),
           "image_encoder": encoder.identity if encoder else None, "train_unet": train_unet,
           "min_snr_gamma": min_snr_gamma}
    adapter = new_adapter(backbone, encoder.dim if encoder else 768, encoder.identity if encoder else None, seed=seed)
    start = _start_from_parts(adapter, folder, train_unet) if parts is not None else {}
    run = _check_run(output, {**run, "start": start})
    _record_stage(output, {"caption_alone": caption_alone, **({"permute_instances": True} if permute_instances
                                                               else {}),
                           **({"foreground_weight": foreground_weight} if foreground_weight else {})})
    trainee = ComposerTraining(backbone, adapter, kinds, rates, train_unet=train_unet, min_snr_gamma=min_snr_gamma,
                               permute_instances=permute_instances, foreground_weight=foreground_weight)
    batches = _batches(cache, backbone, encoder, batch_size, size, seed)
    sampler = world_sampler(size, image_encoder=encoder) if sample_every else None
    summary = train(config, trainee, composer_step, batches, sampler, resume=resume, keep_ema=True)

    # 3. The results, each all or nothing (with EMA: the averaged weights).
    if parts is not None:
        before = run.get("start") or {}  # steps the parts had already trained when this run began from them
        typer.echo(str(write_part(adapter, "composer", parts, {"config": adapter.config.__dict__,
                                                               "steps": before.get("composer", 0) + summary.step})))
        if train_unet:
            settings = unet_settings(backbone, steps=before.get("unet", 0) + summary.step, joint=True)
            typer.echo(str(write_part(backbone.unet, "unet", parts, settings)))
    else:
        typer.echo(str(save_adapter(adapter, output / ADAPTER_FILE)))
        if train_unet:
            typer.echo(str(_save_pretrained(backbone.unet, output / "unet")))
    loss = "n/a" if summary.loss is None else f"{summary.loss:.4g}"
    typer.echo(f"step {summary.step}, loss {loss}", err=True)


@train_app.command("controlnet")
def train_controlnet(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for checkpoints, loss.jsonl and the net; a "
                                                                "run resumes from it.")],
    model: model_option("Diffusers model directory (the frozen backbone). Default: the bundled model.") = None,
    parts: Annotated[Optional[Path], typer.Option(help="A folder of bundled-format parts to train on instead of "
                                                       "--model; the net is written into it as its controlnet "
                                                       "part (bundled:KIND), and a new run starts from the one it "
                                                       "has.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Train on your (image, hint, caption) triplets: a JSONL file "
                                                      "of image / conditioning_image / text records, or a folder "
                                                      "with a metadata.jsonl (diffusers' train_controlnet "
                                                      "layout). Default: shapes-world scenes.")] = None,
    hint: Annotated[Optional[list[str]], typer.Option(help="World hint kind(s) to read: sketch, depth, instances; "
                                                           "repeat for one net of several kinds (default with "
                                                           "--parts: all three).")] = None,
    steps: Steps = 10_000,
    batch_size: Annotated[int, typer.Option(help="Examples per step (per process).")] = 8,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (the paper: 1e-5 for Stable Diffusion).")] = 1e-5,
    size: Size = None,
    warmup_steps: WarmupSteps = 0,
    cooldown_steps: CooldownSteps = 0,
    ema_decay: Annotated[Optional[float], typer.Option(help="EMA of the net's weights (what is written).")] = None,
    sample_every: Annotated[int, typer.Option(help="A sample grid every this many steps (0: never): each example's "
                                                   "hint and what the net makes of it.")] = 0,
    checkpoint_every: CheckpointEvery = 500,
    keep_checkpoints: KeepCheckpoints = 2,
    seed: Annotated[int, typer.Option(help="Seeds the net's hint encoder and every step's draws.")] = 0,
    resume: Resume = True,
    mixed_precision: MixedPrecision = "no",
    cpu: Cpu = False,
    cache: Cache = None, max_minutes: MaxMinutes = None, min_snr_gamma: MinSnr = None,
) -> None:
    """Train a ControlNet (Zhang et al. 2023) on a frozen backbone: from shapes-world hints, or your triplets."""
    from .. import validation as v
    from ..models.controlnet import HINT_KINDS

    # 1. Every parameter, before anything loads.
    config = _adapter_config(output, size, min_snr_gamma, steps=steps, batch_size=batch_size, lr=lr,
                             warmup_steps=warmup_steps, cooldown_steps=cooldown_steps,
                             checkpoint_every=checkpoint_every,
                             keep_checkpoints=keep_checkpoints, seed=seed, ema_decay=ema_decay,
                             mixed_precision=mixed_precision, cpu=cpu, max_minutes=max_minutes,
                             sample_every=sample_every)
    if data is not None and (hint or cache is not None):
        raise RecomposerError("data", "your triplets carry their own hints: not with --hint or --cache")
    kinds = tuple(hint or (HINT_KINDS if parts is not None and data is None else ()))
    for kind in kinds:
        v.choice("hint", kind, HINT_KINDS)
    if len(set(kinds)) != len(kinds):
        raise InvalidParameter("hint", "each kind once", list(kinds))
    if data is None and not kinds:
        raise RecomposerError("hint", "the world hint kind to train on (sketch, depth or instances), or --data")
    if len(kinds) > 1 and parts is None:
        raise RecomposerError("hint", "one kind with --model (a net of several kinds ships as a parts folder's "
                                      f"controlnet part; got {', '.join(kinds)})")
    kinds = kinds or ("image",)
    _check_cache(cache)
    from ..training.controlnet import read_triplets

    triplets = read_triplets(data) if data is not None else None
    size = _check_run_options(output, model, parts, size, resume)

    # 2. Load, then train.
    hold_run_lock(output)

    from ..models.bundled import has_part, write_part
    from ..training import train
    from ..training.controlnet import (
        ControlNetTraining,
        controlnet_sampler,
        controlnet_step,
        new_controlnet,
        triplet_batches,
    )

    backbone, folder, size = _load_backbone(model, parts, size)
    net = new_controlnet(backbone, kinds, seed)
    start = {}
    if parts is not None and has_part("controlnet", folder):  # go on from the net the parts have
        from ..models.controlnet import load_bundled_controlnet

        import torch

        trained, trained_kinds = load_bundled_controlnet(folder, torch.device("cpu"), torch.float32)
        if trained_kinds != kinds:
            raise RecomposerError("hint", f"{folder / 'controlnet.json'} is a net for {list(trained_kinds)}; "
                                          "train those kinds, or move it away for a fresh net")
        net.load_state_dict(trained.state_dict())
        settings = json.loads((folder / "controlnet.json").read_text(encoding="utf-8"))  # read (and checked) above
        start = {"controlnet": int(settings.get("steps", 0))}
    run = _check_run(output, {"model": str(Path(model).resolve()) if model else str(folder), "size": size,
                              "kinds": list(kinds), "data": str(Path(data).resolve()) if data else None,
                              "min_snr_gamma": min_snr_gamma, "start": start}, CONTROLNET_RUN_FILE)
    trainee = ControlNetTraining(backbone, net, kinds, min_snr_gamma=min_snr_gamma)
    batches = triplet_batches(backbone, triplets, batch_size, size, seed) if triplets is not None else \
        _batches(cache, backbone, None, batch_size, size, seed)
    sampler = controlnet_sampler(size, kinds, triplets=triplets or ()) if sample_every else None
    summary = train(config, trainee, controlnet_step, batches, sampler, resume=resume, keep_ema=True)

    # 3. The net, all or nothing (with EMA: the averaged weights).
    if parts is not None:
        before = (run.get("start") or {}).get("controlnet", 0)
        typer.echo(str(write_part(net, "controlnet", parts, {"config": dict(net.config), "kinds": list(kinds),
                                                             "steps": before + summary.step})))
    else:
        typer.echo(str(_save_pretrained(net, output / "controlnet")))
    loss = "n/a" if summary.loss is None else f"{summary.loss:.4g}"
    typer.echo(f"step {summary.step}, loss {loss}", err=True)


@train_app.command("instruct")
def train_instruct(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for checkpoints, samples, loss.jsonl and "
                                                                "the model; a run resumes from it.")],
    model: model_option("Diffusers model directory to widen and fine-tune (a text-to-image model, or an "
                        "instruction model to go on training). Default: the bundled model.") = None,
    parts: Annotated[Optional[Path], typer.Option(help="A folder of bundled-format parts to train on instead of "
                                                       "--model; the result is written into it as its instruct "
                                                       "part (a low-rank delta of its UNet: the bundled "
                                                       "instruction model). A folder that has one already goes "
                                                       "on from it.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Train on your pairs: a folder with a metadata.jsonl of "
                                                      "input_image / edit_prompt / edited_image records (what "
                                                      "`recomposer make-pairs` writes). Default: shapes-world "
                                                      "edits.")] = None,
    steps: Steps = 10_000,
    batch_size: Annotated[int, typer.Option(help="Examples per step (per process).")] = 8,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (the reference: 1e-4).")] = 1e-4,
    size: Size = None,
    warmup_steps: WarmupSteps = 0,
    cooldown_steps: CooldownSteps = 0,
    ema_decay: Annotated[Optional[float], typer.Option(help="EMA of the UNet's weights (what is written).")] = None,
    sample_every: Annotated[int, typer.Option(help="A sample grid every this many steps (0: never): before, the "
                                                   "wanted after, the model's edit.")] = 0,
    checkpoint_every: CheckpointEvery = 500,
    keep_checkpoints: KeepCheckpoints = 2,
    rank: Annotated[int, typer.Option(help="With --parts: the rank of the delta written (models/delta.py).")] = 32,
    edit_weight: Annotated[float, typer.Option(help="Weigh the loss toward what each pair changed: a latent "
                                                    "position weighs 1 + this x the share of its pixels that "
                                                    "differ, each example's mean weight kept 1 (0: uniform).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seeds the stream of edits and every step's draws.")] = 0,
    resume: Resume = True,
    mixed_precision: MixedPrecision = "no",
    cpu: Cpu = False,
    max_minutes: MaxMinutes = None, min_snr_gamma: MinSnr = None,
) -> None:
    """Train an InstructPix2Pix model (Brooks et al. 2023): the UNet widened to hear the image it edits."""
    from .. import validation as v

    # 1. Every parameter, before anything loads.
    config = _adapter_config(output, size, min_snr_gamma, steps=steps, batch_size=batch_size, lr=lr,
                             warmup_steps=warmup_steps, cooldown_steps=cooldown_steps,
                             checkpoint_every=checkpoint_every,
                             keep_checkpoints=keep_checkpoints, seed=seed, ema_decay=ema_decay,
                             mixed_precision=mixed_precision, cpu=cpu, max_minutes=max_minutes,
                             sample_every=sample_every)
    v.integer("rank", rank, 1, 4096)
    from ..training.instruct import EDIT_WEIGHT_MAX, read_pairs

    v.real("edit-weight", edit_weight, 0.0, EDIT_WEIGHT_MAX)

    pairs = read_pairs(data) if data is not None else None
    size = _check_run_options(output, model, parts, size, resume)
    pipeline = _pipeline_of(model) if model is not None else None
    if pipeline not in (None, "StableDiffusionPipeline", "StableDiffusionInstructPix2PixPipeline"):
        raise RecomposerError("model", f"{model} is a {pipeline}; an instruction model is widened from a text-to-image "
                                       "model (StableDiffusionPipeline) or trained on from an instruction model")

    # 2. Load, widen, then train.
    hold_run_lock(output)

    from ..models.bundled import has_part, merge_instruct, read_part, write_tensors
    from ..models.delta import extract
    from ..models.instruct import InstructChannels, widen
    from ..models.tiny import save_diffusers_dir
    from ..training import train
    from ..training.instruct import InstructTraining, instruct_sampler, instruct_step, pair_batches, world_edit_batches

    backbone, folder, size = _load_backbone(model, parts, size)
    base = {k: t.detach().clone() for k, t in backbone.unet.state_dict().items()}  # what a delta is taken against
    previous = {}  # the parts' instruct part this run goes on from: its steps and weights (a checkpoint overrides)
    if parts is not None and has_part("instruct", folder):
        try:
            backbone, part = merge_instruct(backbone, folder)  # (checks the delta's base before widening)
            previous = {k: part.get(k) for k in ("steps", "weights_sha256")}
            typer.echo(f"going on from {folder / 'instruct.safetensors'} ({previous['steps']} steps)", err=True)
        except ModelError as error:  # another UNet's delta, a damaged file: trained afresh and replaced
            typer.echo(f"note: not going on from {folder / 'instruct.safetensors'}: {error.message}", err=True)
    if backbone.adapter(InstructChannels) is None:
        if backbone.unet.config.in_channels != backbone.latent_channels:
            raise RecomposerError("model", f"has a UNet of {backbone.unet.config.in_channels} input channels for "
                                           f"{backbone.latent_channels}-channel latents (an inpainting model?); an "
                                           "instruction model is widened from a text-to-image UNet")
        widen(backbone.unet, backbone.latent_channels)
        backbone = backbone.with_adapters(InstructChannels(backbone.latent_channels))
    run = _check_run(output, {"model": str(Path(model).resolve()) if model else str(folder), "size": size,
                              "data": str(Path(data).resolve()) if data else None, "min_snr_gamma": min_snr_gamma,
                              "edit_weight": edit_weight or None, "start": previous or None},  # (None: as runs
                     INSTRUCT_RUN_FILE)                                                       # before these keys)
    previous = run.get("start") or {}  # a resumed run's, whatever the parts hold now
    trainee = InstructTraining(backbone, min_snr_gamma=min_snr_gamma, edit_weight=edit_weight)
    batches = pair_batches(backbone, pairs, batch_size, size, seed) if pairs is not None else \
        world_edit_batches(backbone, batch_size, size, seed)
    sampler = instruct_sampler(size, pairs=pairs or ()) if sample_every else None
    summary = train(config, trainee, instruct_step, batches, sampler, resume=resume, keep_ema=True)

    # 3. The model, all or nothing (with EMA: the averaged weights): a whole diffusers folder; with --parts the
    # widened UNet whole and the bundled instruct part, a low-rank delta of the parts' UNet.
    if parts is None:
        typer.echo(str(_save_model(backbone, output / "model", save_diffusers_dir)))
    else:
        typer.echo(str(_save_pretrained(backbone.unet, output / "unet")))
        delta, energy = extract(base, backbone.unet.state_dict(), rank)
        _, unet = read_part("unet", folder)
        settings = {"base_unet": unet["weights_sha256"], "rank": rank,
                    "steps": (previous.get("steps") or 0) + summary.step, "run": run,
                    "kept_energy": {"min": round(min(energy.values(), default=1.0), 4),
                                    "mean": round(sum(energy.values()) / max(len(energy), 1), 4)}}
        typer.echo(str(write_tensors(delta, "instruct", parts, settings)))
    loss = "n/a" if summary.loss is None else f"{summary.loss:.4g}"
    typer.echo(f"step {summary.step}, loss {loss}", err=True)


@train_app.command("base")
def train_base(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for checkpoints, loss.jsonl; a run "
                                                                "resumes from it.")],
    parts: Annotated[Path, typer.Option(help="Folder of bundled-format parts holding the trained VAE "
                                             "(`train vae`); the UNet is written into it.")],
    steps: Steps = 10_000,
    batch_size: Annotated[int, typer.Option(help="Captioned shapes-world scenes per step.")] = 32,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 2e-4,
    cooldown_steps: CooldownSteps = 0,
    checkpoint_every: Annotated[int, typer.Option(help="A checkpoint every this many steps.")] = 250,
    ema_decay: Annotated[Optional[float], typer.Option(help="EMA of the UNet's weights (the written UNet).")]
    = 0.995,
    seed: Annotated[int, typer.Option(help="Seeds the initial weights and every step's draws.")] = 0,
    mixed_precision: MixedPrecision = "no",
    cpu: Cpu = False,
    cache: Cache = None, max_minutes: MaxMinutes = None, min_snr_gamma: MinSnr = None,
    unet_shape: UnetShape = "default", parameterisation: Parameterisation = "epsilon",
) -> None:
    """Train the bundled text-to-image UNet (MiniLM tokens) from scratch on captioned world scenes; writes
    PARTS/unet.*"""
    from ..training import TrainConfig

    config = TrainConfig(output_dir=output, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=200,
                         cooldown_steps=cooldown_steps, checkpoint_every=checkpoint_every, ema_decay=ema_decay,
                         seed=seed, mixed_precision=mixed_precision, cpu=cpu, max_minutes=max_minutes).check()
    _check_output(output)
    fresh = _fresh_unet(unet_shape, parameterisation, min_snr_gamma, cache)
    hold_run_lock(output)

    import torch

    from ..models.bundled import (
        PARAMETERISATIONS,
        SIZE,
        UNET_SHAPES,
        load_bundled_backbone,
        new_unet,
        unet_settings,
        write_part,
    )
    from ..training import train
    from ..training.base import BaseTraining, base_step

    backbone = load_bundled_backbone(torch.device("cpu"), torch.float32, parts, fresh_unet=fresh)
    backbone.unet = new_unet(seed, UNET_SHAPES[fresh[0]])  # from scratch, whatever PARTS holds
    backbone.scheduler_config = dict(PARAMETERISATIONS[fresh[1]])
    batches = _batches(cache, backbone, None, batch_size, SIZE, seed)
    trainee = BaseTraining(backbone, min_snr_gamma=min_snr_gamma)
    summary = train(config, trainee, base_step, batches, keep_ema=True)
    typer.echo(str(write_part(backbone.unet, "unet", parts, unet_settings(backbone, steps=summary.step, joint=False))))
    loss = "n/a" if summary.loss is None else f"{summary.loss:.4g}"
    typer.echo(f"step {summary.step}, loss {loss}", err=True)


@train_app.command("vae")
def train_vae(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for checkpoints, samples and loss.jsonl; "
                                                                "a run resumes from it.")],
    steps: Annotated[int, typer.Option(help="Optimizer updates in all (a resumed run continues up to it).")]
    = 4000,
    batch_size: Annotated[int, typer.Option(help="Shapes-world renders per step.")] = 16,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 5e-4,
    cooldown_steps: CooldownSteps = 0,
    checkpoint_every: Annotated[int, typer.Option(help="A checkpoint every this many steps.")] = 250,
    sample_every: Annotated[int, typer.Option(help="A reconstruction grid every this many steps (0: never).")]
    = 500,
    seed: Annotated[int, typer.Option(help="Seeds the initial weights and every step's draws.")] = 0,
    parts: Annotated[Optional[Path], typer.Option(help="Folder of bundled-format parts the result is written "
                                                       "into (default: --output).")] = None,
    init: Annotated[Optional[Path], typer.Option(help="Start from the VAE in this parts folder.")] = None,
    decoder_only: Annotated[bool, typer.Option("--decoder-only", help="Train the decoder only (with --init): "
                                                                      "latents, and models trained on them, stay "
                                                                      "valid.")] = False,
    decoder_layers: Annotated[Optional[int], typer.Option(help="Deepen the decoder to this many resnets per up "
                                                               "block, less one (diffusers' layers_per_block; the "
                                                               "bundled VAE's: 1); the added ones start as the "
                                                               "identity. Default: as --init's decoder.")] = None,
    latent_noise: Annotated[float, typer.Option(help="With --decoder-only: decode latents perturbed by up to this "
                                                     "fraction of their spread (σ ~ U(0, this) per render) to "
                                                     "the clean render, so the decoder draws a sampler's "
                                                     "imperfect latents well; 0: off.")] = 0.0,
    mixed_precision: MixedPrecision = "no",
    cpu: Cpu = False,
    max_minutes: MaxMinutes = None,
    evaluate: Annotated[int, typer.Option(help="Held-out renders the written figures are measured on.")] = 256,
) -> None:
    """Train the bundled model's VAE (64 px, latent factor 4) on shapes-world renders; writes PARTS/vae.*"""
    from .. import validation as v
    from ..training import TrainConfig

    v.integer("evaluate", evaluate, 1, 100_000)
    if decoder_layers is not None:
        from ..models.bundled import MAX_DECODER_LAYERS, VAE_CONFIG

        v.integer("decoder-layers", decoder_layers, VAE_CONFIG["layers_per_block"], MAX_DECODER_LAYERS)

    config = TrainConfig(output_dir=output, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=100,
                         cooldown_steps=cooldown_steps, checkpoint_every=checkpoint_every, sample_every=sample_every,
                         seed=seed, mixed_precision=mixed_precision, cpu=cpu, max_minutes=max_minutes).check()
    _check_output(output)
    if decoder_only and init is None:
        raise InvalidParameter("decoder-only", "used with --init PARTS (a trained VAE to keep the encoder of)", True)
    from ..training.vae import VAETraining, checked_latent_noise, summary, vae_sampler, vae_step, world_images

    checked_latent_noise(latent_noise, decoder_only, "latent-noise")
    hold_run_lock(output)

    from ..models.bundled import VAE_CONFIG, SIZE, deepened, load_part, new_vae, read_part, vae_of, write_part
    from ..training import train

    vae = new_vae(seed) if init is None else load_part(vae_of(read_part("vae", init)[1], init / "vae.json"), "vae",
                                                       init)
    layers = len(vae.decoder.up_blocks[0].resnets) - 1
    if decoder_layers is not None and decoder_layers != layers:
        vae, layers = deepened(vae, decoder_layers), decoder_layers
    trainee = VAETraining(vae, decoder_only=decoder_only, latent_noise=latent_noise)
    train(config, trainee, vae_step, world_images(batch_size, SIZE), vae_sampler(SIZE) if sample_every else None)
    vae = vae.eval().half().float()  # the bundled precision: the figures are those of what ships
    figures = summary(vae, evaluate)
    if decoder_only:  # the encoder, its latents and their scale are the init's: models (and caches) stay valid
        figures["scaling_factor"] = read_part("vae", init)[1]["scaling_factor"]
    if layers != VAE_CONFIG["layers_per_block"]:
        figures["decoder_layers_per_block"] = layers
    if latent_noise:
        figures["latent_noise"] = latent_noise
    typer.echo(str(write_part(vae, "vae", parts or output, figures)))
    typer.echo(f"held-out PSNR {figures['psnr_mean']:.2f} dB (worst {figures['psnr_min']:.2f}), "
               f"latent scale {figures['scaling_factor']:.4f}", err=True)


@train_app.command("encoder")
def train_encoder(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for checkpoints and loss.jsonl; a run "
                                                                "resumes from it.")],
    steps: Annotated[int, typer.Option(help="Optimizer updates in all (a resumed run continues up to it).")]
    = 1500,
    batch_size: Annotated[int, typer.Option(help="Scenes per step (the contrastive batch).")] = 64,
    pool: Annotated[int, typer.Option(help="Training scenes (their caption embeddings are computed once).")]
    = 8192,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    cooldown_steps: CooldownSteps = 0,
    checkpoint_every: Annotated[int, typer.Option(help="A checkpoint every this many steps.")] = 250,
    seed: Annotated[int, typer.Option(help="Seeds the initial weights and every step's draws.")] = 0,
    parts: Annotated[Optional[Path], typer.Option(help="Folder of bundled-format parts the result is written "
                                                       "into (default: --output).")] = None,
    cpu: Cpu = False,
    max_minutes: MaxMinutes = None,
) -> None:
    """Train the bundled image encoder (semantics and style) against caption embeddings; writes
    PARTS/image_encoder.*"""
    from .. import validation as v
    from ..training import TrainConfig

    config = TrainConfig(output_dir=output, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=100,
                         weight_decay=0.01, cooldown_steps=cooldown_steps, checkpoint_every=checkpoint_every,
                         seed=seed, cpu=cpu, max_minutes=max_minutes).check()
    v.integer("pool", pool, batch_size)
    _check_output(output)
    hold_run_lock(output)

    import torch

    from ..models.bundled import write_part
    from ..models.image_encoder import WorldImageEncoder
    from ..models.minilm import load_minilm
    from ..training import train
    from ..training.encoder import EncoderTraining, caption_batches, caption_pool, encoder_step, retrieval

    text_model, tokenizer = load_minilm()
    output.mkdir(parents=True, exist_ok=True)
    sentences = caption_pool(text_model, tokenizer, pool, output / "caption-pool.safetensors")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trainee = EncoderTraining(WorldImageEncoder())
    train(config, trainee, encoder_step, caption_batches(sentences, batch_size))
    trainee.half().float()  # the bundled precision: the figures are those of what ships
    figures = retrieval(trainee, text_model, tokenizer)
    typer.echo(str(write_part(trainee.encoder, "image_encoder", parts or output, figures)))
    typer.echo(f"held-out retrieval top-1: image->caption {figures['image_to_caption_top1']:.2f}, "
               f"caption->image {figures['caption_to_image_top1']:.2f}", err=True)


@train_app.command("analyser")
def train_analyser(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for checkpoints and loss.jsonl (the "
                                                                "classifier's in OUT/classifier); a run resumes "
                                                                "from it.")],
    steps: Annotated[int, typer.Option(help="Segmenter updates in all (a resumed run continues up to it).")]
    = 4000,
    classifier_steps: Annotated[int, typer.Option(help="Instance-classifier updates in all.")] = 12000,
    batch_size: Annotated[int, typer.Option(help="Scenes per step (the instance classifier takes "
                                                        "half as many).")] = 32,
    lr: Annotated[float, typer.Option(help="AdamW learning rate of the segmenter.")] = 1e-3,
    evaluate: Annotated[int, typer.Option(help="Held-out renders the written figures are measured on.")] = 500,
    seed: Annotated[int, typer.Option(help="Seeds the initial weights and every step's draws.")] = 0,
    parts: Annotated[Optional[Path], typer.Option(help="Folder of bundled-format parts the result is written "
                                                       "into (default: --output).")] = None,
    cpu: Cpu = False,
) -> None:
    """Train the shapes-world analyser (the controllability benchmark's judge): the segmenter and the instance
    classifier; writes PARTS/analyser.* with its held-out accuracy."""
    from .. import validation as v

    v.integer("classifier_steps", classifier_steps, 1)
    v.integer("evaluate", evaluate, 1)
    configs = analyser_configs(output, steps, classifier_steps, batch_size, lr, seed, cpu)
    _check_output(output)
    hold_run_lock(output)

    from ..models.analyser import Analyser, AnalyserWeights
    from ..models.bundled import write_part
    from ..training.analyser import accuracy

    weights = AnalyserWeights(*(train_analyser_part(name, config, seed) for name, config in configs.items()))
    weights = weights.half().float().cpu()  # the bundled precision: the figures are those of what ships
    figures = accuracy(Analyser(weights), evaluate)
    settings = {"steps": steps, "classifier_steps": classifier_steps, "batch_size": batch_size, "lr": lr,
                **figures}
    typer.echo(str(write_part(weights, "analyser", parts or output, settings)))
    typer.echo(json.dumps(figures, indent=2), err=True)


def analyser_configs(output: Path, steps: int, classifier_steps: int, batch_size: int, lr: float, seed: int,
                     cpu: bool) -> dict:
    """The two runs' settings: the segmenter in OUT, the instance classifier (half the scenes per step) in
    OUT/classifier."""
    from ..training import TrainConfig

    def run(folder: Path, steps: int, batch_size: int, lr: float, ema_decay: float) -> TrainConfig:
        return TrainConfig(output_dir=folder, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=100,
                           weight_decay=0.01, ema_decay=ema_decay, checkpoint_every=250, seed=seed, cpu=cpu).check()

    return {"segmenter": run(Path(output), steps, batch_size, lr, 0.998),
            "classifier": run(Path(output) / "classifier", classifier_steps, max(1, batch_size // 2), 2e-3, 0.995)}


def train_analyser_part(name: str, config, seed: int):
    """Train (or resume, or just load when complete) one of the analyser's networks; returns it with EMA weights."""
    import torch

    from ..models.analyser import InstanceClassifier, WorldAnalyser
    from ..training import analyser as a
    from ..training import train

    network, trainee, batches = {
        "segmenter": (WorldAnalyser, a.AnalyserTraining, a.analyser_batches),
        "classifier": (InstanceClassifier, a.ClassifierTraining, a.classifier_batches)}[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = network()
    train(config, trainee(module), a.analyser_step, batches(config.batch_size), keep_ema=True)
    return module


# --- helpers ---------------------------------------------------------------------------------

def _adapter_config(output: Path, size: int | None, min_snr_gamma: float | None, **settings):
    """An adapter trainer's TrainConfig (checked) and its --size and --min-snr-gamma checked, before anything loads."""
    from .. import validation as v
    from ..training import TrainConfig

    config = TrainConfig(output_dir=output, **settings).check()
    if size is not None:
        v.integer("size", size, 16)
    if min_snr_gamma is not None:
        v.real("min-snr-gamma", min_snr_gamma, 1e-3, 1e3)
    return config


def _check_size(model: str, size: int | None) -> int | None:
    """Read the model's VAE factor from its configs (no weights) and check ``size`` against it."""
    from diffusers import AutoencoderKL

    from .. import validation as v
    from ..models.loading import check_diffusers_dir

    if not Path(model).is_dir():
        raise ModelError("model", f"{model} is not a directory (train needs a diffusers model directory)")
    root = check_diffusers_dir(model)
    try:
        factor = 2 ** (len(AutoencoderKL.load_config(root / "vae", local_files_only=True)["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError("model", f"{root / 'vae'} has no readable config ({e.__class__.__name__})") from None
    if size is not None:
        v.multiple_of("size", size, factor, 16)
    return size


def _check_run(output: Path, run: dict, name: str = RUN_FILE) -> dict:
    """Write the run's settings on a fresh start; on a resume, refuse changed ones (the checkpoint cannot tell).
    The settings the run has: ``run`` on a fresh start, the recorded ones on a resume (where the run began,
    ``start``, is the fresh start's: a resumed run continues from its checkpoint, whatever the parts hold now)."""
    from ..io.files import atomic_write

    path = output / name
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise RecomposerError("output", f"{path} is not valid JSON; choose a new folder") from None
        for key, value in run.items():
            if key not in ("model", "start") and old.get(key) != value:
                raise RecomposerError(key.replace("_", "-"), f"was {old.get(key)!r} in the run in {output}, "
                                                             f"now {value!r}; resume with the same or choose a new "
                                                             "folder")
        return old
    output.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write((json.dumps(run, indent=2) + "\n").encode()))
    return run


def _start_from_parts(adapter, folder: Path, train_unet: bool) -> dict:
    """Begin from what the parts folder has trained: its Composer adapter's weights go into ``adapter`` (the UNet
    part was loaded with the backbone). Returns the steps each part records ({} for fresh weights), so the
    parts written at the end count every step they have had. A checkpoint in the run folder overrides both."""
    from ..models.bundled import has_part, load_bundled_composer, read_part

    start = {}
    if has_part("composer", folder):
        trained = load_bundled_composer(folder)
        if trained.config != adapter.config:
            raise RecomposerError("parts", f"{folder / 'composer.json'} is an adapter of other sizes than this "
                                           "backbone and image encoder need; move it away to train a fresh one")
        adapter.load_state_dict(trained.state_dict())
        start["composer"] = int(read_part("composer", folder)[1].get("steps", 0))
    if train_unet and has_part("unet", folder):
        start["unet"] = int(read_part("unet", folder)[1].get("steps", 0))
    return start


def _record_stage(output: Path, stage: dict) -> None:
    """The settings a resumed run may change (a curriculum), kept in the run file as ``stages``: a list of
    {"after_step": N, **settings} (they drive the steps after step N); a new entry only when they change."""
    from ..io.files import atomic_write
    from ..training import latest_complete

    path = output / RUN_FILE
    run = json.loads(path.read_text(encoding="utf-8"))
    stages = run.get("stages") or [{"after_step": 0, "caption_alone": 0.0}]  # a run from before stages existed
    if {k: v for k, v in stages[-1].items() if k != "after_step"} == stage:
        if "stages" in run:
            return
    else:
        latest = latest_complete(output)
        stages.append({"after_step": int(latest.name.split("-")[-1]) if latest else 0, **stage})
        if stages[-2]["after_step"] == stages[-1]["after_step"]:  # changed again before any step ran: replace
            del stages[-2]
    atomic_write(path, lambda f: f.write((json.dumps({**run, "stages": stages}, indent=2) + "\n").encode()))


def _fresh_unet(shape: str, parameterisation: str, min_snr_gamma: float | None,
                cache: Path | None) -> tuple[str, str]:
    """Check the recipe options (before anything loads); the (shape, parameterisation) of a fresh UNet."""
    from .. import validation as v
    from ..models.bundled import PARAMETERISATIONS, UNET_SHAPES

    v.choice("unet-shape", shape, tuple(UNET_SHAPES))
    v.choice("parameterisation", parameterisation, tuple(PARAMETERISATIONS))
    if min_snr_gamma is not None:
        v.real("min-snr-gamma", min_snr_gamma, 1e-3, 1e3)
    _check_cache(cache)
    return shape, parameterisation


def _load_backbone(model: str | None, parts: Path | None, size: int | None, fresh_unet=None):
    """(the frozen or trained backbone on the CPU, the parts folder it came from, the training size): --model's
    diffusers directory, or the parts folder (the bundled weights by default; ``fresh_unet`` where it has no UNet).
    The trainer moves everything to its device."""
    import torch

    from .. import validation as v
    from ..models.bundled import WEIGHTS, load_bundled_backbone
    from ..models.loading import load_model

    folder = parts if parts is not None else WEIGHTS
    cpu = torch.device("cpu")
    backbone = load_bundled_backbone(cpu, torch.float32, folder, fresh_unet=fresh_unet) if model is None else \
        load_model(model, cpu, torch.float32)
    size = size if size is not None else backbone.native_size
    v.multiple_of("size", size, backbone.vae_factor, 16)
    return backbone, folder, size


def _check_cache(cache: Path | None) -> None:
    if cache is not None and not (cache / "manifest.json").is_file():
        raise RecomposerError("cache", f"{cache} is not a world cache (no manifest.json); build one with "
                                       "`recomposer world cache`")


def _check_run_options(output: Path, model: str | None, parts: Path | None, size: int | None, resume: bool):
    """The checks every adapter trainer makes of where it trains and from what, before anything loads; the size
    checked against --model's VAE factor (None: the backbone's native size, once loaded)."""
    from ..training import latest_complete

    _check_output(output)
    if model is not None and parts is not None:
        raise RecomposerError("parts", "give --model or --parts, not both")
    if model is not None:
        size = _check_size(model, size)
    if not resume and output.is_dir() and latest_complete(output) is not None:
        raise RecomposerError("output", f"{output} holds checkpoints of an earlier run; resume it (--resume) "
                                        "or choose a new folder")
    return size


def _batches(cache: Path | None, backbone, encoder, batch_size: int, size: int, seed: int):
    """The trainer's batches: read from ``cache`` (checked against this backbone first), or encoded on the fly."""
    from ..training.composer import cached_batches, world_batches
    from ..training.world_cache import WorldCache, spec_for

    if cache is None:
        return world_batches(backbone, batch_size, size, image_encoder=encoder)
    expected = spec_for(backbone, encoder, size, 1, 1)
    return cached_batches(WorldCache(cache, expected), backbone, batch_size, seed, image_embedding=encoder is not None)


def _pipeline_of(model: str) -> str | None:
    """The pipeline a diffusers folder's model_index.json names (None for a single file or no index)."""
    from ..models import library

    index = Path(model) / "model_index.json"
    return library.read_json(index, "model").get("_class_name") if index.is_file() else None


def _save_model(backbone, folder: Path, save) -> Path:
    """A whole model folder written by ``save(backbone, path)`` beside ``folder`` and renamed into place."""
    import shutil

    from ..io.files import temp_folder

    tmp = temp_folder(folder)
    try:
        save(backbone, tmp)
        _replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _replace_folder(new: Path, folder: Path) -> None:
    import shutil

    if folder.exists():
        aside = folder.with_name(f".{folder.name}.old.tmp")
        shutil.rmtree(aside, ignore_errors=True)
        folder.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    new.rename(folder)


def _check_output(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise InvalidParameter("output", "a folder (new, or one this command wrote)", str(output))


def hold_run_lock(output: Path) -> None:
    """This command is the one run training into ``output`` until it exits (training/lock.py)."""
    from ..training.lock import acquire

    acquire(output)


def _save_pretrained(module, folder: Path) -> Path:
    """A diffusers model as a folder (safetensors), written beside and renamed into place."""
    import shutil

    from ..io.files import temp_folder

    tmp = temp_folder(folder)
    try:
        module.save_pretrained(tmp, safe_serialization=True)
        _replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
