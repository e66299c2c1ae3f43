"""Device and dtype selection, with a clear error when the machine cannot do what was asked."""

import torch

from ..errors import InvalidParameter
from ..requests import DTYPE_NAMES

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.float16, torch.bfloat16)))


def resolve_device(name: str) -> torch.device:
    """'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidParameter("device", "auto, cpu, cuda, cuda:N or mps", name) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidParameter("device", "a device this machine has (no CUDA GPU here; use cpu)", name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidParameter("device", f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}", name)
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise InvalidParameter("device", "a device this machine has (no Apple GPU here; use cpu)", name)
    elif device.type != "cpu":
        raise InvalidParameter("device", "auto, cpu, cuda, cuda:N or mps", name)
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'fp32', 'fp16' or 'bf16'; fp16 needs a GPU, bf16 a device that supports it."""
    if name not in DTYPES:
        raise InvalidParameter("dtype", "one of " + ", ".join(DTYPES), name)
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise InvalidParameter("dtype", "fp32 or bf16 on cpu (fp16 needs cuda or mps)", name)
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InvalidParameter("dtype", "fp32 or fp16 on this GPU (it has no bf16)", name)
    if dtype == torch.bfloat16 and device.type == "mps":
        raise InvalidParameter("dtype", "fp32 or fp16 on mps", name)
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]
