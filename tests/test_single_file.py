"""Single-file checkpoints: an original-layout SD .safetensors + a local diffusers config directory.

The tiny random backbone is written twice, as a diffusers directory (which also supplies the
configs) and as an LDM-layout single file (tests/ldm_checkpoint.py); loading the single file,
offline, must give back exactly the same weights, bit for bit.
"""

import torch

torch.set_num_threads(1)

import pickle  # noqa: E402
import socket  # noqa: E402

import pytest  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from recomposer.errors import ModelError, UnsafeFile  # noqa: E402
from recomposer.models.backbone import ModelSource  # noqa: E402
from recomposer.models.loading import load_backbone, load_diffusers_dir, load_model, load_single_file  # noqa: E402
from recomposer.models.tiny import save_diffusers_dir, tiny_sd  # noqa: E402

try:
    from ldm_checkpoint import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, to_ldm_state_dict, write_ldm_checkpoint
except ImportError:  # tests/ imported as a package
    from tests.ldm_checkpoint import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, to_ldm_state_dict, write_ldm_checkpoint

CPU = torch.device("cpu")
COMPONENTS = ("unet", "vae", "text_encoder")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(original backbone, its diffusers dir, its LDM single file), built once for the module."""
    root = tmp_path_factory.mktemp("single_file")
    original = tiny_sd(seed=3)
    config = save_diffusers_dir(original, root / "tiny-diffusers")
    ckpt = write_ldm_checkpoint(original, root / "tiny-ldm.safetensors")
    return original, config, ckpt


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: loading must be fully offline."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def assert_same_weights(expected, got, dtype=None):
    for name in COMPONENTS:
        want, have = getattr(expected, name).state_dict(), getattr(got, name).state_dict()
        assert want.keys() == have.keys(), f"{name}: keys differ: {sorted(want.keys() ^ have.keys())[:5]}"
        for key, tensor in want.items():
            if dtype is not None:
                tensor = tensor.to(dtype)
            assert have[key].dtype == tensor.dtype, f"{name}.{key}: {have[key].dtype} != {tensor.dtype}"
            assert have[key].shape == tensor.shape, f"{name}.{key}: {tuple(have[key].shape)} != {tuple(tensor.shape)}"
            assert torch.equal(have[key], tensor), f"{name}.{key} differs"


def test_checkpoint_uses_the_original_ldm_layout(files):
    original, _, _ = files
    ldm = to_ldm_state_dict(original)
    n = sum(len(getattr(original, c).state_dict()) for c in COMPONENTS)
    assert len(ldm) == n + 1  # + the CLIP position_ids that SD 1.x files carry
    assert all(k.startswith((UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX + "text_model.")) for k in ldm)
    # a few names exactly as they appear in v1-5-pruned.safetensors
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.time_embed.2.bias",
                "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
                "model.diffusion_model.input_blocks.3.0.op.weight",
                "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.middle_block.1.proj_in.weight",
                "model.diffusion_model.middle_block.2.emb_layers.1.weight",
                "model.diffusion_model.output_blocks.2.2.conv.weight",  # upsampler after an attention
                "model.diffusion_model.output_blocks.0.0.skip_connection.weight", "model.diffusion_model.out.2.weight",
                "first_stage_model.encoder.down.0.downsample.conv.weight",
                "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
                "first_stage_model.decoder.up.1.upsample.conv.weight", "first_stage_model.decoder.mid.block_2.conv1.weight",
                "first_stage_model.encoder.norm_out.weight", "first_stage_model.post_quant_conv.weight",
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
                "cond_stage_model.transformer.text_model.encoder.layers.4.self_attn.q_proj.weight",
                "cond_stage_model.transformer.text_model.final_layer_norm.bias"):
        assert key in ldm, key
    # the decoder's levels are numbered bottom-up in ldm: its first diffusers up block is ldm's last level
    assert torch.equal(ldm["first_stage_model.decoder.up.1.block.0.conv1.weight"],
                       original.vae.state_dict()["decoder.up_blocks.0.resnets.0.conv1.weight"])
    # the VAE's mid-block attention is 1x1 convolutions in ldm, Linear layers in diffusers
    q = ldm["first_stage_model.decoder.mid.attn_1.q.weight"]
    assert q.ndim == 4 and q.shape[2:] == (1, 1)
    assert torch.equal(q[:, :, 0, 0], original.vae.state_dict()["decoder.mid_block.attentions.0.to_q.weight"])


def test_single_file_loads_offline_with_identical_weights(files, no_network):
    original, config, ckpt = files
    loaded = load_single_file(ckpt, config, CPU, torch.float32)
    assert_same_weights(original, loaded)
    assert loaded.identity() == original.identity()
    assert loaded.source == ModelSource("single-file", str(ckpt), str(config))
    assert loaded.scheduler_config["_class_name"] == original.scheduler_config["_class_name"]
    assert loaded.scheduler_config["prediction_type"] == original.prediction_type
    text = ["a red square left of a blue circle"]
    assert loaded.tokenizer(text).input_ids == original.tokenizer(text).input_ids
    assert torch.equal(loaded.encode_text(text), original.encode_text(text))


def test_single_file_equals_the_diffusers_directory(files, no_network):
    _, config, ckpt = files
    from_dir = load_diffusers_dir(config, CPU, torch.float32)
    from_file = load_single_file(ckpt, config, CPU, torch.float32)
    assert_same_weights(from_dir, from_file)
    assert from_file.identity() == from_dir.identity()


def test_single_file_through_load_model_and_provenance(files, no_network):
    original, config, ckpt = files
    loaded = load_model(str(ckpt), CPU, torch.float32, config=str(config))
    assert loaded.identity() == original.identity()
    again = load_backbone(loaded.source, CPU, torch.float32)  # what reproducing from provenance does
    assert again.identity() == original.identity()
    with pytest.raises(ModelError) as e:
        load_model(str(ckpt), CPU, torch.float32)  # a single file without --config
    assert e.value.field == "config"


def test_single_file_in_half_precision(files, no_network):
    original, config, ckpt = files
    loaded = load_single_file(ckpt, config, CPU, torch.float16)
    assert loaded.dtype == torch.float16
    assert_same_weights(original, loaded, dtype=torch.float16)


class _Canary:
    """Unpickling this creates the canary file; it must never exist."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("container", ["pickle", "torch-zip"])
def test_pickle_named_safetensors_is_refused_unread(files, tmp_path, container, no_network):
    _, config, _ = files
    canary = tmp_path / "canary"
    fake = tmp_path / "model.safetensors"
    if container == "pickle":
        fake.write_bytes(pickle.dumps({"state_dict": _Canary(canary)}, protocol=4))
    else:
        torch.save({"state_dict": _Canary(canary)}, fake)
    with pytest.raises(UnsafeFile):
        load_single_file(fake, config, CPU, torch.float32)
    with pytest.raises(UnsafeFile):
        load_model(str(fake), CPU, torch.float32, config=str(config))
    assert not canary.exists()


def test_missing_config_dir_is_a_model_error(files, tmp_path):
    _, _, ckpt = files
    with pytest.raises(ModelError) as e:
        load_single_file(ckpt, tmp_path / "no-such-dir", CPU, torch.float32)
    assert e.value.field == "config"
    (tmp_path / "not-diffusers").mkdir()
    with pytest.raises(ModelError):
        load_single_file(ckpt, tmp_path / "not-diffusers", CPU, torch.float32)


@pytest.mark.parametrize("change", [
    "drop-unet-weight", "drop-vae-weight", "drop-clip-weight", "no-text-encoder", "wrong-shape"])
def test_incomplete_or_mismatched_checkpoint_is_a_model_error(files, tmp_path, change, no_network):
    """Weights the configs call for but the file lacks (or has mis-shaped) are errors, never left random."""
    original, config, _ = files
    ldm = to_ldm_state_dict(original)
    if change == "drop-unet-weight":
        del ldm[UNET_PREFIX + "out.2.weight"]
    elif change == "drop-vae-weight":
        del ldm[VAE_PREFIX + "decoder.mid.attn_1.v.weight"]
    elif change == "drop-clip-weight":
        del ldm[CLIP_PREFIX + "text_model.final_layer_norm.weight"]
    elif change == "no-text-encoder":
        ldm = {k: v for k, v in ldm.items() if not k.startswith(CLIP_PREFIX)}
    else:
        ldm[UNET_PREFIX + "input_blocks.0.0.weight"] = torch.zeros(32, 9, 3, 3)
    bad = tmp_path / "bad.safetensors"
    save_file(ldm, str(bad))
    with pytest.raises(ModelError):
        load_single_file(bad, config, CPU, torch.float32)


def test_extra_keys_in_a_checkpoint_are_ignored(files, tmp_path, no_network):
    """Real SD files carry more than the three models (EMA copies, alphas_cumprod, ...)."""
    original, config, _ = files
    ldm = to_ldm_state_dict(original)
    ldm["alphas_cumprod"] = torch.linspace(1, 0, 1000)
    ldm["model_ema.decay"] = torch.tensor(0.9999)
    extra = tmp_path / "extra.safetensors"
    save_file(ldm, str(extra))
    assert load_single_file(extra, config, CPU, torch.float32).identity() == original.identity()
