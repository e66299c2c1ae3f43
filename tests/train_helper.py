"""A tiny training run shared by tests/test_trainer.py and its kill -9 subprocesses.

The model has a frozen input layer (not saved, fingerprinted), BatchNorm (buffers that change without
gradients) and Dropout (draws from the global RNG): everything a resumed run must replay.

    python tests/train_helper.py OUTPUT_DIR [--steps N] [--step-sleep S] [--pause-in-save STEP --signal FILE]

--step-sleep slows each micro-batch so that a kill lands mid-run; --pause-in-save makes the save of
checkpoint STEP stop (touching FILE) after its first file is written, so that a kill lands mid-save.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

STEPS = 50


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(4, 16).requires_grad_(False)  # a stand-in for a frozen backbone
        self.body = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.SiLU(), nn.Dropout(0.1), nn.Linear(32, 4))

    def forward(self, x):  # (B, 4) -> (B, 4)
        return self.body(self.frozen(x))


def tiny_model(seed: int = 0) -> Tiny:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Tiny()


_W = torch.linspace(-1.0, 1.0, 16).reshape(4, 4)


def batches(index: int) -> dict:
    """Micro-batch ``index``: a pure function of the index."""
    g = torch.Generator().manual_seed(1000 + index)
    x = torch.randn(8, 4, generator=g)  # (B, 4)
    return {"x": x, "y": torch.sin(x @ _W)}


def step_fn(model, batch, generator):
    """Denoising-flavoured regression: noise from the step's generator, dropout from the global RNG."""
    noise = torch.randn(batch["x"].shape, generator=generator, device=batch["x"].device)
    return F.mse_loss(model(batch["x"] + 0.1 * noise), batch["y"])


def config(output_dir, **changes):
    from recomposer.training import TrainConfig

    settings = {"steps": STEPS, "batch_size": 8, "lr": 2e-2, "warmup_steps": 5, "weight_decay": 0.01, "grad_accum": 2,
                "grad_clip": 1.0, "ema_decay": 0.9, "log_every": 1, "checkpoint_every": 10, "keep_checkpoints": 2,
                "seed": 3}
    return TrainConfig(output_dir=output_dir, **{**settings, **changes})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--pause-in-save", type=int, default=None)
    parser.add_argument("--signal", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the tests' conftest: the same arithmetic, bit for bit

    from recomposer.training import checkpoint, train

    if args.pause_in_save is not None:
        write_file = checkpoint._write_file

        def pausing_write_file(folder, name, write):
            digest = write_file(folder, name, write)
            if folder.name.startswith(f".step-{args.pause_in_save:06d}.") and name == "model.safetensors":
                Path(args.signal).touch()
                time.sleep(600)  # killed here, half-way through the save
            return digest

        checkpoint._write_file = pausing_write_file

    def slow_step_fn(model, batch, generator):
        time.sleep(args.step_sleep)
        return step_fn(model, batch, generator)

    train(config(args.output_dir, steps=args.steps), tiny_model(), slow_step_fn, batches)


if __name__ == "__main__":
    sys.exit(main())
