"""Checked, offline loading of local transformers model directories (depth, image encoders, captioners).

Each ``*.safetensors`` file is checked by its bytes, pickle-only folders are refused, no remote code
runs, and missing, mis-shaped or NaN/inf weights are errors, never silently random (RELIABILITY R1, R2).
"""

import hashlib
import weakref
import json
from pathlib import Path

import torch

from ..errors import ModelError, RecomposerError
from ..io.weights import check_finite
from . import library


def check_model_dir(path: str | Path, field: str) -> Path:
    """A local transformers directory: config.json present, no config naming code, weights in safetensors
    (each checked by its bytes, shards included), pickle-only folders refused (RELIABILITY R1)."""
    root = Path(path)
    if not root.is_dir():
        raise ModelError(field, f"no such model directory: {path}")
    if not (root / "config.json").is_file():
        raise ModelError(field, f"{root} is not a transformers model directory (no config.json)")
    library.refuse_custom_code(root, field)
    library.checked_weights(root, library.TRANSFORMERS_WEIGHTS, field)
    return root


def read_model_type(root: Path, field: str) -> str:
    try:
        config = json.loads((root / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(field, f"{root / 'config.json'} is not valid JSON") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelError(field, f"{root / 'config.json'} names no model_type")
    return config["model_type"]


def load_pretrained(model_class, root: Path, field: str, device: str | torch.device, dtype: torch.dtype):
    """``model_class.from_pretrained`` through the library door (offline, safetensors only, no remote code);
    missing or mis-shaped weights and NaN/inf weights are errors, never silently random. Unexpected
    weights (a full CLIP checkpoint read as its vision half) are fine."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()  # the load report lists expected unexpected keys; we check what matters
    logging.disable_progress_bar()
    try:
        model, info = library.transformers_model(model_class, root, field, dtype, ignore_mismatched_sizes=True)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as e:
        if isinstance(e, RecomposerError):
            raise
        raise ModelError(field, f"{root} could not be loaded: {first_line(e)}") from None
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
    missing = sorted(k for k in info.get("missing_keys", []) if not k.endswith("position_ids"))
    mismatched = sorted(k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys", []))
    if missing:
        raise ModelError(field, f"{root} lacks {len(missing)} weights, e.g. {missing[0]!r}")
    if mismatched:
        raise ModelError(field, f"{root} has weights of the wrong shape, e.g. {mismatched[0]!r}")
    check_finite(dict(model.state_dict()), str(root))
    return model.to(torch.device(device)).eval()


def load_image_processor(root: Path, field: str):
    """The directory's image processor, PIL backend (no torchvision; the same pixels on every machine)."""
    try:
        return library.image_processor(root, field)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        if isinstance(e, RecomposerError):
            raise
        raise ModelError(field, f"{root} has no usable image processor config: {first_line(e)}") from None


def load_tokenizer(root: Path, field: str, tokenizer_class=None):
    """The directory's tokenizer: ``tokenizer_class``, or transformers' AutoTokenizer over built-in classes."""
    from transformers import AutoTokenizer

    try:
        return library.tokenizer(tokenizer_class or AutoTokenizer, root, field)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        if isinstance(e, RecomposerError):
            raise
        raise ModelError(field, f"{root} has no usable tokenizer: {first_line(e)}") from None


def weights_sha256(model: "torch.nn.Module | dict[str, torch.nn.Module]") -> str:
    """sha256 over every weight (names, dtypes, shapes, bytes) of a module, or of named modules as one ModuleDict of
    them would be hashed (Backbone.identity hashes its three). Remembered by the (first) module until a weight
    changes (in place: its version counter moves; or replaced: another tensor), so recording the same ControlNet or
    backbone in every result's provenance hashes its gigabytes once, not per image."""
    parts = model if isinstance(model, dict) else {"": model}
    tensors = [t for m in parts.values() for t in (*m.parameters(), *m.buffers())]
    key = (tuple(parts), tuple((id(t), t._version) for t in tensors))  # cheap: no state_dict walk
    anchor = next(iter(parts.values()))
    known = _HASHES.get(anchor)
    if known is not None and known[0] == key:
        return known[1]
    state = sorted((f"{prefix}.{name}" if prefix else name, tensor)
                   for prefix, m in parts.items() for name, tensor in m.state_dict().items())
    digest = hashlib.sha256()
    for name, tensor in state:
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    _HASHES[anchor] = (key, digest.hexdigest())
    return digest.hexdigest()


_HASHES: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else e.__class__.__name__
