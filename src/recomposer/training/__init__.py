"""Training on accelerate: one loop (trainer.py) that every adapter drives with its own step function,
and checkpoints that are written all or nothing and resume exactly (checkpoint.py)."""

from .checkpoint import Checkpoint, latest_complete, load_checkpoint, prune_checkpoints, verify_checkpoint
from .trainer import EMA, TrainConfig, TrainSummary, image_grid, read_loss_log, train

__all__ = ["EMA", "Checkpoint", "TrainConfig", "TrainSummary", "image_grid", "latest_complete", "load_checkpoint",
           "prune_checkpoints", "read_loss_log", "train", "verify_checkpoint"]
