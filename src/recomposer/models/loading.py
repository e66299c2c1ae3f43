"""Loading backbones from disk, offline, from safetensors only.

Three ways in (plus ``Backbone(...)`` from components already in memory):
- a diffusers-format directory (``model_index.json`` + unet/ vae/ text_encoder/ tokenizer/ scheduler/);
- a single-file ``.safetensors`` checkpoint (original Stable Diffusion layout) plus a local
  diffusers-format directory that supplies the configs;
- the bundled shapes-world model, or a folder of parts in its format (models/bundled.py).
Every weights file is checked by its bytes (io.weights) before a library touches it, and
missing or mis-shaped weights are errors, never silently random.
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import SingleFileComponentError

from ..errors import ModelError, RecomposerError
from ..io.weights import check_finite
from ..progress import stage
from . import library
from .backbone import Backbone, ModelSource
from ..requests import is_parts_dir
from .inpainting import InpaintingChannels
from .instruct import InstructChannels
from .local import first_line

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def load_backbone(source: ModelSource, device: torch.device, dtype: torch.dtype) -> Backbone:
    """Load a backbone described by a ModelSource (as stored in provenance)."""
    if source.kind == "diffusers-dir":
        return load_diffusers_dir(source.path, device, dtype)
    if source.kind == "single-file":
        return load_single_file(source.path, source.config, device, dtype)
    if source.kind == "bundled":
        return load_bundled(device, dtype, source.path)
    raise ModelError("model", "was built in memory and cannot be reloaded from a file")


def load_model(path: str, device: torch.device, dtype: torch.dtype, config: str | None = None) -> Backbone:
    """What ``--model PATH`` means: a diffusers directory, or a .safetensors file (+ ``--config`` directory)."""
    p = Path(path)
    if p.is_dir() and is_parts_dir(p):
        return load_bundled(device, dtype, p)
    if p.is_file() and config is None:
        raise ModelError("config", "a single-file checkpoint needs --config DIR (a diffusers-format directory "
                                   "with the matching configs)")
    if not p.exists():
        raise ModelError("model", f"no such file or directory: {path}")
    with stage("loading model"):
        return load_diffusers_dir(path, device, dtype) if p.is_dir() else load_single_file(path, config, device,
                                                                                           dtype)


def check_diffusers_dir(path: str | Path, field: str = "model") -> Path:
    """Refuse a model directory that names code or unknown components, misses pieces, or whose weights
    are not all safetensors by their bytes (models/library.py); nothing is loaded yet."""
    root = Path(path)
    if not (root / "model_index.json").is_file():
        raise ModelError(field, f"{root} is not a diffusers model directory (no model_index.json)")
    classes = library.check_model_index(root, field)
    library.refuse_custom_code(root, field)
    for name in COMPONENTS:
        if not (root / name).is_dir():
            raise ModelError(field, f"{root} is incomplete: the {name}/ folder is missing")
        if name in ("text_encoder", "tokenizer") and name not in classes:
            raise ModelError(field, f"{root / 'model_index.json'} does not name the {name}'s class")
    for name, stem in (("unet", library.DIFFUSERS_WEIGHTS), ("vae", library.DIFFUSERS_WEIGHTS),
                       ("text_encoder", library.TRANSFORMERS_WEIGHTS)):
        library.checked_weights(root / name, stem, field)
    return root


def load_diffusers_dir(path: str | Path, device: torch.device, dtype: torch.dtype) -> Backbone:
    root = check_diffusers_dir(path).resolve()
    classes = library.check_model_index(root, "model")
    encoder_class = library.transformers_class(classes["text_encoder"])
    _check_model_type(root / "text_encoder", encoder_class)
    try:
        unet, unet_info = library.diffusers_model(UNet2DConditionModel, root / "unet", "model", dtype)
        vae, vae_info = library.diffusers_model(AutoencoderKL, root / "vae", "model", dtype)
        # ignore_mismatched_sizes: report wrong shapes through the loading info (checked below), not a raw error
        text_encoder, text_info = library.transformers_model(encoder_class, root / "text_encoder", "model", dtype,
                                                             ignore_mismatched_sizes=True)
        tokenizer = library.tokenizer(library.transformers_class(classes["tokenizer"]), root / "tokenizer", "model")
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as e:
        if isinstance(e, RecomposerError):
            raise
        raise ModelError("model", f"{root} could not be loaded: {first_line(e)}") from None
    scheduler_config = library.read_json(root / "scheduler" / "scheduler_config.json", "model")
    if not isinstance(scheduler_config, dict):
        raise ModelError("model", f"{root / 'scheduler' / 'scheduler_config.json'} is not a JSON object")
    for name, info in (("unet", unet_info), ("vae", vae_info), ("text_encoder", text_info)):
        _check_loading_info(root / name, info)
    if any(k.startswith("pooler.") for k in text_info.get("missing_keys", [])):
        text_encoder.pooler = None  # never used, and randomly initialised weights would change our identity hash
    backbone = _assemble(vae, unet, text_encoder, tokenizer, scheduler_config, ModelSource("diffusers-dir", str(root)),
                         declared_adapters(root, vae))
    return backbone.to(device, dtype)


def load_single_file(path: str | Path, config: str | Path, device: torch.device, dtype: torch.dtype) -> Backbone:
    """An original-layout SD checkpoint in one .safetensors file, with configs from a local directory.

    The file is read by safetensors alone (whatever its name) and handed to diffusers' converters as
    tensors; the ``config`` folder gives configs only, checked like a model directory's, never weights.
    """
    path, config = Path(path).resolve(), Path(config).resolve()
    state = library.single_file_state(path)  # by content: a pickle named .safetensors stops here
    if not (config / "model_index.json").is_file():
        raise ModelError("config", f"{config} is not a diffusers model directory (no model_index.json)")
    classes = library.check_model_index(config, "config")
    library.refuse_custom_code(config, "config")
    for name in COMPONENTS:
        if not (config / name).is_dir():
            raise ModelError("config", f"{config} is incomplete: the {name}/ folder is missing")
        if name in ("text_encoder", "tokenizer") and name not in classes:
            raise ModelError("config", f"{config / 'model_index.json'} does not name the {name}'s class")
    encoder_class = library.transformers_class(classes["text_encoder"])
    if not any(k.startswith(("cond_stage_model.", "conditioner.", "text_encoders.")) for k in state):
        raise ModelError("model", f"{path} holds no text encoder weights (cond_stage_model.*)")
    try:
        unet = library.single_file_model(UNet2DConditionModel, state, config, "unet", dtype)
        vae = library.single_file_model(AutoencoderKL, state, config, "vae", dtype)
        text_encoder = library.single_file_text_encoder(encoder_class, state, config, dtype)
        tokenizer = library.tokenizer(library.transformers_class(classes["tokenizer"]), config / "tokenizer",
                                      "config")
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError, SingleFileComponentError) as e:
        if isinstance(e, RecomposerError):
            raise
        reason = first_line(e)
        if "meta tensor" in reason:  # diffusers could not place a weight it never got: the checkpoint lacks it
            reason = "weights the configs call for are missing from the checkpoint"
        raise ModelError("model", f"{path} could not be loaded with the configs in {config}: {reason}") from None
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        # diffusers leaves weights the file lacks on the meta device
        missing = [k for k, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
        if missing:
            raise ModelError("model", f"{path} lacks {len(missing)} {name} weights that the configs in {config} "
                                      f"call for, e.g. {missing[0]!r}")
    scheduler_config = library.read_json(config / "scheduler" / "scheduler_config.json", "config")
    if not isinstance(scheduler_config, dict):
        raise ModelError("config", f"{config / 'scheduler' / 'scheduler_config.json'} is not a JSON object")
    source = ModelSource("single-file", str(path), str(config))
    backbone = _assemble(vae, unet, text_encoder, tokenizer, scheduler_config, source, declared_adapters(config, vae))
    return backbone.to(device, dtype)


def load_bundled(device: torch.device, dtype: torch.dtype, folder: str | Path | None = None) -> Backbone:
    """The shapes-world model shipped in the package (models/bundled.py), or one in a parts ``folder``."""
    from .bundled import WEIGHTS, load_bundled_backbone

    with stage("loading model"):
        return load_bundled_backbone(device, dtype, Path(folder) if folder else WEIGHTS)


# Pipelines whose UNet takes declared extra input channels: model_index.json's _class_name -> the adapter that
# fills them (models/adapter.py). The channels are never guessed from the UNet's channel count.
EXTRA_CHANNELS = {"StableDiffusionInpaintPipeline": InpaintingChannels,
                  "StableDiffusionInstructPix2PixPipeline": InstructChannels}


def declared_adapters(root: Path, vae) -> tuple:
    """The adapters a diffusers directory declares through its pipeline class (model_index.json)."""
    index = library.read_json(root / "model_index.json", "model")
    cls = EXTRA_CHANNELS.get(index.get("_class_name") if isinstance(index, dict) else None)
    return (cls(vae.config.latent_channels),) if cls else ()


def _assemble(vae, unet, text_encoder, tokenizer, scheduler_config, source, adapters: tuple = ()) -> Backbone:
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        check_finite(dict(module.state_dict()), f"{source.path}/{name}")
    config = text_encoder.config
    is_clip = config.model_type.startswith("clip")
    # diffusers' rule for CLIP (SD 1.x/2.x never pass the mask); BERT-style encoders need it.
    mask = bool(getattr(config, "use_attention_mask", False)) if is_clip else True
    return Backbone(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                    scheduler_config=dict(scheduler_config), source=source, text_attention_mask=mask,
                    adapters=adapters)


def _check_loading_info(folder: Path, info: dict) -> None:
    # position_ids are rebuilt buffers; a BERT pooler's output is never used (we take token states).
    missing = [k for k in info.get("missing_keys", []) if not (k.endswith("position_ids") or k.startswith("pooler."))]
    # diffusers lists names; transformers a set of (name, checkpoint shape, model shape)
    mismatched = sorted(k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys", []))
    if missing:
        raise ModelError("model", f"{folder} lacks {len(missing)} weights, e.g. {missing[0]!r}")
    if mismatched:
        raise ModelError("model", f"{folder} has weights of the wrong shape, e.g. {mismatched[0]!r}")


def _check_model_type(folder: Path, cls) -> None:
    """The text encoder's config.json is of the kind model_index.json names (a BERT config is no CLIP model)."""
    config = library.read_json(folder / "config.json", "model") if (folder / "config.json").is_file() else None
    expected = cls.config_class.model_type
    if not isinstance(config, dict) or config.get("model_type") != expected:
        got = config.get("model_type") if isinstance(config, dict) else None
        raise ModelError("model", f"{folder / 'config.json'} has model_type {got!r}; model_index.json names "
                                  f"{cls.__name__}, whose model_type is {expected!r}")


def open_model(model: str | None, config: str | None, device: str, dtype: str) -> Backbone:
    """What a command's --model / --config / --device / --dtype name, loaded (None: the bundled model)."""
    from .device import resolve_device, resolve_dtype

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    return load_bundled(torch_device, torch_dtype) if model is None else load_model(model, torch_device, torch_dtype,
                                                                                   config)


def open_instruction_model(model: str | None, config: str | None, device: str, dtype: str):
    """An instruction model: ``--model``'s diffusers folder (its model_index naming the InstructPix2Pix pipeline,
    checked before loading), a parts folder's instruct part, or the bundled instruction model."""
    parts = _instruct_parts(model)
    if parts is None:
        _check_instruction_model(config or model)  # a single file's pipeline is its --config folder's
        return open_model(model, config, device, dtype)
    from .bundled import load_bundled_instruct
    from .device import resolve_device, resolve_dtype

    torch_device = resolve_device(device)
    return load_bundled_instruct(torch_device, resolve_dtype(dtype, torch_device), parts)


def _instruct_parts(model: str | None) -> Path | None:
    """The parts folder whose instruct part serves (the bundled weights when ``model`` is None), or None for a
    diffusers model; a parts folder without an instruct part is refused before anything loads."""
    from .bundled import WEIGHTS, has_part
    from ..requests import is_parts_dir

    if model is not None and not (Path(model).is_dir() and is_parts_dir(Path(model))):
        return None
    folder = Path(model) if model is not None else WEIGHTS
    if not has_part("instruct", folder):
        where = "the bundled model has" if model is None else f"{model} has"
        raise ModelError("model", f"{where} no instruct part (train one with `recomposer train instruct --parts`), "
                                  "or give --model DIR, an InstructPix2Pix model in diffusers format")
    return folder


def _check_instruction_model(model: str) -> None:
    """A diffusers folder (a model, or a single file's configs) whose model_index.json names the InstructPix2Pix
    pipeline, read before anything loads."""
    from . import library

    index = Path(model) / "model_index.json"
    name = library.read_json(index, "model").get("_class_name") if index.is_file() else None
    if name != "StableDiffusionInstructPix2PixPipeline":
        raise ModelError("model", f"{model} is not an instruction model (its model_index.json names {name!r}, not "
                                  "StableDiffusionInstructPix2PixPipeline: its UNet does not hear a source image)")
