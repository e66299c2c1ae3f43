"""Weights come from safetensors files only, and a file is judged by its bytes, not its name.

A safetensors file is ``u64 little-endian header length N | N bytes of JSON header | data``.
We check all of it before any tensor is built: the header fits in the file and is UTF-8 JSON,
every tensor's dtype is known, its byte range lies inside the data and matches its shape, no two
ranges overlap and together they cover the data exactly, with no gap (as the safetensors library
itself requires). Pickles (raw or inside a torch zip) are recognised by their first bytes and
refused without being unpickled (RELIABILITY.md R1, R2).
"""

import json
import math
import struct
from pathlib import Path

import torch

from ..errors import UnsafeFile

_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
_MAX_HEADER = 100 * 2**20  # the safetensors library's own limit


def sniff(head: bytes) -> str:
    """Name the format of a file from its first bytes: 'safetensors', 'pickle', 'zip' or 'unknown'."""
    if len(head) >= 9:  # first: a header length of 0x280, 0x380, ... also starts with the pickle PROTO bytes
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= _MAX_HEADER and head[8:9] == b"{":
            return "safetensors"  # only ever parsed as JSON, so a pickle taken for one is still never unpickled
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"  # PROTO opcode: every pickle since protocol 2 starts with it
    if head[:4] == b"PK\x03\x04":
        return "zip"  # torch.save's default container (holds data.pkl)
    return "unknown"


def check_safetensors(path: str | Path) -> dict:
    """Validate a safetensors file's structure without reading its tensors; return its header."""
    path = Path(path)
    field = str(path)
    if not path.is_file():
        raise UnsafeFile(field, "no such weights file")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
        kind = sniff(head)
        if kind == "pickle":
            raise UnsafeFile(field, "is a pickle; recomposer never unpickles weights (convert it to .safetensors)")
        if kind == "zip":
            raise UnsafeFile(field, "is a torch zip archive holding a pickle; recomposer loads .safetensors only")
        if kind != "safetensors":
            raise UnsafeFile(field, "is not a safetensors file (bad magic bytes)")
        (n,) = struct.unpack("<Q", head[:8])
        if 8 + n > size:
            raise UnsafeFile(field, f"header length {n} runs past the end of the file ({size} bytes): truncated?")
        f.seek(8)
        try:
            header = json.loads(f.read(n).decode("utf-8"))  # bytes would let json guess UTF-16/32
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UnsafeFile(field, f"header is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise UnsafeFile(field, "header is not a JSON object")
    data_size = size - 8 - n
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise UnsafeFile(field, "__metadata__ is not a JSON object of strings")
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise UnsafeFile(field, f"tensor {name!r} lacks dtype/shape/data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _ITEMSIZE:
            raise UnsafeFile(field, f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise UnsafeFile(field, f"tensor {name!r} has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1] <= data_size):
            raise UnsafeFile(field, f"tensor {name!r} has offsets {offsets!r} outside the data ({data_size} bytes)")
        if offsets[1] - offsets[0] != math.prod(shape) * _ITEMSIZE[dtype]:
            raise UnsafeFile(field, f"tensor {name!r}: {offsets[1] - offsets[0]} bytes do not hold {dtype}{shape}")
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    covered, previous = 0, None
    for begin, end, name in spans:  # sorted spans must tile the data: no overlap, no gap
        if begin < covered:
            raise UnsafeFile(field, f"tensors {previous!r} and {name!r} overlap")
        if begin > covered:
            raise UnsafeFile(field, f"tensor {name!r} starts at byte {begin}, not {covered}: the data has a gap")
        covered, previous = end, name
    if covered != data_size:
        raise UnsafeFile(field, f"tensors cover {covered} of the {data_size} data bytes: the data has a gap")
    return header


def load_safetensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Check a file, then load it; tensors with NaN or inf are refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors(path)
    try:
        state = load_file(str(path), device=device)
    except SafetensorError as e:  # a rule we do not check yet: still one clear line, never a traceback
        raise UnsafeFile(str(path), f"is not a valid safetensors file ({e})") from None
    check_finite(state, str(path))
    return state


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse a state dict holding NaN or inf in any floating tensor."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not _finite(tensor):
            raise UnsafeFile(source, f"tensor {name!r} holds NaN or inf")


def _finite(tensor: torch.Tensor) -> bool:
    """isfinite for every floating dtype; float8 kinds (no isfinite kernel) are widened a slice at a time."""
    if tensor.element_size() > 1:
        return bool(torch.isfinite(tensor).all())
    flat = tensor.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + 2**24].to(torch.float16)).all()) for i in range(0, flat.numel(), 2**24))
