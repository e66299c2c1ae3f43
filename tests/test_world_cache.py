"""The world cache: built once, read by every trainer, the same numbers as the uncached path; refused when
built for something else; a truncated shard is found and rebuilt, never half-read."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recomposer.errors import InvalidParameter, ModelError
from recomposer.models.bundled import load_bundled_backbone, load_bundled_image_encoder
from recomposer.models.tiny import tiny_sd
from recomposer.training import world_cache as wc
from recomposer.training.base import BaseTraining
from recomposer.training.composer import (
    ComposerTraining,
    cached_batches,
    composer_batch,
    new_adapter,
    rows_batch,
    world_batches,
    world_conditions,
)
from recomposer.world.dataset import make_sample

CPU = torch.device("cpu")


def bundled():
    return load_bundled_backbone(CPU, torch.float32, fresh_unet=("default", "epsilon")), load_bundled_image_encoder()


def tiny():
    return tiny_sd(seed=0), None


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A 40-scene cache of the bundled model in shards of 16 (the last one short)."""
    backbone, encoder = bundled()
    spec = wc.spec_for(backbone, encoder, 64, 40, 16)
    folder = tmp_path_factory.mktemp("cache") / "c"
    wc.build(folder, spec, bundled)
    return folder, spec, backbone, encoder


def fresh_rows(backbone, encoder):
    """The 40 scenes encoded as the shards were, 16 at a time (encoders' numbers depend a little on the batch)."""
    parts = [wc.encode_scenes(backbone, encoder, range(a, min(a + 16, 40)), 64) for a in (0, 16, 32)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def test_cached_batches_are_the_uncached_ones_exactly(built):
    folder, spec, backbone, encoder = built
    cache = wc.WorldCache(folder, spec)
    rows = np.array([3, 17, 39, 0])
    cached = rows_batch(cache.rows(rows), backbone.mask_padding)
    fresh = rows_batch(fresh_rows(backbone, encoder), backbone.mask_padding)
    for key in ("latent_mean", "latent_std", "sentence"):
        assert torch.equal(cached[key], fresh[key][rows])
    width = cached["tokens"].shape[1]
    assert torch.equal(cached["tokens"], fresh["tokens"][rows][:, :width]) and fresh["tokens"][rows][:, width:].eq(0).all()
    assert torch.equal(cached["token_mask"], fresh["token_mask"][rows][:, :width])
    for kind in fresh["features"]:
        assert torch.equal(cached["features"][kind], fresh["features"][kind][rows]), kind


def test_cached_rows_are_what_sampling_computes(built):
    """Against the general path (conditions -> ComposerAdapter.features, the VAE, the text encoder): exact
    for every feature but depth, intensity and the encodings, which the cache keeps in fp16."""
    folder, spec, backbone, encoder = built
    adapter = new_adapter(backbone, encoder.dim, encoder.identity)
    samples = [make_sample(s, size=64) for s in (5, 6)]
    want = composer_batch(backbone, torch.stack([s.tensors()["image"] for s in samples]),
                          [world_conditions(s, encoder) for s in samples], adapter)
    got = rows_batch(wc.WorldCache(folder, spec).rows(np.array([5, 6])), backbone.mask_padding)
    for kind in ("sketch", "instances", "palette", "masked_image"):
        assert torch.equal(got["features"][kind], want["features"][kind]), kind
    for kind in ("depth", "intensity", "image_embedding"):
        assert torch.allclose(got["features"][kind], want["features"][kind], atol=1e-3), kind
    width = got["tokens"].shape[1]
    assert torch.allclose(got["tokens"], want["tokens"][:, :width], atol=5e-3, rtol=2e-3)
    assert torch.equal(got["token_mask"], want["token_mask"][:, :width]) and not want["token_mask"][:, width:].any()
    for key in ("latent_mean", "latent_std", "sentence"):
        assert torch.allclose(got[key], want[key], atol=2e-2, rtol=2e-3), key


def test_a_step_on_cached_and_uncached_batches_is_the_same(built):
    folder, spec, backbone, encoder = built
    adapter = new_adapter(backbone, encoder.dim, encoder.identity)
    model = ComposerTraining(backbone, adapter, kinds=("caption", "palette", "sketch", "instances", "depth",
                                                       "intensity", "masked_image", "image_embedding"))
    cached = cached_batches(wc.WorldCache(folder, spec), backbone, 4, seed=1)(2)
    rows = wc.batch_rows(2, 4, 40, 1)
    fresh = rows_batch(fresh_rows(backbone, encoder), backbone.mask_padding)
    width = cached["tokens"].shape[1]
    fresh = {**{k: v[rows] for k, v in fresh.items() if isinstance(v, torch.Tensor)},
             "features": {k: v[rows] for k, v in fresh["features"].items()},
             "present": {k: v[rows] for k, v in fresh["present"].items()}}
    fresh["tokens"], fresh["token_mask"] = fresh["tokens"][:, :width], fresh["token_mask"][:, :width]
    with torch.no_grad():
        a = model.step(cached, torch.Generator().manual_seed(7))
        b = model.step(fresh, torch.Generator().manual_seed(7))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.prediction, b.prediction)
    base = BaseTraining(backbone)
    with torch.no_grad():
        assert torch.equal(base(cached, torch.Generator().manual_seed(3)), base(fresh, torch.Generator().manual_seed(3)))


def test_uncached_world_batches_are_a_cache_computed_on_the_fly(built):
    folder, spec, backbone, encoder = built
    batch = world_batches(backbone, 4, 64, image_encoder=encoder)(1)  # seeds 4..7, encoded four at a time
    cached = rows_batch(wc.WorldCache(folder, spec).rows(np.arange(4, 8)), backbone.mask_padding)
    for key in ("latent_mean", "tokens", "sentence"):  # the same up to fp16 and the encoders' batch arithmetic
        assert torch.allclose(batch[key], cached[key], atol=2e-2, rtol=2e-3), key
    assert all(torch.equal(batch["features"][k], cached["features"][k]) for k in ("sketch", "instances", "palette"))


def test_clip_backbones_cache_every_token(tmp_path):
    backbone, _ = tiny()
    spec = wc.spec_for(backbone, None, 32, 5, 4)
    wc.build(tmp_path / "c", spec, tiny)
    batch = cached_batches(wc.WorldCache(tmp_path / "c", spec), backbone, 3)(0)
    assert batch["tokens"].shape == (3, 77, 32) and "token_mask" not in batch  # SD attends to all 77 positions
    prompts = backbone.encode_prompts([make_sample(int(s), size=32).caption for s in wc.batch_rows(0, 3, 5, 0)])
    assert torch.allclose(batch["tokens"], prompts.tokens, atol=2e-3)


def test_rows_visit_every_scene_once_per_epoch_in_a_fresh_order():
    count, size = 10, 4
    positions = np.concatenate([wc.batch_rows(i, size, count, 5) for i in range(5)])  # 20 positions: 2 epochs
    first, second = positions[:10], positions[10:]
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
    assert not np.array_equal(first, second)
    assert np.array_equal(wc.batch_rows(2, size, count, 5), wc.batch_rows(2, size, count, 5))  # straddles 2 epochs


def test_a_cache_for_another_backbone_size_or_encoder_is_refused_naming_what_differs(built):
    folder, spec, backbone, encoder = built
    from dataclasses import replace

    for field, changed in (("size", replace(spec, size=32)), ("vae", replace(spec, vae="x")),
                           ("text_encoder", replace(spec, text_encoder="y")),
                           ("image_encoder", replace(spec, image_encoder="bundled:other")),
                           ("world", replace(spec, world="z"))):
        with pytest.raises(ModelError, match=field):
            wc.WorldCache(folder, changed)
    wc.WorldCache(folder, replace(spec, scenes=7, image_encoder=None))  # fewer rows wanted, no encoder needed: fine
    with pytest.raises(InvalidParameter, match="built for another scenes"):
        wc.build(folder, replace(spec, scenes=41), bundled)


def test_a_new_decoder_keeps_the_cache_valid(built):
    folder, spec, backbone, encoder = built
    with torch.no_grad():
        for p in backbone.vae.decoder.parameters():
            p.add_(0.01)
    assert wc.spec_for(backbone, encoder, 64, 40, 16) == spec


def same_shard(a: Path, b: Path) -> bool:
    """The same tensors and metadata (safetensors writes its metadata map in no fixed order)."""
    from safetensors import safe_open

    with safe_open(a, "np") as fa, safe_open(b, "np") as fb:
        if fa.metadata() != fb.metadata() or set(fa.keys()) != set(fb.keys()):
            return False
        return all(np.array_equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncate" else data[:9] + b"#" + data[10:])


@pytest.mark.parametrize("how", ["truncate", "corrupt header"])
def test_a_damaged_shard_is_refused_on_open_and_rebuilt_by_the_next_build(built, tmp_path, how):
    source, spec, backbone, encoder = built
    folder = Path(shutil.copytree(source, tmp_path / "c"))
    kept_before = (folder / "shard-000000.safetensors").stat().st_mtime_ns
    (tmp_path / "good.safetensors").write_bytes((folder / "shard-000001.safetensors").read_bytes())
    _damage(folder / "shard-000001.safetensors", how)
    with pytest.raises(ModelError, match="shard-000001.*(damaged|another cache)"):
        wc.WorldCache(folder, spec)
    (folder / "shard-000002.safetensors").unlink()
    with pytest.raises(ModelError, match="damaged|another cache"):  # the first bad shard is named
        wc.WorldCache(folder, spec)
    shutil.copy(tmp_path / "good.safetensors", tmp_path / "kept.safetensors")
    with pytest.raises(ModelError, match="shard-000002.*missing"):
        copy = Path(shutil.copytree(folder, tmp_path / "copy"))
        shutil.copy(tmp_path / "good.safetensors", copy / "shard-000001.safetensors")
        wc.WorldCache(copy, spec)
    built_shards = []
    wc.build(folder, spec, bundled, progress=lambda done, total: built_shards.append(done))
    assert built_shards == [1, 2, 3]  # one shard was kept, two rebuilt
    assert (folder / "shard-000000.safetensors").stat().st_mtime_ns == kept_before
    assert same_shard(folder / "shard-000001.safetensors", tmp_path / "good.safetensors")  # rebuilt exactly
    wc.WorldCache(folder, spec)


def test_a_parallel_build_equals_a_serial_one(built, tmp_path):
    source, spec, backbone, encoder = built
    wc.build(tmp_path / "p", spec, bundled, workers=2)
    for k in range(spec.shards):
        name = f"shard-{k:06d}.safetensors"
        assert same_shard(tmp_path / "p" / name, source / name), name


def test_cli_builds_a_cache_and_training_reads_it(tmp_path):
    from recomposer.cli import main
    from recomposer.models.bundled import WEIGHTS

    parts = tmp_path / "parts"
    parts.mkdir()
    for name in ("vae", "image_encoder"):
        for suffix in (".safetensors", ".json"):
            shutil.copy(WEIGHTS / f"{name}{suffix}", parts)
    assert main(["world", "cache", "-o", str(tmp_path / "cache"), "--parts", str(parts), "--scenes", "12",
                 "--shard-size", "8"]) == 0
    assert main(["train", "composer", "-o", str(tmp_path / "run"), "--parts", str(parts), "--train-unet", "--cache",
                 str(tmp_path / "cache"), "--batch-size", "4", "--steps", "2", "--min-snr-gamma", "5"]) == 0
    assert (parts / "unet.safetensors").is_file() and (parts / "composer.safetensors").is_file()
    assert main(["train", "base", "-o", str(tmp_path / "base"), "--parts", str(parts), "--cache",
                 str(tmp_path / "cache"), "--batch-size", "4", "--steps", "1", "--parameterisation",
                 "v-zero-snr"]) == 0
    backbone = load_bundled_backbone(CPU, torch.float32, parts)
    assert backbone.prediction_type == "v_prediction" and backbone.scheduler_config["rescale_betas_zero_snr"]
    other = tmp_path / "other"
    shutil.copytree(parts, other)
    from recomposer.models.bundled import new_vae, write_part

    write_part(new_vae(5), "vae", other, {"scaling_factor": 0.3})
    assert main(["train", "composer", "-o", str(tmp_path / "run2"), "--parts", str(other), "--train-unet", "--cache",
                 str(tmp_path / "cache"), "--batch-size", "4", "--steps", "1"]) == 2
