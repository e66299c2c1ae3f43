"""Will a run fit in memory? Refuse one that cannot, before it starts (RELIABILITY R10).

The peak of a sampling run is the VAE decoder at full resolution (its first up block holds several
tensors of ``block_out_channels[0]`` channels per pixel of the whole batch), or, for many rows per
step, the UNet at latent resolution. Measured on the bundled model (fp32, CPU), the peak above the
loaded model is ~1.0 KB per pixel, eight such tensors: 60 MB at 256², 290 MB at 512², 1.03 GB at
1024² (``/usr/bin/time -f %M``). The estimate uses those factors; it refuses only what clearly cannot
run, so it errs large, never small, for the models we ship.
"""

import torch

from ..errors import InvalidParameter

VAE_TENSORS = 8  # full-resolution tensors of block_out_channels[0] channels alive at the decoder's peak
UNET_TENSORS = 12  # latent-resolution tensors of block_out_channels[0] channels per row at the UNet's peak


def estimate(factor: int, vae_channels: int, unet_channels: int, item: int, width: int, height: int, batch: int,
             rows: int) -> int:
    """Bytes of a run from the model's shape alone (models/facts.py has it before the model loads)."""
    vae = batch * width * height * vae_channels * item * VAE_TENSORS
    unet = rows * batch * (width // factor) * (height // factor) * unet_channels * item * UNET_TENSORS
    return max(vae, unet)


def run_bytes(backbone, width: int, height: int, batch: int, rows: int) -> int:
    """Bytes a sampling run of ``batch`` images with ``rows`` condition sets per step needs on top of the model."""
    return estimate(backbone.vae_factor, backbone.vae.config.block_out_channels[0],
                    backbone.unet.config.block_out_channels[0], torch.finfo(backbone.dtype).bits // 8,
                    width, height, batch, rows)


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a run on ``device``, or None where we cannot tell."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    if device.type == "cpu":
        import psutil

        return psutil.virtual_memory().available
    return None


def check_fits(backbone, width: int, height: int, batch: int, rows: int) -> None:
    """Refuse a run that needs more memory than the device has free, naming what to change."""
    refuse_over(run_bytes(backbone, width, height, batch, rows), backbone.device, width, height, batch)


def refuse_over(need: int, device: torch.device, width: int, height: int, batch: int) -> None:
    free = available_bytes(device)
    if free is not None and need > free:
        raise InvalidParameter("size", f"a size and batch that fit in memory: {width}x{height} x {batch} needs about "
                                       f"{need / 2**30:.1f} GiB, {device} has {free / 2**30:.1f} GiB free",
                               f"{width}x{height}, batch {batch}")


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation failure from torch (CUDA or CPU) or Python."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
