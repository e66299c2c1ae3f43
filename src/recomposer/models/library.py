"""The one door to diffusers' and transformers' loaders: offline, safetensors only, no code from a folder (R1).

What a model folder could make those libraries do, and what stops it here:

- **run its own code.** transformers follows a config's ``auto_map`` to a ``.py`` beside it (and asks on
  stdin first when ``trust_remote_code`` is unset); diffusers imports whatever library a
  ``model_index.json`` names. Here a config that names code is refused before any library reads it
  (``refuse_custom_code``), a ``model_index.json`` may only name the (library, class) pairs in
  ``MODEL_INDEX`` (``check_model_index``), every class is chosen by recomposer, never looked up from a
  name in a file, and every transformers call passes ``trust_remote_code=False``.
- **unpickle.** Both libraries pick a loader by file extension (a ``.ckpt`` or a shard named ``.dat``
  goes to ``torch.load``), and a shard index may point at any file. Here every weights file a load can
  touch is listed and judged by its bytes first (``checked_weights``), single-file checkpoints are read
  by safetensors alone and handed over as tensors, and each library call runs with torch's and
  Python's pickle loaders replaced by a refusal (``no_unpickling``), so a path we did not foresee is
  an error, never an unpickling.

Nothing outside this module calls ``from_pretrained`` or ``from_single_file`` (tests/test_library_door.py
keeps it so).
"""

import json
import pickle
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import ModelError, UnsafeFile
from ..io.weights import check_safetensors, load_safetensors

# model_index.json entries recomposer accepts: what it loads, and what it knows and leaves alone.
TEXT_ENCODERS = ("CLIPTextModel", "CLIPTextModelWithProjection", "BertModel")
TOKENIZERS = ("CLIPTokenizer", "CLIPTokenizerFast", "BertTokenizer", "BertTokenizerFast")
MODEL_INDEX = {
    "unet": {("diffusers", "UNet2DConditionModel")},
    "vae": {("diffusers", "AutoencoderKL")},
    "text_encoder": {("transformers", name) for name in TEXT_ENCODERS},
    "tokenizer": {("transformers", name) for name in TOKENIZERS},
    "scheduler": {("diffusers", name) for name in (  # only its config is read; the update rule is chosen by name
        "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
        "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
        "UniPCMultistepScheduler", "DEISMultistepScheduler")},
    # never loaded; named by real Stable Diffusion folders
    "safety_checker": {("stable_diffusion", "StableDiffusionSafetyChecker")},
    "feature_extractor": {("transformers", "CLIPImageProcessor"), ("transformers", "CLIPFeatureExtractor")},
    "image_encoder": {("transformers", "CLIPVisionModelWithProjection")},
}
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"  # <stem>.safetensors, or <stem>.safetensors.index.json + shards
TRANSFORMERS_WEIGHTS = "model"
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")


# ---------------------------------------------------------------- folder checks, before any library reads

def refuse_custom_code(folder: Path, field: str) -> None:
    """Refuse a folder whose JSON configs (its own, or one level down) name code to run (``auto_map``)."""
    for path in sorted([*folder.glob("*.json"), *folder.glob("*/*.json")]):
        config = read_json(path, field)
        if isinstance(config, dict) and "auto_map" in config:
            named = json.dumps(config["auto_map"])[:80]
            raise UnsafeFile(field, f"{path} names custom code (auto_map {named}); recomposer never runs code "
                                    "from a model folder")


def read_json(path: Path, field: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ModelError(field, f"{path} is not valid JSON") from None
    except OSError as e:
        raise ModelError(field, f"{path} cannot be read ({e.strerror or e.__class__.__name__})") from None


def check_model_index(root: Path, field: str) -> dict[str, str]:
    """``root/model_index.json`` names only allowed (library, class) pairs; returns component -> class name."""
    index = read_json(root / "model_index.json", field)
    if not isinstance(index, dict):
        raise ModelError(field, f"{root / 'model_index.json'} is not a JSON object")
    if not isinstance(index.get("_class_name", ""), str):
        raise UnsafeFile(field, f"{root / 'model_index.json'} names a custom pipeline ({index['_class_name']!r}); "
                                "recomposer loads only the components it knows")
    classes = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, (list, tuple)):
            continue  # "_class_name", "_diffusers_version", "requires_safety_checker", ...
        if len(entry) == 2 and entry[0] is None and entry[1] is None:
            continue  # a component the folder does not have
        pair = tuple(entry)
        if pair not in MODEL_INDEX.get(name, ()):
            known = sorted(f"{c}: [{lib}, {cls}]" for c, pairs in MODEL_INDEX.items() for lib, cls in pairs
                           if c == name) or [f"none (recomposer has no component {name!r})"]
            raise UnsafeFile(field, f"{root / 'model_index.json'} names {name} = {list(entry)!r}, which recomposer "
                                    f"does not load; allowed: {', '.join(known)}")
        classes[name] = pair[1]
    return classes


def checked_weights(folder: Path, stem: str, field: str) -> list[Path]:
    """Every weights file a library will read for a component: ``stem.safetensors``, or the shards that
    ``stem.safetensors.index.json`` names (plain file names in ``folder``, each safetensors by its bytes)."""
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, field)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
            raise ModelError(field, f"{index} has no weight_map of tensor names to shard files")
        shards = []
        for name in sorted(set(weight_map.values())):
            if Path(name).name != name or name in ("", ".", "..") or "\\" in name:
                raise UnsafeFile(field, f"{index} points outside its folder ({name!r}); shards must be files "
                                        f"in {folder}")
            if not name.endswith(".safetensors"):
                raise UnsafeFile(field, f"{index} names shard {name!r}; recomposer loads .safetensors shards only")
            check_safetensors(folder / name)  # by its bytes: a pickle renamed .safetensors stops here
            shards.append(folder / name)
        return shards
    if single.is_file():
        check_safetensors(single)
        return [single]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES) if folder.is_dir() else []
    if pickles:
        raise UnsafeFile(field, f"{folder} holds only pickle-format weights ({', '.join(pickles)}); recomposer "
                                f"loads .safetensors only (convert them to {stem}.safetensors)")
    raise ModelError(field, f"{folder} holds no .safetensors weights (expected {stem}.safetensors, or "
                            f"{stem}.safetensors.index.json and its shards)")


# ---------------------------------------------------------------- the guard around every library call

_guard = threading.RLock()
REFUSAL = "a library tried to unpickle a weights file; recomposer never unpickles (use .safetensors)"


@contextmanager
def no_unpickling():
    """For the duration, torch's and pickle's load functions raise UnsafeFile instead of unpickling.
    Libraries look these up when they call them, so whatever path a folder finds into one is closed.
    Yields a list that records each refusal (libraries may wrap the error in their own)."""
    refused = []

    def refuse(*args, **kwargs):
        refused.append(args[:1])
        raise UnsafeFile("weights", REFUSAL)

    with _guard:
        saved = torch.load, torch.serialization.load, pickle.load, pickle.loads
        torch.load = torch.serialization.load = pickle.load = pickle.loads = refuse
        try:
            yield refused
        finally:
            torch.load, torch.serialization.load, pickle.load, pickle.loads = saved


def guarded(load: Callable, *args, **kwargs):
    """``load(*args, **kwargs)`` under ``no_unpickling``; a refusal is reported as itself, however wrapped."""
    with no_unpickling() as refused:
        try:
            return load(*args, **kwargs)
        except Exception:
            if refused:
                raise UnsafeFile("weights", REFUSAL) from None
            raise


# ---------------------------------------------------------------- the loaders

def diffusers_model(cls, folder: Path, field: str, dtype: torch.dtype):
    """A diffusers model class from its folder: (model, loading info). Weights checked first."""
    refuse_custom_code(folder, field)
    checked_weights(folder, DIFFUSERS_WEIGHTS, field)
    return guarded(cls.from_pretrained, folder, torch_dtype=dtype, local_files_only=True, use_safetensors=True,
                   output_loading_info=True)


def transformers_model(cls, folder: Path, field: str, dtype: torch.dtype, **options):
    """A transformers model (a concrete class, or an Auto class over built-in classes): (model, loading info)."""
    refuse_custom_code(folder, field)
    checked_weights(folder, TRANSFORMERS_WEIGHTS, field)
    return guarded(cls.from_pretrained, folder, dtype=dtype, local_files_only=True, use_safetensors=True,
                   trust_remote_code=False, output_loading_info=True, **options)


def tokenizer(cls, folder: Path, field: str):
    """A tokenizer (a concrete class, or AutoTokenizer over built-in classes)."""
    refuse_custom_code(folder, field)
    return guarded(cls.from_pretrained, folder, local_files_only=True, trust_remote_code=False)


def image_processor(folder: Path, field: str):
    """The folder's image processor, PIL backend (no torchvision: the same pixels on every machine)."""
    from transformers import AutoImageProcessor

    refuse_custom_code(folder, field)
    return guarded(AutoImageProcessor.from_pretrained, folder, local_files_only=True, trust_remote_code=False,
                   backend="pil")


def single_file_state(path: Path) -> dict[str, torch.Tensor]:
    """An original-layout checkpoint's tensors, read by safetensors alone whatever the file is named."""
    return load_safetensors(path)  # checked by its bytes first


def single_file_model(cls, state: dict[str, torch.Tensor], config: Path, subfolder: str, dtype: torch.dtype):
    """A diffusers model converted from an original-layout state dict, with its config from ``config/subfolder``."""
    return guarded(cls.from_single_file, state, config=str(config), subfolder=subfolder, torch_dtype=dtype,
                   local_files_only=True)


def single_file_text_encoder(cls, state: dict[str, torch.Tensor], config: Path, dtype: torch.dtype):
    """A CLIP text encoder converted from an original-layout state dict (diffusers' own conversion)."""
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm

    return guarded(create_diffusers_clip_model_from_ldm, cls, state, subfolder="text_encoder", config=str(config),
                   torch_dtype=dtype, local_files_only=True)


def transformers_class(name: str):
    """The transformers class of an allowed model_index.json entry (TEXT_ENCODERS, TOKENIZERS), never another."""
    import transformers

    if name not in TEXT_ENCODERS + TOKENIZERS:
        raise UnsafeFile("model", f"recomposer does not load transformers class {name!r}")
    return getattr(transformers, name)
