"""The one training loop, on accelerate: every adapter trains with it by supplying a step function.

``train(config, model, step_fn, batches, sample_fn)`` runs on one CPU as it is, and on many GPUs or
nodes under ``accelerate launch`` unchanged. It does AdamW with decoupled weight decay, gradient
accumulation, mixed precision where the device has it, gradient clipping, an EMA of the trainable
weights, a progress bar, a loss log, sample grids and resumable checkpoints (training/checkpoint.py).

Exact resumption (RELIABILITY.md R7) rests on three rules, so that nothing but the checkpoint is
needed to continue a run on the same path:
1. Data is a pure function of the micro-batch index: ``batches(index)`` with
   ``index = (step * grad_accum + micro) * processes + rank``. A DataLoader's iterator cannot be
   rewound to step k without saving its position and its workers' random states; an index can.
2. Randomness is a pure function of (seed, step, micro, rank): ``step_fn`` gets a fresh generator
   seeded from them (noise, timesteps, condition dropout), and the global torch RNG is reseeded from
   them too, so modules that draw from it (nn.Dropout) replay as well. No RNG state is saved.
3. Everything else that changes is in the checkpoint: trainable weights and buffers, the EMA, the
   optimizer's moments and step counts, the fp16 loss scale, and the losses of a half-full log window.
"""

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, send_to_device
from torch import nn

from .. import validation
from ..errors import InvalidParameter, ModelError, NonFiniteResult, RecomposerError
from ..io.files import atomic_write, save_png
from ..progress import stage
from ..io.sheets import image_grid  # noqa: F401 (re-exported)
from .checkpoint import copy_into, latest_complete, load_checkpoint, save_checkpoint
from .lock import run_lock

MIXED_PRECISION = ("no", "fp16", "bf16")
# config fields that change the path of a run: resuming with a different value is an error
TRAJECTORY = ("seed", "batch_size", "lr", "warmup_steps", "weight_decay", "grad_accum", "grad_clip",
              "mixed_precision", "ema_decay")


@dataclass
class TrainConfig:
    output_dir: str | Path  # checkpoints/, samples/ and loss.jsonl go here; a run resumes from it
    steps: int = 10_000  # optimizer updates in all; a resumed run continues up to this
    batch_size: int = 8  # samples per micro-batch per process (the batches function is built for it)
    lr: float = 1e-4  # AdamW learning rate after warm-up
    warmup_steps: int = 0  # linear warm-up of the learning rate over the first updates
    cooldown_steps: int = 0  # linear decay of the learning rate to 0 over the last updates before `steps`
    weight_decay: float = 0.0  # AdamW decoupled weight decay, on weight matrices and kernels only (ndim >= 2)
    grad_accum: int = 1  # micro-batches per optimizer update (effective batch = batch_size·grad_accum·processes)
    grad_clip: float | None = 1.0  # clip the global gradient norm to this; None: no clipping
    mixed_precision: str = "no"  # "no", "fp16" (GPUs only) or "bf16" (CPUs, GPUs that have it); weights stay fp32
    ema_decay: float | None = None  # EMA of the trainable weights, e.g. 0.999 (None: no EMA)
    log_every: int = 1  # a loss.jsonl line every this many updates: the mean loss over them
    sample_every: int = 0  # a sample grid every this many updates (0: never; needs a sample_fn)
    checkpoint_every: int = 500  # a checkpoint every this many updates, and always at the end
    keep_checkpoints: int = 2  # complete checkpoints kept; older ones are pruned after a new one is complete
    seed: int = 0  # seeds the per-step generators (and nothing else: data comes from batches(index))
    cpu: bool = False  # train on the CPU even where a GPU is present
    max_minutes: float | None = None  # stop (with a checkpoint) after the first update past this much wall time

    def check(self) -> "TrainConfig":
        """Validate every field (R4): a wrong one is an InvalidParameter naming it, before any compute."""
        if not isinstance(self.output_dir, (str, Path)) or not str(self.output_dir):
            raise InvalidParameter("output_dir", "a folder path", self.output_dir)
        for field in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints"):
            validation.integer(field, getattr(self, field), 1)
        validation.integer("warmup_steps", self.warmup_steps, 0)
        validation.integer("cooldown_steps", self.cooldown_steps, 0)
        if self.cooldown_steps > self.steps:
            raise InvalidParameter("cooldown_steps", f"at most steps ({self.steps})", self.cooldown_steps)
        validation.integer("sample_every", self.sample_every, 0)
        validation.real("lr", self.lr, 0.0)
        if self.lr == 0:
            raise InvalidParameter("lr", "a finite number > 0", self.lr)
        validation.real("weight_decay", self.weight_decay, 0.0)
        if self.grad_clip is not None and not validation.real("grad_clip", self.grad_clip, 0.0) > 0:
            raise InvalidParameter("grad_clip", "a finite number > 0, or None", self.grad_clip)
        if self.ema_decay is not None:
            decay = validation.real("ema_decay", self.ema_decay, 0.0, 1.0)
            if decay == 1.0:
                raise InvalidParameter("ema_decay", "a number in [0, 1) or None", self.ema_decay)
        validation.choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        validation.seed("seed", self.seed)
        if not isinstance(self.cpu, bool):
            raise InvalidParameter("cpu", "True or False", self.cpu)
        if self.max_minutes is not None and not validation.real("max_minutes", self.max_minutes, 0.0) > 0:
            raise InvalidParameter("max_minutes", "a number of minutes > 0, or None", self.max_minutes)
        return self

    def as_json(self) -> dict:
        return json.loads(json.dumps({**asdict(self), "output_dir": str(self.output_dir)}))


@dataclass(frozen=True)
class TrainSummary:
    step: int  # updates done in all, counting those before a resume
    loss: float | None  # the last loss logged (None when nothing was ever logged)
    resumed_from: int | None  # the checkpoint step this call started from, or None for a fresh start
    checkpoint: Path | None  # the newest complete checkpoint
    log: Path  # loss.jsonl
    samples: tuple[Path, ...]  # sample grids written by this call


StepFn = Callable[[nn.Module, Any, torch.Generator], torch.Tensor]


def train(config: TrainConfig, model: nn.Module, step_fn: StepFn, batches: Callable[[int], Any],
          sample_fn: Callable[[nn.Module, int], Any] | None = None, *, resume: bool = True,
          keep_ema: bool = False) -> TrainSummary:
    """Train the parameters of ``model`` that require grad, resuming from ``config.output_dir`` if it holds
    a complete checkpoint (and ``resume``).

    step_fn(model, batch, generator) -> scalar loss: one micro-batch's loss. ``model`` is the prepared
        model (under multi-process training a DDP wrapper: call it, so gradients are synchronised);
        ``generator`` lives on the training device and is the only randomness step_fn should draw from.
    batches(index) -> batch: micro-batch ``index`` (see the module docstring); tensors in it are moved to
        the device. It must be a pure function of the index for a resumed run to follow the same path.
    sample_fn(model, step) -> PIL image: called every ``config.sample_every`` updates on the main process,
        under no_grad with every module in eval mode and the EMA weights swapped in (if EMA is on);
        ``model`` is the unwrapped module. Saved as samples/step-XXXXXX.png (``image_grid`` tiles several).
    keep_ema: at the end, leave the EMA weights in ``model`` (what a trained model should ship with);
        otherwise the model keeps the last optimizer step's weights.
    The model is used in the train/eval modes it comes with (put frozen parts in eval mode yourself).
    """
    config.check()
    if not callable(step_fn) or not callable(batches) or (sample_fn is not None and not callable(sample_fn)):
        raise InvalidParameter("step_fn/batches/sample_fn", "functions (sample_fn may be None)",
                               (step_fn, batches, sample_fn))
    if config.sample_every and sample_fn is None:
        raise InvalidParameter("sample_every", "0 when no sample_fn is given", config.sample_every)
    _check_mixed_precision(config)
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise InvalidParameter("model", "a module with at least one parameter that requires grad", type(model).__name__)
    with run_lock(config.output_dir):  # one run per folder (training/lock.py)
        return _train(config, model, step_fn, batches, sample_fn, resume, keep_ema, trainable)


def _train(config: TrainConfig, model: nn.Module, step_fn: StepFn, batches: Callable[[int], Any],
           sample_fn: Callable[[nn.Module, int], Any] | None, resume: bool, keep_ema: bool,
           trainable: list) -> TrainSummary:

    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu,
                              gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=config.grad_accum))
    output = Path(config.output_dir)
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
    frozen = _fingerprint((name, p) for name, p in model.named_parameters() if not p.requires_grad)
    optimizer = torch.optim.AdamW(_param_groups(trainable, config.weight_decay), lr=config.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = accelerator.unwrap_model(model)
    params = {name: p for name, p in inner.named_parameters() if p.requires_grad}
    persistent = inner.state_dict().keys()
    buffers = {name: b for name, b in inner.named_buffers() if name in persistent}
    ema = EMA(params, config.ema_decay) if config.ema_decay is not None else None

    # 1. resume from the newest complete checkpoint (or refuse to overwrite another run's)
    start, window, resumed_from = 0, [], None
    accelerator.wait_for_everyone()  # the main process cleans stale temp folders before the others look
    newest = latest_complete(output) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        with warnings.catch_warnings():  # the main process has said it
            warnings.simplefilter("ignore")
            newest = latest_complete(output)
    if newest is not None and not resume:
        raise RecomposerError("output_dir", f"{output} holds checkpoints of an earlier run ({newest.name}); "
                                            "resume it (resume=True) or choose a new folder")
    if newest is not None:
        start, window = _restore(newest, config, accelerator, optimizer, params, buffers, ema, frozen)
        resumed_from = start
    log = LossLog(output / "loss.jsonl", through_step=start) if accelerator.is_main_process else None
    latest = newest

    # 2. the loop
    shown = ExitStack()  # progress (progress.py): the main process's steps, with the loss
    # with a time limit the count is uncounted: an ETA to --steps would say hours where the limit says minutes
    total = config.steps if config.max_minutes is None else None
    advance = shown.enter_context(stage("training", total=total)) if accelerator.is_main_process else None
    samples, last_loss, done = [], log.last_loss() if log else None, start
    started, cpu_before = time.monotonic(), (log.last("cpu_seconds") or 0.0) if log else 0.0
    try:
        for step in range(start, config.steps):
            lr = learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            total = torch.zeros((), device=accelerator.device)
            for micro in range(config.grad_accum):
                index = (step * config.grad_accum + micro) * accelerator.num_processes + accelerator.process_index
                global_seed, step_seed = step_seeds(config.seed, step, micro, accelerator.process_index)
                torch.manual_seed(global_seed)
                generator = torch.Generator(device=accelerator.device).manual_seed(step_seed)
                batch = send_to_device(batches(index), accelerator.device)
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        loss = step_fn(model, batch, generator)
                    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                        got = f"shape {list(loss.shape)}" if isinstance(loss, torch.Tensor) else loss
                        raise InvalidParameter("step_fn", "a function returning a scalar loss tensor", got)
                    accelerator.backward(loss)  # divides by grad_accum
                    if accelerator.sync_gradients and config.grad_clip is not None:
                        accelerator.clip_grad_norm_(list(params.values()), config.grad_clip)
                    optimizer.step()  # a no-op until the last micro-batch (accelerate's accumulation)
                    optimizer.zero_grad(set_to_none=True)
                total += loss.detach().float()
            if not accelerator.sync_gradients:  # our count and accelerate's must agree, or the updates would drift
                raise RuntimeError("accelerate did not step the optimizer after grad_accum micro-batches")
            if ema is not None:
                ema.update(params)
            loss_value = accelerator.reduce(total / config.grad_accum, reduction="mean").item()
            done = step + 1
            if not math.isfinite(loss_value):
                raise NonFiniteResult("loss", f"is {loss_value} at step {done}; nothing after "
                                              f"{latest.name if latest else 'the start'} was saved")
            window.append(loss_value)
            if done % config.log_every == 0:
                last_loss = sum(window) / len(window)
                if log:
                    log.append({"step": done, "loss": last_loss, "lr": lr, "time": round(time.time(), 3),
                                "cpu_seconds": round(cpu_before + time.process_time(), 2)})
                window = []
            if advance is not None:
                advance(done, f"loss {loss_value:.4g}" + _time_left(config.max_minutes, started))
            if config.sample_every and done % config.sample_every == 0 and accelerator.is_main_process:
                samples.append(_sample(sample_fn, inner, params, ema, done, output))
            out_of_time = _past(config.max_minutes, started, accelerator)
            if done % config.checkpoint_every == 0 or done == config.steps or out_of_time:
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    log.sync()  # the log through this step is durable before the checkpoint that vouches for it
                    latest = save_checkpoint(
                        output, done, model={**params, **buffers}, ema=ema.shadow if ema else None,
                        optimizer=optimizer.state_dict(), keep=config.keep_checkpoints,
                        state=_state(config, accelerator, params, frozen, ema, window))
                accelerator.wait_for_everyone()
            if out_of_time:
                break
    finally:
        shown.close()
        if log:
            log.close()
    if keep_ema and ema is not None:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(ema.shadow[name])
    return TrainSummary(done, last_loss, resumed_from, latest if accelerator.is_main_process else None,
                        output / "loss.jsonl", tuple(samples))


def _past(minutes: float | None, started: float, accelerator: Accelerator) -> bool:
    """Whether the wall-time budget is spent (every process decides alike: the main process's clock)."""
    if minutes is None:
        return False
    over = torch.tensor(float(time.monotonic() - started > 60 * minutes), device=accelerator.device)
    return bool(accelerator.reduce(over, reduction="sum") > 0) if accelerator.num_processes > 1 else bool(over)


def step_seeds(seed: int, step: int, micro: int, rank: int) -> tuple[int, int]:
    """Two independent 63-bit seeds for (seed, step, micro, rank): the global torch RNG's and step_fn's."""
    words = np.random.SeedSequence([seed, step, micro, rank]).generate_state(4, dtype=np.uint64)
    return int(words[0]) >> 1, int(words[1]) >> 1


def _check_mixed_precision(config: TrainConfig) -> None:
    """Refuse a precision the device accelerate will pick cannot do, before anything is built."""
    if config.cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    elif torch.backends.mps.is_available():
        device = "mps"
    else:
        device = "cpu"
    if config.mixed_precision == "fp16" and device == "cpu":
        raise InvalidParameter("mixed_precision", "'no' or 'bf16' on the CPU (fp16 needs a GPU)", "fp16")
    if config.mixed_precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise InvalidParameter("mixed_precision", "'no' or 'fp16' on this GPU (it has no bf16)", "bf16")


def _param_groups(trainable: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Weight decay on matrices and kernels only; biases, norms and embeddings' 1-D scales are not shrunk."""
    decayed = [p for _, p in trainable if p.ndim >= 2]
    plain = [p for _, p in trainable if p.ndim < 2]
    groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _fingerprint(named: Iterator[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the frozen parameters."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in named:
        h.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        h.update(tensor.detach().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def _state(config: TrainConfig, accelerator: Accelerator, params: dict, frozen: str, ema, window: list) -> dict:
    import accelerate
    import safetensors

    from .. import __version__

    return {"config": config.as_json(), "processes": accelerator.num_processes, "trainable": list(params),
            "frozen_sha256": frozen, "ema_updates": ema.updates if ema else None, "loss_window": list(window),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "versions": {"recomposer": __version__, "torch": torch.__version__, "accelerate": accelerate.__version__,
                         "safetensors": safetensors.__version__, "python": sys.version.split()[0]}}


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of update ``step`` (0-based): warm-up, stable, decay (WSD; Hu et al. 2024, MiniCPM §4),

        lr(s) = lr · min(1, (s + 1) / warmup) · min(1, (steps − s) / cooldown)

    either factor 1 when its length is 0. The decay is a function of ``steps`` alone, so a run trained at a
    constant rate can be resumed with ``cooldown_steps`` and a final ``steps`` to branch a decayed copy."""
    up = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    down = min(1.0, (config.steps - step) / config.cooldown_steps) if config.cooldown_steps else 1.0
    return config.lr * up * down


def _restore(folder: Path, config: TrainConfig, accelerator: Accelerator, optimizer, params: dict, buffers: dict,
             ema, frozen: str) -> tuple[int, list[float]]:
    """Load a checkpoint into the model, EMA and optimizer; refuse one that belongs to another run."""
    ckpt = load_checkpoint(folder)
    state, source = ckpt.state, str(folder / "state.json")
    old, new = state.get("config", {}), config.as_json()
    for field in TRAJECTORY:
        if old.get(field) != new[field]:
            raise ModelError(source, f"was trained with {field}={old.get(field)!r}, this run has {new[field]!r}; "
                                     f"resume with the same {field} or choose a new output_dir")
    if state.get("processes") != accelerator.num_processes:
        raise ModelError(source, f"was trained on {state.get('processes')} processes, this run has "
                                 f"{accelerator.num_processes}: its batches would differ")
    if state.get("trainable") != list(params):
        raise ModelError(source, "names other trainable parameters than this model's (a different adapter?)")
    if state.get("frozen_sha256") != frozen:
        raise ModelError(source, "was trained over other frozen weights than this model's (a different backbone?)")
    copy_into({**params, **buffers}, ckpt.model, str(folder / "model.safetensors"))
    if ema is not None:
        copy_into(ema.shadow, ckpt.ema or {}, str(folder / "ema.safetensors"))
        ema.updates = state.get("ema_updates") or 0
    _load_optimizer(optimizer, ckpt.optimizer, str(folder / "optimizer.safetensors"))
    if accelerator.scaler is not None and state.get("scaler"):
        accelerator.scaler.load_state_dict(state["scaler"])
    return ckpt.step, list(state.get("loss_window", []))


def _load_optimizer(optimizer, saved: dict, source: str) -> None:
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entry in saved.get("state", {}).items():
        if not isinstance(index, int) or not 0 <= index < len(ordered):
            raise ModelError(source, f"has state for parameter {index!r}, the optimizer has {len(ordered)}")
        for key, tensor in entry.items():
            if isinstance(tensor, torch.Tensor) and tensor.ndim and tensor.shape != ordered[index].shape:
                raise ModelError(source, f"state.{index}.{key} has shape {list(tensor.shape)}, "
                                         f"the parameter's is {list(ordered[index].shape)}")
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(source, f"does not fit this optimizer ({e})") from None


def _sample(sample_fn, inner: nn.Module, params: dict, ema, step: int, output: Path) -> Path:
    from PIL import Image

    with torch.no_grad(), _eval_mode(inner), (ema.applied(params) if ema else _nothing()):
        image = sample_fn(inner, step)
    if not isinstance(image, Image.Image):
        raise InvalidParameter("sample_fn", "a function returning a PIL image", type(image).__name__)
    return save_png(image, output / "samples" / f"step-{step:06d}.png")


@contextmanager
def _eval_mode(module: nn.Module):
    """Every submodule in eval mode, then each back in its own mode."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def _nothing():
    yield


class EMA:
    """Exponential moving average of parameters: shadow ← decay·shadow + (1 − decay)·param after each update
    (Polyak averaging). The shadow is kept in fp32 on the parameters' device."""

    def __init__(self, params: dict[str, torch.Tensor], decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, torch.Tensor]) -> None:
        for name, p in params.items():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)
        self.updates += 1

    @contextmanager
    def applied(self, params: dict[str, torch.Tensor]):
        """The EMA weights in the model for the duration; the trained weights back exactly afterwards."""
        backup = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(backup[name])


class LossLog:
    """loss.jsonl: one JSON object per line, each appended with a single write(), so a kill leaves whole
    lines and at most one torn last line. Opening it for a run resumed at step k rewrites it (atomically)
    with the lines of steps <= k only, so a resumed run's log has no duplicates and no gaps."""

    def __init__(self, path: Path, through_step: int):
        self.path = path
        kept = [r for r in read_loss_log(path) if r["step"] <= through_step]
        self._records = kept[-1:]
        atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))
        self._last = kept[-1]["loss"] if kept else None
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def append(self, record: dict) -> None:
        data = (json.dumps(record) + "\n").encode()
        while data:
            data = data[os.write(self._fd, data):]
        self._last, self._records = record["loss"], [record]

    def last_loss(self) -> float | None:
        return self._last

    def last(self, key: str):
        """``key`` of the newest record that has it (e.g. the CPU seconds spent so far), or None."""
        return self._records[-1].get(key) if self._records else None

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _time_left(max_minutes: float | None, started: float) -> str:
    """What the bar's note adds under --max-minutes: the bar's ETA counts to --steps, the run may stop first."""
    if max_minutes is None:
        return ""
    left = max(0.0, max_minutes - (time.monotonic() - started) / 60)
    return f", --max-minutes stops it in {left:.0f} min"


def read_loss_log(path: str | Path) -> list[dict]:
    """The records of a loss.jsonl, in order; a torn or foreign line is skipped with a warning."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        else:
            warnings.warn(f"{path}:{number}: not a loss record, skipped (a write cut short?)", stacklevel=2)
    return records
