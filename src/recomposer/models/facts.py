"""What a model is, read from its configuration files without loading it: enough to check a request's image
sides, and whether its memory fits the machine, before anything heavy loads.

Memory of one sampling run, estimated from the configs (no-grad inference; every figure in elements times
the dtype's bytes), for ``rows`` UNet rows (the batch times the guidance terms) of h × w latents:
- the UNet keeps its skip connections until the up path reads them: Σ_levels (layers + 1) · c_l · h·w / 4^l,
  plus a working set of about six tensors of the widest level (c_l · h·w / 4^l): resnet norms and convs;
- the VAE decoder (one image at a time) works at full resolution with its first block's channels c₀ and
  about four tensors of c₀ · H·W (an upsampled input, norm, conv out, the residual), the largest cost at
  big sizes (Stable Diffusion's decoder at 4096² needs tens of GB);
- plus the weights themselves.
Attention scores are not counted: torch's scaled-dot-product attention does not materialise them. The
estimate is a lower bound: a size it refuses cannot run; one it passes may still be slow.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import RecomposerError


@dataclass(frozen=True)
class ModelShape:
    vae_factor: int  # pixels per latent cell along a side
    native_size: int  # the side the UNet was made for, in pixels
    latent_channels: int
    unet_channels: tuple[int, ...]  # block_out_channels, from the finest level
    unet_layers: int  # layers per block
    vae_channels: int  # the VAE decoder's channels at full resolution (block_out_channels[0])
    weight_bytes: int  # the weights files' sizes

    def memory(self, width: int, height: int, rows: int, dtype_bytes: int = 4) -> int:
        """Peak bytes of one run (module docstring)."""
        cells = (width // self.vae_factor) * (height // self.vae_factor)
        level = [c * cells / 4 ** i for i, c in enumerate(self.unet_channels)]
        unet = rows * (sum((self.unet_layers + 1) * x for x in level) + 6 * max(level))
        vae = 4 * self.vae_channels * width * height
        return int(max(unet, vae) * dtype_bytes + self.weight_bytes)


def is_parts_dir(path: Path) -> bool:
    """A folder of bundled-format parts (``recomposer train vae/base/composer --parts``), not a diffusers one."""
    return not (path / "model_index.json").is_file() and (path / "vae.json").is_file() \
        and (path / "unet.json").is_file()


def _config(path: Path) -> dict:
    return json.loads(path.read_text())


def _shape(vae: dict, unet: dict, weights: int) -> ModelShape:
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    sample = unet.get("sample_size", 64)
    sample = sample if isinstance(sample, int) else sample[0]
    layers = unet.get("layers_per_block", 2)
    return ModelShape(factor, sample * factor, vae.get("latent_channels", 4), tuple(unet["block_out_channels"]),
                      layers if isinstance(layers, int) else max(layers), vae["block_out_channels"][0], weights)


def _size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors") if p.is_file())


def peek(model: str | None = None, config: str | None = None) -> ModelShape | None:
    """The shape of ``--model`` (None: the bundled model), or None where the configs cannot be read (the
    loader then says what is wrong, in its own words)."""
    from . import bundled

    try:
        if model is None or is_parts_dir(Path(model)):
            return _shape(bundled.VAE_CONFIG, bundled.UNET_CONFIG, _size_of(Path(model) if model else bundled.WEIGHTS))
        root = Path(config) if Path(model).is_file() and config else Path(model)
        weights = Path(model).stat().st_size if Path(model).is_file() else _size_of(root)
        return _shape(_config(root / "vae" / "config.json"), _config(root / "unet" / "config.json"), weights)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def available_memory(device: str) -> int | None:
    """Bytes free for a run on ``device`` (a resolved name: cpu, cuda, cuda:N, mps), or None if unknown."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    if device == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def check_fits(shape: ModelShape | None, width: int, height: int, rows: int, device: str, dtype_bytes: int,
               field: str = "width") -> None:
    """Refuse a size whose estimated memory exceeds what ``device`` has free, before anything loads."""
    if shape is None:
        return
    need, free = shape.memory(width, height, rows, dtype_bytes), available_memory(device)
    if free is not None and need > free:
        raise RecomposerError(field, f"{width}x{height} with {rows} UNet rows needs about {need / 2**30:.1f} GiB "
                                     f"on {device}, which has {free / 2**30:.1f} GiB free; choose a smaller size "
                                     "or batch")
