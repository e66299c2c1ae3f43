"""The training loop (RELIABILITY.md R1, R4, R6, R7): resumed runs follow the uninterrupted loss curve to
1e-6 after a clean stop, after kill -9 mid-run and after kill -9 mid-save; checkpoints are all or nothing,
pruned only after the new one is complete, and never read by pickle; accelerate does the stepping."""

import hashlib
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from train_helper import STEPS, batches, config, step_fn, tiny_model

from recomposer.errors import InvalidParameter, ModelError, UnsafeFile
from recomposer.training import checkpoint as checkpoint_module
from recomposer.training import (latest_complete, load_checkpoint, prune_checkpoints, read_loss_log, train,
                                 verify_checkpoint)
from recomposer.training import trainer as trainer_module

HELPER = Path(__file__).with_name("train_helper.py")
SRC = Path(__file__).resolve().parents[1] / "src" / "recomposer"


def losses(output_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_loss_log(Path(output_dir) / "loss.jsonl")]


def assert_same_curve(got, want):
    assert [s for s, _ in got] == [s for s, _ in want], "the log must hold each step once, in order"
    worst = max(abs(a - b) for (_, a), (_, b) in zip(got, want, strict=True))
    assert worst <= 1e-6, f"loss curves differ by {worst:g}"


def assert_same_weights(folder, reference_folder):
    for name in ("model.safetensors", "ema.safetensors"):
        got, want = load_file(str(folder / name)), load_file(str(reference_folder / name))
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")


def temp_folders(output_dir) -> list[str]:
    root = Path(output_dir) / "checkpoints"
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".")) if root.is_dir() else []


def complete_steps(output_dir) -> list[int]:
    root = Path(output_dir) / "checkpoints"
    return sorted(int(p.name[5:]) for p in root.glob("step-*") if (p / "COMPLETE").is_file())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 50-step run (grad_accum 2, EMA, warm-up, clipping, dropout, BatchNorm)."""
    out = tmp_path_factory.mktemp("reference")
    summary = train(config(out), tiny_model(), step_fn, batches)
    assert summary.step == STEPS and summary.resumed_from is None
    curve = losses(out)
    assert [s for s, _ in curve] == list(range(1, STEPS + 1))
    assert curve[-1][1] < 0.5 * curve[0][1], "the tiny model should learn"
    return out, curve


# ---------------------------------------------------------------- (a) stop and resume

def test_stopping_at_20_and_resuming_to_50_follows_the_same_curve(tmp_path, reference):
    ref_dir, ref_curve = reference
    first = train(config(tmp_path, steps=20), tiny_model(), step_fn, batches)
    assert first.step == 20 and first.checkpoint == tmp_path / "checkpoints" / "step-000020"
    summary = train(config(tmp_path), tiny_model(seed=0), step_fn, batches)  # a fresh model: all state from disk
    assert summary.resumed_from == 20 and summary.step == STEPS
    assert_same_curve(losses(tmp_path), ref_curve)
    assert summary.loss == ref_curve[-1][1]
    assert_same_weights(summary.checkpoint, ref_dir / "checkpoints" / "step-000050")


def test_a_finished_run_resumed_does_nothing(tmp_path, reference):
    _, ref_curve = reference
    train(config(tmp_path, steps=10), tiny_model(), step_fn, batches)
    again = train(config(tmp_path, steps=10), tiny_model(), step_fn, batches)
    assert again.resumed_from == 10 and again.step == 10 and again.loss == ref_curve[9][1]
    assert complete_steps(tmp_path) == [10]


def test_resuming_with_another_trajectory_or_without_resume_is_refused(tmp_path):
    train(config(tmp_path, steps=10), tiny_model(), step_fn, batches)
    with pytest.raises(ModelError, match=r"state\.json: was trained with lr=0\.02, this run has 0\.01"):
        train(config(tmp_path, lr=1e-2), tiny_model(), step_fn, batches)
    with pytest.raises(ModelError, match="other frozen weights"):
        train(config(tmp_path), tiny_model(seed=1), step_fn, batches)
    with pytest.raises(ValueError, match="^output_dir: .*holds checkpoints of an earlier run"):
        train(config(tmp_path), tiny_model(), step_fn, batches, resume=False)
    assert complete_steps(tmp_path) == [10]


# ---------------------------------------------------------------- (b) kill -9

def _spawn(out, *args):
    return subprocess.Popen([sys.executable, str(HELPER), str(out), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _wait_for(path: Path, process, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"training ended ({process.returncode}) before {path} appeared:\n"
                        f"{process.stdout.read().decode()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)


def _kill(process):
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, "the run finished before the kill: nothing was tested"


def test_kill_9_at_random_points_then_resume_follows_the_same_curve(tmp_path, reference):
    ref_dir, ref_curve = reference
    seed = random.randrange(2**32)
    rng = random.Random(seed)  # printed on failure: the kill points can be replayed
    for delay in (0.6, 0.3):  # two kills, each a random time after the run's first new checkpoint
        before = complete_steps(tmp_path)
        process = _spawn(tmp_path, "--step-sleep", "0.02")  # a step takes >= 40 ms, 10 steps >= 0.4 s
        new = before[-1] + 10 if before else 10
        _wait_for(tmp_path / "checkpoints" / f"step-{new:06d}" / "COMPLETE", process)
        time.sleep(rng.uniform(0.0, delay))  # anywhere, saves included, and well before the run could end
        _kill(process)
        print(f"killed after step {losses(tmp_path)[-1][0]}; complete {complete_steps(tmp_path)}, "
              f"temp {temp_folders(tmp_path)}")
    complete = complete_steps(tmp_path)
    assert complete and complete[-1] < STEPS, f"seed {seed}"
    summary = train(config(tmp_path), tiny_model(), step_fn, batches)
    assert summary.resumed_from == complete[-1], f"seed {seed}: resumed from the newest complete checkpoint"
    assert_same_curve(losses(tmp_path), ref_curve)
    assert_same_weights(summary.checkpoint, ref_dir / "checkpoints" / "step-000050")
    assert temp_folders(tmp_path) == []
    assert complete_steps(tmp_path) == [40, 50]


def test_kill_9_during_a_save_leaves_the_previous_checkpoint_and_resume_follows_the_same_curve(tmp_path, reference):
    ref_dir, ref_curve = reference
    signal_file = tmp_path / "paused-in-save"
    process = _spawn(tmp_path, "--pause-in-save", "20", "--signal", str(signal_file))
    _wait_for(signal_file, process)
    _kill(process)
    assert [s for s, _ in losses(tmp_path)] == list(range(1, 21)), "the kill landed in the save of step 20"
    (half_written,) = temp_folders(tmp_path)
    assert re.fullmatch(r"\.step-000020\..*\.tmp", half_written)
    assert sorted(p.name for p in (tmp_path / "checkpoints" / half_written).iterdir()) == ["model.safetensors"]
    assert complete_steps(tmp_path) == [10] and not (tmp_path / "checkpoints" / "step-000020").exists()

    summary = train(config(tmp_path), tiny_model(), step_fn, batches)
    assert summary.resumed_from == 10
    assert temp_folders(tmp_path) == []
    assert_same_curve(losses(tmp_path), ref_curve)
    assert_same_weights(summary.checkpoint, ref_dir / "checkpoints" / "step-000050")


# ---------------------------------------------------------------- (c) pruning

def test_pruning_keeps_the_newest_complete_checkpoints(tmp_path):
    train(config(tmp_path, steps=20, checkpoint_every=5, keep_checkpoints=2), tiny_model(), step_fn, batches)
    assert complete_steps(tmp_path) == [15, 20] and temp_folders(tmp_path) == []
    train(config(tmp_path, steps=23, checkpoint_every=5, keep_checkpoints=1), tiny_model(), step_fn, batches)
    assert complete_steps(tmp_path) == [23]


def test_a_failed_save_deletes_nothing(tmp_path, monkeypatch):
    write_file = checkpoint_module._write_file

    def failing(folder, name, write):
        if folder.name.startswith(".step-000010.") and name == "optimizer.safetensors":
            raise OSError(28, "No space left on device")
        return write_file(folder, name, write)

    monkeypatch.setattr(checkpoint_module, "_write_file", failing)
    with pytest.raises(OSError, match="No space left"):
        train(config(tmp_path, steps=20, checkpoint_every=5, keep_checkpoints=1), tiny_model(), step_fn, batches)
    assert complete_steps(tmp_path) == [5], "the only complete checkpoint survives a failed save"
    assert temp_folders(tmp_path) == []
    verify_checkpoint(tmp_path / "checkpoints" / "step-000005")


def test_prune_never_counts_incomplete_folders(tmp_path):
    root = tmp_path / "checkpoints"
    for step, complete in ((3, False), (5, True), (8, True), (10, False)):
        (root / f"step-{step:06d}").mkdir(parents=True)
        if complete:
            (root / f"step-{step:06d}" / "COMPLETE").write_text("{}")
    deleted = prune_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in deleted) == ["step-000003", "step-000005"]
    # the newest complete one stays; a newer folder without a marker neither counts nor is deleted
    assert sorted(p.name for p in root.iterdir()) == ["step-000008", "step-000010"]
    # a newer leftover with a marker (a corrupt checkpoint resuming skipped) never pushes out the one just written
    (root / "step-000012").mkdir()
    (root / "step-000012" / "COMPLETE").write_text("{}")
    assert prune_checkpoints(tmp_path, keep=1, through_step=8) == []
    assert sorted(p.name for p in root.iterdir()) == ["step-000008", "step-000010", "step-000012"]


# ---------------------------------------------------------------- (d) corrupt and incomplete checkpoints

@pytest.fixture
def two_checkpoints(tmp_path):
    train(config(tmp_path, steps=20), tiny_model(), step_fn, batches)
    return tmp_path, tmp_path / "checkpoints" / "step-000010", tmp_path / "checkpoints" / "step-000020"


def test_a_truncated_checkpoint_is_skipped_and_training_resumes_from_the_one_before(two_checkpoints, reference):
    out, _, newest = two_checkpoints
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelError, match=re.escape(str(weights)) + ".*truncated"):
        load_checkpoint(newest)
    with pytest.warns(UserWarning, match=f"skipping an unusable checkpoint: {re.escape(str(weights))}: has"):
        summary = train(config(out, steps=30), tiny_model(), step_fn, batches)
    assert summary.resumed_from == 10
    assert_same_curve(losses(out), reference[1][:30])


def test_a_checkpoint_without_its_marker_or_with_a_flipped_byte_is_skipped(two_checkpoints):
    out, older, newest = two_checkpoints
    (newest / "COMPLETE").unlink()
    with pytest.warns(UserWarning, match="step-000020: has no COMPLETE marker"):
        assert latest_complete(out) == older
    data = bytearray((older / "ema.safetensors").read_bytes())
    data[-1] ^= 1
    (older / "ema.safetensors").write_bytes(bytes(data))
    with pytest.warns(UserWarning) as caught:
        assert latest_complete(out) is None
    assert [str(w.message).split(": ", 1)[1] for w in caught] == [
        f"{newest}: has no COMPLETE marker: the save did not finish",
        f"{older / 'ema.safetensors'}: does not match the SHA-256 in its marker: corrupt"]


def test_a_checkpoint_that_does_not_fit_the_model_names_the_file(two_checkpoints):
    out, _, newest = two_checkpoints
    state = load_file(str(newest / "model.safetensors"))
    del state["body.4.bias"]
    _replace(newest, "model.safetensors", lambda p: save_file(state, str(p)))
    with pytest.raises(ModelError, match=r"model\.safetensors: lacks 1 tensors the model needs, e\.g\. body\.4\.bias"):
        train(config(out, steps=30), tiny_model(), step_fn, batches)


def _replace(folder: Path, name: str, write) -> None:
    """Replace a checkpoint file and update its marker, as an attacker (or a careless copy) could."""
    write(folder / name)
    marker = json.loads((folder / "COMPLETE").read_text())
    data = (folder / name).read_bytes()
    marker["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "COMPLETE").write_text(json.dumps(marker))


# ---------------------------------------------------------------- (e) parameters

def test_fp16_on_the_cpu_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(InvalidParameter, match=r"^mixed_precision: must be 'no' or 'bf16' on the CPU"):
        train(config(out, mixed_precision="fp16"), tiny_model(), step_fn, batches)
    assert not out.exists()


@pytest.mark.parametrize(("field", "value"), [("steps", 0), ("grad_accum", 0), ("lr", 0.0), ("lr", float("nan")),
                                              ("ema_decay", 1.0), ("mixed_precision", "fp8"), ("keep_checkpoints", 0),
                                              ("grad_clip", -1.0), ("seed", -1), ("batch_size", True),
                                              ("cooldown_steps", -1)])
def test_invalid_settings_name_their_field(tmp_path, field, value):
    with pytest.raises(InvalidParameter, match=f"^{field}: must be"):
        train(config(tmp_path / "run", **{field: value}), tiny_model(), step_fn, batches)
    assert not (tmp_path / "run").exists()


def test_the_learning_rate_warms_up_holds_and_decays_to_the_last_step():
    c = config("unused", steps=50, lr=1.0, warmup_steps=5, cooldown_steps=10)
    rates = [trainer_module.learning_rate(c, s) for s in range(50)]
    assert rates[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert rates[5:40] == [1.0] * 35
    assert rates[40:] == pytest.approx([(50 - s) / 10 for s in range(40, 50)])  # the last update still moves: 0.1
    overlap = config("unused", steps=10, lr=2.0, warmup_steps=4, cooldown_steps=10)
    assert trainer_module.learning_rate(overlap, 1) == pytest.approx(2.0 * 0.5 * 0.9)  # the two factors multiply
    with pytest.raises(InvalidParameter, match=r"^cooldown_steps: must be at most steps \(50\)"):
        config("unused", steps=50, cooldown_steps=51).check()


def test_a_constant_rate_run_resumed_with_a_cooldown_decays_from_where_it_stopped(tmp_path, monkeypatch):
    train(config(tmp_path, steps=20, grad_accum=1), tiny_model(), step_fn, batches)
    seen, step = [], torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    summary = train(config(tmp_path, steps=30, grad_accum=1, cooldown_steps=10), tiny_model(), step_fn, batches)
    assert summary.resumed_from == 20 and summary.step == 30
    assert seen == pytest.approx([2e-2 * (30 - s) / 10 for s in range(20, 30)])


# ---------------------------------------------------------------- (f) no pickle, ever

class _Canary:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))  # would create the canary file if ever unpickled


def test_a_pickle_in_place_of_the_optimizer_state_is_refused_unread(two_checkpoints, tmp_path):
    out, older, newest = two_checkpoints
    canary = tmp_path / "canary"
    _replace(newest, "optimizer.safetensors", lambda p: p.write_bytes(pickle.dumps(_Canary(canary), protocol=4)))
    with pytest.raises(UnsafeFile, match=r"optimizer\.safetensors: is a pickle"):
        load_checkpoint(newest)
    with pytest.warns(UserWarning, match="optimizer.safetensors: is a pickle"):
        assert latest_complete(out) == older
    assert not canary.exists()


def test_the_training_code_never_pickles():
    pattern = re.compile(r"\btorch\.(load|save)\s*\(|^\s*(import|from)\s+pickle\b|\bpickle\.\w+\s*\(|\bnp\.load\b",
                         re.MULTILINE)
    for file in sorted((SRC / "training").glob("*.py")):
        assert not pattern.search(file.read_text()), file


# ---------------------------------------------------------------- (g) sample grids

def test_sample_grids_at_their_steps_with_ema_weights_in_eval_mode(tmp_path):
    from PIL import Image

    seen = {}

    def sample_fn(model, step):
        seen[step] = ({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                      any(m.training for m in model.modules()), torch.is_grad_enabled())
        with torch.no_grad():
            values = model(torch.linspace(-2, 2, 64).reshape(16, 4))  # (16, 4)
        pixels = ((values.reshape(8, 8) + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
        return trainer_module.image_grid([Image.fromarray(pixels)] * 4, columns=2)

    model = tiny_model()
    summary = train(config(tmp_path, steps=7, sample_every=3, checkpoint_every=3), model, step_fn, batches, sample_fn)
    assert sorted(seen) == [3, 6]
    assert [p.name for p in summary.samples] == ["step-000003.png", "step-000006.png"]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step-000003.png", "step-000006.png"]
    assert Image.open(tmp_path / "samples" / "step-000006.png").size == (16, 16)
    ema = load_file(str(tmp_path / "checkpoints" / "step-000006" / "ema.safetensors"))
    weights, training, grad = seen[6]
    assert not training and not grad
    for name, value in weights.items():
        torch.testing.assert_close(value, ema[name], rtol=0, atol=0)  # the EMA weights were sampled
    final = load_file(str(tmp_path / "checkpoints" / "step-000007" / "model.safetensors"))
    for name, p in model.named_parameters():  # and the trained ones put back afterwards
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), final[name], rtol=0, atol=0)
    assert model.training, "the model's own mode is restored after sampling"


# ---------------------------------------------------------------- (h) accelerate does the work

def test_accelerate_prepares_the_model_and_optimizer_and_steps_once_per_accumulation(tmp_path, monkeypatch):
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    made, updates = [], []

    class Recording(Accelerator):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            made.append(self)
            self.prepared = None

        def prepare(self, *objects):
            self.prepared = super().prepare(*objects)
            self.prepared[1].optimizer.register_step_post_hook(lambda *_: updates.append(1))  # real AdamW steps
            return self.prepared

    monkeypatch.setattr(trainer_module, "Accelerator", Recording)
    models_seen = []

    def recording_step_fn(model, batch, generator):
        models_seen.append(id(model))
        return step_fn(model, batch, generator)

    train(config(tmp_path, steps=6, grad_accum=3), tiny_model(), recording_step_fn, batches)
    (accelerator,) = made
    model, optimizer = accelerator.prepared
    assert isinstance(optimizer, AcceleratedOptimizer) and accelerator.gradient_accumulation_steps == 3
    assert models_seen == [id(model)] * 18, "step_fn gets the prepared model, 3 micro-batches a step"
    assert len(updates) == 6, "accelerate steps AdamW once per 3 micro-batches"
    state = load_checkpoint(tmp_path / "checkpoints" / "step-000006").optimizer
    assert {float(s["step"]) for s in state["state"].values()} == {6.0}


def test_accumulating_two_half_batches_equals_one_whole_batch(tmp_path):
    """A property of accelerate's accumulation as we drive it: the loss and gradients of a mean-reduced
    loss over two halves (each scaled by 1/2) equal those of the whole batch."""
    def plain_model():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))

    def whole(index):
        return {key: torch.cat([batches(2 * index)[key], batches(2 * index + 1)[key]]) for key in ("x", "y")}

    def plain_step(model, batch, generator):
        return F.mse_loss(model(batch["x"]), batch["y"])

    settings = {"steps": 8, "ema_decay": None, "checkpoint_every": 8}
    train(config(tmp_path / "halves", grad_accum=2, **settings), plain_model(), plain_step, batches)
    train(config(tmp_path / "whole", grad_accum=1, **settings), plain_model(), plain_step, whole)
    a, b = losses(tmp_path / "halves"), losses(tmp_path / "whole")
    assert_same_curve(a, b)
    halves = load_file(str(tmp_path / "halves" / "checkpoints" / "step-000008" / "model.safetensors"))
    wholes = load_file(str(tmp_path / "whole" / "checkpoints" / "step-000008" / "model.safetensors"))
    for name in halves:
        torch.testing.assert_close(halves[name], wholes[name], rtol=0, atol=1e-6)


def test_loss_log_lines_are_whole_and_a_torn_last_line_is_dropped_on_resume(tmp_path, reference):
    train(config(tmp_path, steps=10), tiny_model(), step_fn, batches)
    with open(tmp_path / "loss.jsonl", "a") as f:  # what a kill after step 10 could leave: more steps, a torn line
        f.write(json.dumps({"step": 11, "loss": 9.0}) + "\n" + '{"step": 12, "lo')
    with pytest.warns(UserWarning, match="loss.jsonl:12: not a loss record"):
        train(config(tmp_path, steps=15), tiny_model(), step_fn, batches)
    assert_same_curve(losses(tmp_path), reference[1][:15])
    assert all(line.endswith("}") for line in (tmp_path / "loss.jsonl").read_text().splitlines())
    assert os.stat(tmp_path / "loss.jsonl").st_size > 0
