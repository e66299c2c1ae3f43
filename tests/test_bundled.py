"""The bundled model as shipped: small, safetensors, loads offline, and generates through every door."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from recomposer.conditions import ConditionSet
from recomposer.models import bundled
from recomposer.tasks.composer import ComposeRequest, compose, load_composer
from recomposer.world.dataset import eval_seeds, make_sample

PARTS = ("vae", "unet", "composer", "image_encoder")


def test_the_bundled_set_is_small_fp16_safetensors_with_configs():
    from safetensors import safe_open

    total = 0
    for name in PARTS:
        path = bundled.WEIGHTS / f"{name}.safetensors"
        total += path.stat().st_size
        with safe_open(path, "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}, name
        json.loads((bundled.WEIGHTS / f"{name}.json").read_text())
    assert total <= 60 * 2**20
    assert not list(bundled.WEIGHTS.glob("*.bin")) and not list(bundled.WEIGHTS.glob("*.pt"))


@pytest.fixture(scope="module")
def model():
    return load_composer()


def test_it_loads_offline_and_knows_itself(model):
    b = model.backbone
    assert b.source.kind == "bundled" and b.native_size == 64 and b.vae_factor == 4 and b.latent_channels == 8
    assert model.adapter.config.image_encoder == model.encoder.identity
    assert b.describe()["sha256"] == load_composer().backbone.identity()


def test_every_condition_reaches_the_image(model):
    scene = make_sample(eval_seeds(1)[0])
    image = Image.fromarray(scene.rendered.image)
    kinds = ("image_embedding", "palette", "sketch", "instances", "intensity")
    conds = model.decompose(image, ("caption", *kinds), caption=scene.caption)
    request = ComposeRequest(steps=4)
    base = np.asarray(compose(model, ConditionSet.of(conds["caption"]), request)[0].image)
    assert base.shape == (64, 64, 3)
    for kind in kinds:
        out = np.asarray(compose(model, ConditionSet.of(conds["caption"], conds[kind]), request)[0].image)
        assert np.abs(out.astype(int) - base).mean() > 0.5, kind  # a trained door changes the picture


def test_plain_text_to_image_runs_on_the_bare_backbone():
    from recomposer.tasks.generate import GenerateRequest, generate

    backbone = bundled.load_bundled_backbone(torch.device("cpu"), torch.float32)
    (result,) = generate(backbone, GenerateRequest("a red circle above a blue square", steps=3, seed=1))
    assert result.image.size == (64, 64)


def test_ddim_and_ddpm_never_clip_the_bundled_latents(tmp_path):
    """Latents are not images: a sampler that clipped x̂₀ to [-1, 1] (DDIM's and DDPM's default when a config is
    silent) drew textured noise with the bundled model. Parts written before the config said so are read so."""
    import json
    import shutil

    import torch

    from recomposer.models.bundled import WEIGHTS, load_bundled_backbone
    from recomposer.schedulers import make_scheduler

    parts = tmp_path / "parts"
    shutil.copytree(WEIGHTS, parts)
    settings = json.loads((parts / "unet.json").read_text())
    settings["scheduler"].pop("clip_sample", None)
    (parts / "unet.json").write_text(json.dumps(settings))
    for folder in (WEIGHTS, parts):
        config = load_bundled_backbone(torch.device("cpu"), torch.float32, folder).scheduler_config
        for name in ("ddim", "ddpm"):
            assert make_scheduler(name, config).config.clip_sample is False
