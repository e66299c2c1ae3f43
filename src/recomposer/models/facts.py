"""What a model is, read from its configuration files without loading it: enough to check a request's image
sides, and whether its memory fits the machine (models/memory.py's measured estimate), before anything
heavy loads.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..requests import is_parts_dir
from .memory import estimate, refuse_over


@dataclass(frozen=True)
class ModelShape:
    vae_factor: int  # pixels per latent cell along a side
    native_size: int  # the side the UNet was made for, in pixels
    vae_channels: int  # the VAE decoder's channels at full resolution (block_out_channels[0])
    unet_channels: int  # the UNet's channels at latent resolution (block_out_channels[0])

    def memory(self, width: int, height: int, batch: int, rows: int, item: int = 4) -> int:
        """Peak bytes of one run above the loaded model (models/memory.py)."""
        return estimate(self.vae_factor, self.vae_channels, self.unet_channels, item, width, height, batch, rows)


def _config(path: Path) -> dict:
    return json.loads(path.read_text())


def _shape(vae: dict, unet: dict) -> ModelShape:
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    sample = unet.get("sample_size", 64)
    sample = sample if isinstance(sample, int) else sample[0]
    return ModelShape(factor, sample * factor, vae["block_out_channels"][0], unet["block_out_channels"][0])


def peek(model: str | None = None, config: str | None = None) -> ModelShape | None:
    """The shape of ``--model`` (None: the bundled model), or None where the configs cannot be read (the
    loader then says what is wrong, in its own words)."""
    from . import bundled

    try:
        if model is None or is_parts_dir(Path(model)):
            return _shape(bundled.VAE_CONFIG, bundled.UNET_CONFIG)
        root = Path(config) if Path(model).is_file() and config else Path(model)
        return _shape(_config(root / "vae" / "config.json"), _config(root / "unet" / "config.json"))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def check_fits(shape: ModelShape | None, width: int, height: int, batch: int, rows: int, device: torch.device,
               dtype: torch.dtype) -> None:
    """Refuse a size whose estimated memory exceeds what ``device`` has free, before anything loads."""
    if shape is not None:
        need = shape.memory(width, height, batch, rows, torch.finfo(dtype).bits // 8)
        refuse_over(need, device, width, height, batch)
