"""The bundled shapes-world model: its architecture, and loading it from the package with no network.

Four parts live in ``recomposer/weights/`` (safetensors, fp16, each beside a JSON config):

    vae.safetensors           AutoencoderKL, 64 px -> 16 × 16 × 8 latents (factor 4), ``VAE_CONFIG``
    unet.safetensors          UNet2DConditionModel on 16 × 16 latents, cross-attention on MiniLM tokens
    composer.safetensors      the Composer adapter trained jointly with that UNet (models/composer.py)
    image_encoder.safetensors the world's "semantics and style" image encoder (models/image_encoder.py)

The text encoder is all-MiniLM-L6-v2 from its PyPI package (models/minilm.py), never copied here.
Captions are encoded on their real tokens only and the UNet masks the padding out of cross-attention
(``Backbone.mask_padding``): the same numbers as encoding all 128 positions, at a third of the cost.
"""

import hashlib
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from ..errors import ModelError
from ..io.weights import check_finite, load_safetensors
from .backbone import Backbone, ModelSource
from .minilm import HIDDEN, MAX_TOKENS, load_minilm

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
SIZE = 64  # pixels

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=8, sample_size=SIZE, layers_per_block=1, norm_num_groups=16,
    block_out_channels=(32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3)

UNET_CONFIG = dict(
    sample_size=SIZE // 4, in_channels=8, out_channels=8, layers_per_block=1, block_out_channels=(64, 128, 192),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=HIDDEN, attention_head_dim=8, norm_num_groups=32)

# Other UNet shapes the recipe comparison tried (docs/recipes.md); a part records the shape it has.
UNET_SHAPES = {
    "default": UNET_CONFIG,
    # cross-attention at every resolution, the 16 x 16 one included (where positions are still resolved)
    "attention-16": {**UNET_CONFIG, "down_block_types": ("CrossAttnDownBlock2D",) * 3,
                     "up_block_types": ("CrossAttnUpBlock2D",) * 3},
}
MAX_UNET_PARAMETERS = 2_000_000_000  # a part's recorded shape is refused beyond this, before it is built

# Stable Diffusion's training betas (scaled linear, 1000 steps); Euler a samples the bundled model by default.
SCHEDULER_CONFIG = dict(
    _class_name="EulerAncestralDiscreteScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
    beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1, timestep_spacing="trailing",
    clip_sample=False)
# Latents are not images: DDIM and DDPM must not clip x̂₀ to [-1, 1] (their default when a config is silent; SD's
# configs say clip_sample false). Parts written before this line was added lack it: they are read with it.
SAMPLER_DEFAULTS = {"clip_sample": False}
# The parameterisations a bundled UNet may be trained in: ε on SD's betas, or v on the same betas rescaled to a
# zero terminal SNR (Lin et al. 2024: the last step is pure noise, so sampling starts where training did).
PARAMETERISATIONS = {
    "epsilon": SCHEDULER_CONFIG,
    "v-zero-snr": {**SCHEDULER_CONFIG, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True},
}


def new_vae(seed: int = 0) -> AutoencoderKL:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**VAE_CONFIG)


MAX_DECODER_LAYERS = 8  # resnets per decoder up block, less one (diffusers' layers_per_block)


def decoder_layers(settings: dict, source: Path) -> int:
    """The decoder depth a vae part records (``decoder_layers_per_block``; parts without it: VAE_CONFIG's)."""
    layers = settings.get("decoder_layers_per_block", VAE_CONFIG["layers_per_block"])
    if isinstance(layers, bool) or not isinstance(layers, int) or \
            not VAE_CONFIG["layers_per_block"] <= layers <= MAX_DECODER_LAYERS:
        raise ModelError("model", f"{source} records decoder_layers_per_block {layers!r} (a whole number "
                                  f"{VAE_CONFIG['layers_per_block']} to {MAX_DECODER_LAYERS})")
    return layers


def deepened(vae: AutoencoderKL, layers: int) -> AutoencoderKL:
    """``vae`` with a decoder of ``layers`` + 1 resnets per up block (diffusers' Decoder, as AutoencoderKL builds it
    from ``layers_per_block``), its encoder untouched. The decoder's trained resnets keep their weights; each one
    added comes after them, with equal in and out channels and its last convolution zero, so it starts as the
    identity (x + 0): the deepened VAE decodes as before (to float rounding) until it is trained (``train vae
    --decoder-layers``).
    """
    from diffusers.models.autoencoders.vae import Decoder

    old = vae.decoder
    if layers < len(old.up_blocks[0].resnets) - 1:
        raise ModelError("decoder-layers", f"at least the decoder's {len(old.up_blocks[0].resnets) - 1} (a decoder "
                                           f"is deepened, never cut), got {layers}")
    c = VAE_CONFIG
    with torch.random.fork_rng(devices=[]):  # the added resnets' first convolutions: the same draws every time
        torch.manual_seed(0)
        new = Decoder(in_channels=c["latent_channels"], out_channels=c["out_channels"],
                      up_block_types=c["up_block_types"],
                      block_out_channels=c["block_out_channels"], layers_per_block=layers,
                      norm_num_groups=c["norm_num_groups"], act_fn="silu", mid_block_add_attention=True)
    new.to(next(old.parameters()))
    new.load_state_dict(old.state_dict(), strict=False)  # the added resnets are the keys it does not fill
    for block_old, block_new in zip(old.up_blocks, new.up_blocks):
        for resnet in block_new.resnets[len(block_old.resnets):]:
            torch.nn.init.zeros_(resnet.conv2.weight)
            torch.nn.init.zeros_(resnet.conv2.bias)
    vae.decoder = new
    return vae


def vae_of(settings: dict, source: Path) -> AutoencoderKL:
    """An empty VAE of the shape a vae part records: VAE_CONFIG, its decoder ``decoder_layers`` deep."""
    vae = AutoencoderKL(**VAE_CONFIG, scaling_factor=float(settings["scaling_factor"]))
    layers = decoder_layers(settings, source)
    return deepened(vae, layers) if layers != VAE_CONFIG["layers_per_block"] else vae


def new_unet(seed: int = 0, config: dict = UNET_CONFIG) -> UNet2DConditionModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**config)


def unet_of(settings: dict, source: Path) -> UNet2DConditionModel:
    """An empty UNet of the shape a unet part records (``config``; parts written before shapes were recorded:
    UNET_CONFIG), its size checked before anything is allocated."""
    config = settings.get("config", UNET_CONFIG)
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in UNet2DConditionModel(**config).parameters())
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as e:
        raise ModelError("model", f"{source} records a UNet shape diffusers cannot build ({e})") from None
    if count > MAX_UNET_PARAMETERS:
        raise ModelError("model", f"{source} records a UNet of {count:.3g} parameters (at most "
                                  f"{MAX_UNET_PARAMETERS:.0e})")
    return UNet2DConditionModel(**config)


def assemble(vae: AutoencoderKL, unet: UNet2DConditionModel, source: ModelSource = ModelSource("memory"),
             device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             scheduler: dict = SCHEDULER_CONFIG) -> Backbone:
    """A Backbone of the bundled architecture around MiniLM (trained parts, or fresh ones for training)."""
    text_encoder, tokenizer = load_minilm()
    backbone = Backbone(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                        scheduler_config=dict(scheduler), source=source, text_attention_mask=True,
                        max_text_tokens=MAX_TOKENS, mask_padding=True)
    return backbone.to(torch.device(device), dtype)


def read_part(name: str, folder: Path = WEIGHTS) -> tuple[dict[str, torch.Tensor], dict]:
    """A bundled part's weights (checked by content, finite) and its JSON config."""
    path, config = folder / f"{name}.safetensors", folder / f"{name}.json"
    if not path.is_file() or not config.is_file():
        raise ModelError("model", f"the bundled model is incomplete: {path.name} or {config.name} is missing from "
                                  f"{folder} (reinstall recomposer)")
    tensors = load_safetensors(path)
    check_finite(tensors, str(path))
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):
        raise ModelError("model", f"{config} is not valid JSON (reinstall recomposer)") from None
    if not isinstance(settings, dict):
        raise ModelError("model", f"{config} is not a JSON object (reinstall recomposer)")
    expected = settings.get("weights_sha256")
    if expected is not None and expected != _file_sha256(path):
        raise ModelError("model", f"{path.name} is not the file {config.name} was written with (a write cut short?); "
                                  "train the part again or reinstall recomposer")
    return tensors, settings


def load_part(module: torch.nn.Module, name: str, folder: Path = WEIGHTS) -> torch.nn.Module:
    """Fill ``module`` with a bundled part's weights: every key present, every shape right."""
    from .composer import check_fits

    tensors, _ = read_part(name, folder)
    check_fits(module, tensors, f"{folder / name}.safetensors")
    return module


def load_bundled_backbone(device: torch.device, dtype: torch.dtype, folder: Path = WEIGHTS,
                          fresh_unet: tuple[str, str] | None = None) -> Backbone:
    """The bundled VAE + UNet + MiniLM (the Composer adapter: ``load_bundled_composer``). ``fresh_unet``:
    (shape, parameterisation) from UNET_SHAPES and PARAMETERISATIONS of a newly initialised UNet, where the
    folder has no unet part yet (training the UNet from scratch)."""
    _, vae_settings = read_part("vae", folder)
    scale = vae_settings.get("scaling_factor")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < 1e3:
        raise ModelError("model", f"{folder / 'vae.json'} holds no valid scaling_factor (a number > 0), got {scale!r}")
    vae = load_part(vae_of(vae_settings, folder / "vae.json"), "vae", folder)
    if fresh_unet is not None and not has_part("unet", folder):
        shape, parameterisation = fresh_unet
        unet, scheduler = new_unet(config=UNET_SHAPES[shape]), PARAMETERISATIONS[parameterisation]
    else:
        _, settings = read_part("unet", folder)
        unet = load_part(unet_of(settings, folder / "unet.json"), "unet", folder)
        scheduler = settings.get("scheduler", SCHEDULER_CONFIG)
        if not isinstance(scheduler, dict) or scheduler.get("prediction_type") not in ("epsilon", "v_prediction"):
            raise ModelError("model", f"{folder / 'unet.json'} records no valid scheduler config")
        scheduler = {**SAMPLER_DEFAULTS, **scheduler}
    source = ModelSource("bundled", None if folder == WEIGHTS else str(folder.resolve()))
    return assemble(vae, unet, source, device, dtype, scheduler)


def unet_settings(backbone: Backbone, **settings) -> dict:
    """What a unet part records beside its weights: its shape and its scheduler config (its parameterisation)."""
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in backbone.unet.config.items()
              if k in UNET_CONFIG}
    return {**settings, "config": config, "scheduler": dict(backbone.scheduler_config)}


def load_bundled_composer(folder: Path = WEIGHTS):
    """The Composer adapter trained with the bundled UNet (not yet attached)."""
    from .composer import ComposerAdapter, ComposerConfig

    _, settings = read_part("composer", folder)
    config = ComposerConfig.read(settings.get("config"), str(folder / "composer.json"))
    return load_part(ComposerAdapter(config), "composer", folder)


def write_part(module: torch.nn.Module, name: str, folder: Path, settings: dict) -> Path:
    """A part as ``folder/name.safetensors`` (fp16, the bundled precision) + ``name.json``, each written
    all or nothing, the JSON last with the weights' sha256 in it: a run cut off between the two leaves a
    pair that ``read_part`` refuses, never new weights under old settings. Training reads parts back from
    here, so what trains on them is what ships."""
    return write_tensors(module.state_dict(), name, folder, settings)


def write_tensors(tensors: dict[str, torch.Tensor], name: str, folder: Path, settings: dict) -> Path:
    """``write_part`` of a state dict (or any named tensors, e.g. a delta, models/delta.py)."""
    from safetensors.torch import save

    from ..io.files import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: (t.half() if t.is_floating_point() else t).detach().cpu().contiguous() for k, t in tensors.items()}
    data = save(tensors)
    settings = {**settings, "weights_sha256": hashlib.sha256(data).hexdigest()}  # the JSON vouches for the weights
    path = atomic_write(folder / f"{name}.safetensors", lambda f: f.write(data))
    atomic_write(folder / f"{name}.json", lambda f: f.write((json.dumps(settings, indent=2) + "\n").encode()))
    return path


def load_bundled_image_encoder(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                               folder: Path = WEIGHTS):
    """The bundled ImageEncoder; its identity names the weights (sha256 of the fp16 values as stored)."""
    from .image_encoder import BundledImageEncoder, WorldImageEncoder
    from .local import weights_sha256

    model = load_part(WorldImageEncoder(), "image_encoder", folder)
    identity = f"bundled:world-encoder@{weights_sha256(model.half())[:12]}"
    return BundledImageEncoder(model.to(torch.device(device), dtype), identity)


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


FIGURES = "benchmark.json"  # `recomposer bench controllability`'s figures.json for these very weights


PSNR_TOP = 50.0  # dB: a PSNR figure's ceiling for progress (the render's own is float round-off, or "inf")


def progress(row: dict) -> float | None:
    """(single − floor) / (ceiling − floor) of one condition's benchmark figures; PSNRs are capped at PSNR_TOP
    dB (the report's bars do the same); None where the figures do not say (missing, or no room above the floor)."""
    def value(x):
        if isinstance(x, str) and x in ("inf", "Infinity"):
            x = float("inf")
        if not isinstance(x, (int, float)) or isinstance(x, bool) or x != x:
            return None
        return min(x, PSNR_TOP) if str(row.get("figure", "")).endswith("_db") else x

    single, floor, ceiling = (value(row.get(k)) for k in ("single", "floor", "ceiling"))
    if None in (single, floor, ceiling) or ceiling <= floor or abs(ceiling) == float("inf"):
        return None
    return (single - floor) / (ceiling - floor)


def read_figures(folder: Path, backbone: Backbone, adapter: torch.nn.Module) -> dict | None:
    """The benchmark figures shipped beside a folder's parts, when they were measured on exactly these weights
    (backbone and adapter hashes match); None otherwise: figures of other weights would mislead."""
    from .local import weights_sha256

    path = Path(folder) / FIGURES
    try:
        figures = json.loads(path.read_text())
        model = figures["model"]
        same = model["backbone"]["sha256"] == backbone.describe()["sha256"] and \
            model["adapter_sha256"] == weights_sha256(adapter)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return figures if same and isinstance(figures.get("conditions"), dict) else None


def load_bundled_instruct(device: torch.device, dtype: torch.dtype, folder: Path = WEIGHTS) -> Backbone:
    """The bundled instruction model: the bundled backbone, its UNet widened to hear a source image (models/instruct.py)
    and the instruct part merged in: a low-rank delta of the base UNet plus the widened conv_in (models/delta.py).
    The delta is refused on any UNet but the one it was taken against (unet.json's weights_sha256)."""
    backbone = load_bundled_backbone(torch.device("cpu"), torch.float32, folder)
    return merge_instruct(backbone, folder)[0].to(device, dtype)


def merge_instruct(backbone: Backbone, folder: Path = WEIGHTS) -> tuple[Backbone, dict]:
    """(``backbone`` made the parts' instruction model, the instruct part's settings): ``backbone`` is the parts' own,
    its UNet not yet widened; the UNet is widened in place and the delta merged in, with the InstructChannels
    adapter. Nothing is touched when the delta is refused."""
    from .delta import merge
    from .instruct import InstructChannels, widen

    delta, settings = read_part("instruct", folder)
    _, base = read_part("unet", folder)
    if not settings.get("base_unet") or settings.get("base_unet") != base.get("weights_sha256"):
        raise ModelError("model", f"{folder / 'instruct.json'} is a delta of another UNet than {folder / 'unet.json'} "
                                  "(train the instruction model again on this one)")
    widen(backbone.unet, backbone.latent_channels)
    backbone.unet.load_state_dict(merge(backbone.unet.state_dict(), delta))
    return backbone.with_adapters(InstructChannels(backbone.latent_channels)), settings


def has_part(name: str, folder: Path = WEIGHTS) -> bool:
    return (folder / f"{name}.safetensors").is_file() and (folder / f"{name}.json").is_file()
