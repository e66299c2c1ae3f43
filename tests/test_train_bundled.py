"""`recomposer train vae / encoder / base / composer --parts`: the bundled model's whole training chain, a
few steps each, on the real architectures (they are small), writing a parts folder that loads as a model."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from recomposer.cli import main
from recomposer.errors import InvalidParameter
from recomposer.models import bundled
from recomposer.models.backbone import Backbone
from recomposer.requests import CONTROL_DEFAULTS
from recomposer.training.vae import VAETraining, held_out, perturbed_psnr, psnr, reconstruct


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A parts folder after one short run of each command (shared: each step needs the one before)."""
    root = tmp_path_factory.mktemp("bundle")
    folder = root / "parts"
    for args in (("vae", "-o", root / "vae", "--steps", 2, "--batch-size", 2, "--sample-every", 2),
                 ("encoder", "-o", root / "encoder", "--steps", 2, "--batch-size", 4, "--pool", 8),
                 ("base", "-o", root / "base", "--steps", 1, "--batch-size", 2),
                 ("composer", "-o", root / "composer", "--steps", 1, "--batch-size", 2, "--train-unet",
                  "--ema-decay", 0.9)):
        code = main(["train", *map(str, args), "--parts", str(folder)])
        assert code == 0, args
    return root


def test_each_part_is_written_in_fp16_with_its_figures(parts):
    folder = parts / "parts"
    for name in ("vae", "image_encoder", "unet", "composer"):
        with safe_open(folder / f"{name}.safetensors", "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes == {"F16"}, name
    vae = json.loads((folder / "vae.json").read_text())
    assert {"psnr_mean", "psnr_min", "scaling_factor"} <= set(vae) and vae["scaling_factor"] > 0
    assert set(json.loads((folder / "image_encoder.json").read_text())) >= {"image_to_caption_top1"}
    assert json.loads((folder / "unet.json").read_text())["joint"] is True  # composer --train-unet wrote it last
    assert (parts / "vae" / "samples" / "step-000002.png").is_file()
    assert (parts / "encoder" / "caption-pool.safetensors").is_file()


def test_a_parts_folder_is_a_model(parts, capsys):
    from recomposer.models.loading import load_model
    from recomposer.tasks.composer import ComposeRequest, compose, load_composer
    from recomposer.conditions import Caption, ConditionSet

    folder = parts / "parts"
    backbone = load_model(str(folder), torch.device("cpu"), torch.float32)
    assert isinstance(backbone, Backbone) and backbone.native_size == 64 and backbone.latent_channels == 8
    assert backbone.mask_padding and backbone.source.kind == "bundled"
    model = load_composer(str(folder))
    (result,) = compose(model, ConditionSet.of(Caption("a red circle")), ComposeRequest(steps=2))
    assert result.image.size == (64, 64)
    code, out, err = run(capsys, "compose", "--caption", "a blue star", "--model", folder, "--steps", 2,
                         "--seed", 7, "-o", parts / "composed")
    assert code == 0 and out.strip().endswith("composed/7.png"), err


def test_a_new_run_on_parts_starts_from_their_adapter_and_unet(parts, tmp_path):
    """A run folder is lost between machines; a new run on the parts continues what they trained, and the parts
    it writes count every step they have had."""
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "parts"
    shutil.copytree(parts / "parts", folder)
    before = load_file(folder / "composer.safetensors")
    args = ["train", "composer", "-o", str(tmp_path / "again"), "--steps", "1", "--batch-size", "2", "--train-unet",
            "--lr", "1e-9", "--parts", str(folder)]
    assert main(args) == 0
    after = load_file(folder / "composer.safetensors")
    assert all(torch.allclose(before[k], after[k], atol=1e-3) for k in before)  # tiny lr: what it began from
    assert any(before[k].abs().sum() > 0 for k in before if "channels_in" in k)  # (a fresh one's is zeros)
    run_file = json.loads((tmp_path / "again" / "composer-run.json").read_text())
    assert run_file["start"] == {"composer": 1, "unet": 2}  # the UNet had a base step, then a joint one
    assert json.loads((folder / "composer.json").read_text())["steps"] == 2
    assert json.loads((folder / "unet.json").read_text())["steps"] == 3


def test_prompts_encode_on_real_tokens_only_with_the_same_numbers():
    from recomposer.models.minilm import token_states
    from recomposer.world.dataset import make_sample

    backbone = bundled.assemble(bundled.new_vae(), bundled.new_unet())
    texts = [make_sample(seed).caption for seed in range(5)] + ["", make_sample(0).caption]
    prompts = backbone.encode_prompts(texts)
    full, mask = token_states(backbone.text_encoder, backbone.tokenizer, texts)
    assert prompts.tokens.shape == full.shape and torch.equal(prompts.mask, mask.float())
    torch.testing.assert_close(prompts.tokens, full * mask[..., None], atol=1e-5, rtol=0)
    pooled = (full * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(prompts.sentence, pooled, atol=1e-5, rtol=0)


def test_psnr_is_measured_on_the_8_bit_scale():
    a = -torch.ones(1, 3, 4, 4)  # level 0 everywhere
    b = a.clone()
    b[0, 0, 0, 0] += 2 / 255  # level 1 at one of 48 values
    expected = 10 * np.log10(255**2 / (1 / 48))
    assert abs(float(psnr(a, b)) - expected) < 1e-3 and float(psnr(a, a)) > 100


def test_perturbed_latents_decode_worse_the_further_they_miss_and_zero_is_the_round_trip():
    vae = bundled.load_bundled_backbone(torch.device("cpu"), torch.float32).vae  # the shipped VAE
    images = held_out(8, 64)
    figures = perturbed_psnr(vae, images, sigmas=(0.0, 0.1, 0.4))
    assert figures[0.0] == round(float(psnr(reconstruct(vae, images), images).mean()), 3)
    assert figures[0.0] > figures[0.1] > figures[0.4] and figures[0.0] - figures[0.4] > 3  # dB
    assert perturbed_psnr(vae, images, sigmas=(0.1,)) == {0.1: figures[0.1]}  # the draws are the seed's
    with pytest.raises(InvalidParameter, match="sigma"):
        perturbed_psnr(vae, images, sigmas=(float("nan"),))


def test_latent_noise_moves_what_the_decoder_reads_by_at_most_its_fraction_of_the_spread():
    seen = {}

    def read(noise):
        vae = bundled.new_vae(0)
        training = VAETraining(vae, decoder_only=True, latent_noise=noise)
        decode = vae.decode

        def recording(z):
            seen[noise] = z
            return decode(z)

        vae.decode = recording
        batch = {"image": torch.rand(3, 3, 64, 64) * 2 - 1}
        with torch.no_grad():
            training(batch, torch.Generator().manual_seed(5))
        return seen[noise]

    clean, noisy = read(0.0), read(0.4)
    spread = 1 / bundled.new_vae(0).config.scaling_factor
    per_image = ((noisy - clean) / spread).flatten(1).std(1)  # σᵢ ~ U(0, 0.4), one per render
    assert (per_image > 0).all() and (per_image < 0.45).all() and len(set(per_image.tolist())) == 3
    with pytest.raises(InvalidParameter, match="latent_noise"):
        VAETraining(bundled.new_vae(0), latent_noise=0.1)  # an encoder that trains would outgrow it
    with pytest.raises(InvalidParameter, match="latent_noise"):
        VAETraining(bundled.new_vae(0), decoder_only=True, latent_noise=-0.1)


def test_a_deepened_decoder_decodes_as_before_then_trains_and_loads(parts, tmp_path, capsys):
    from recomposer.models.loading import load_model

    folder = parts / "parts"
    before = bundled.load_bundled_backbone(torch.device("cpu"), torch.float32, folder).vae
    deep = bundled.deepened(bundled.load_bundled_backbone(torch.device("cpu"), torch.float32, folder).vae, 3)
    assert [len(b.resnets) for b in deep.decoder.up_blocks] == [4, 4, 4]  # 2 trained + 2 added in each
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z = before.encode(x).latent_dist.mode()
        assert torch.allclose(deep.decode(z).sample, before.decode(z).sample, atol=1e-5)  # the added: identity

    deeper = tmp_path / "deeper"
    deeper.mkdir()
    for f in folder.iterdir():
        (deeper / f.name).write_bytes(f.read_bytes())
    code, _, err = run(capsys, "train", "vae", "-o", tmp_path / "run", "--init", folder, "--decoder-only",
                       "--decoder-layers", 2, "--latent-noise", 0.1, "--steps", 2, "--batch-size", 2,
                       "--sample-every", 0, "--evaluate", 4, "--parts", deeper)
    assert code == 0, err
    settings = json.loads((deeper / "vae.json").read_text())
    assert settings["decoder_layers_per_block"] == 2 and settings["latent_noise"] == 0.1
    assert settings["scaling_factor"] == json.loads((folder / "vae.json").read_text())["scaling_factor"]
    vae = load_model(str(deeper), torch.device("cpu"), torch.float32).vae
    assert [len(b.resnets) for b in vae.decoder.up_blocks] == [3, 3, 3]
    assert torch.equal(vae.encoder.conv_in.weight, before.encoder.conv_in.weight)  # the encoder kept

    code, _, err = run(capsys, "train", "vae", "-o", tmp_path / "run2", "--init", deeper, "--decoder-layers", 1)
    assert code != 0 and "decoder-layers" in err and not (tmp_path / "run2" / "vae.safetensors").exists()
    settings["decoder_layers_per_block"] = 99
    (deeper / "vae.json").write_text(json.dumps(settings))
    with pytest.raises(Exception, match="decoder_layers_per_block"):
        load_model(str(deeper), torch.device("cpu"), torch.float32)


def test_bad_training_input_names_the_field(tmp_path, tiny_dir, capsys):
    for args, field in ((("vae", "--steps", 0), "steps"), (("encoder", "--pool", 2), "pool"),
                        (("base", "--batch-size", 0, "--parts", tmp_path), "batch_size"),
                        (("vae", "--steps", 10, "--cooldown-steps", 11), "cooldown_steps"),
                        (("vae", "--latent-noise", 0.2), "latent-noise"),
                        (("vae", "--latent-noise", -1), "latent-noise"),
                        (("encoder", "--cooldown-steps", -1), "cooldown_steps"),
                        (("base", "--cooldown-steps", 20_000, "--parts", tmp_path), "cooldown_steps"),
                        (("composer", "--parts", tmp_path, "--model", tiny_dir), "parts")):
        code, out, err = run(capsys, "train", *args, "-o", tmp_path / "run")
        assert code == 2 and err.startswith(f"error: {field}"), err
        assert not (tmp_path / "run").exists()
    code, _, err = run(capsys, "train", "base", "--parts", tmp_path / "empty", "-o", tmp_path / "run")
    assert code == 2 and err.startswith("error: model:") and "vae" in err


def test_a_controlnet_part_trains_on_world_hints_and_runs_as_bundled_kind(parts, tmp_path, capsys):
    """One net for the three world hint kinds, written into the parts folder; `--controlnet bundled:KIND` reads it
    from the --model parts folder; a resumed parts folder goes on from it and counts its steps."""
    import shutil

    from recomposer.world.dataset import make_sample

    folder = tmp_path / "parts"
    shutil.copytree(parts / "parts", folder)
    args = ["train", "controlnet", "-o", tmp_path / "cn", "--parts", folder, "--steps", 1, "--batch-size", 2]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    settings = json.loads((folder / "controlnet.json").read_text())
    assert settings["kinds"] == ["sketch", "depth", "instances"] and settings["steps"] == 1
    assert settings["config"]["conditioning_channels"] == 6  # RGB + one plane per kind
    sample = make_sample(3, size=64)
    from PIL import Image

    Image.fromarray(np.where(sample.rendered.sketch, 0, 255).astype(np.uint8)).save(tmp_path / "drawing.png")
    for kind in ("sketch", "depth"):
        code, out, err = run(capsys, "generate", "a red circle", "--model", folder, "--steps", 2, "--seed", 1,
                             "--controlnet", f"bundled:{kind}", "--control-image", tmp_path / "drawing.png",
                             "-o", tmp_path / f"{kind}.png")
        assert code == 0 and (tmp_path / f"{kind}.png").is_file(), err
    # a world sample's layers (white lines on black, a 16-bit depth, a label map) are read as what they are
    assert main(["world", "sample", "3", "-o", str(tmp_path / "scene"), "--size", "128"]) == 0
    from recomposer.tasks.controls import world_hint

    drawn = world_hint(tmp_path / "scene" / "sketch.png", "sketch", (64, 64))
    assert np.asarray(drawn).mean() > 200  # black lines on white, not the layer's white lines on black
    layout = np.asarray(world_hint(tmp_path / "scene", "instances", (64, 64)))  # the folder's label map
    colours = {tuple(c) for c in layout.reshape(-1, 3)} - {(0, 0, 0)}
    assert len(colours) == len(make_sample(3).scene.objects)  # one label colour per visible object, on black
    code, out, err = run(capsys, "generate", "a red circle", "--model", folder, "--steps", 2, "--seed", 1,
                         "--controlnet", "bundled:depth", "--control-image", tmp_path / "scene" / "depth.png",
                         "-o", tmp_path / "from-layer.png")
    assert code == 0, err
    code, out, err = run(capsys, "generate", "a red circle", "--model", folder, "--steps", 2, "--controlnet",
                         "bundled:edges", "--control-image", tmp_path / "drawing.png", "-o", tmp_path / "x.png")
    assert code == 2 and "bundled:sketch or bundled:depth or bundled:instances" in err, err
    code, out, err = run(capsys, *args[:3], tmp_path / "cn2", *args[4:])
    assert code == 0, err
    assert json.loads((folder / "controlnet.json").read_text())["steps"] == 2
    # ControlNet, Composer conditions and the caption in one call; recall replays it
    code, out, err = run(capsys, "compose", "--caption", "a red circle", "--palette-from", tmp_path / "drawing.png",
                         "--model", folder, "--steps", 2, "--seed", 3, "--controlnet", "bundled:instances",
                         "--control-image", tmp_path / "drawing.png", "--control-end", 0.5, "-o", tmp_path / "mixed")
    assert code == 0, err
    from recomposer.provenance import read_provenance

    record = read_provenance(tmp_path / "mixed" / "3.png")
    assert record["controlnets"][0]["name"] == "bundled:instances" and record["controlnets"][0]["end"] == 0.5
    # no scale or mode given: a bundled net's own defaults, recorded as the values they became (recall needs them)
    assert [(c["scale"], c["mode"]) for c in record["params"]["controls"]] == [CONTROL_DEFAULTS["bundled"]]
    assert record["conditions"]["caption"] and "palette" in record["conditions"]
    code, out, err = run(capsys, "recall", tmp_path / "mixed" / "3.png", "--inputs", tmp_path)
    assert code == 0 and "identical" in out, (out, err)


def test_compose_with_a_net_at_scale_0_is_compose_without_it(parts, tmp_path):
    """A net that is not active is not run: the pixels are those of the same call without it."""
    from PIL import Image

    from recomposer.conditions import Caption, ConditionSet
    from recomposer.requests import ControlRequest
    from recomposer.tasks.composer import ComposeRequest, compose, load_composer
    from recomposer.tasks.generate import ControlInput
    from recomposer.training.controlnet import new_controlnet

    model = load_composer(str(parts / "parts"))
    net = new_controlnet(model.backbone, ("sketch",))
    with torch.no_grad():
        for p in net.controlnet_down_blocks.parameters():
            p.normal_(0, 0.3)
    hint = Image.new("RGB", (64, 64), "white")
    conds = ConditionSet.of(Caption("a red circle"))
    plain = compose(model, conds, ComposeRequest(steps=3, seed=2, allow_flat=True))[0].pixels
    for scale, same in ((0.0, True), (1.0, False)):
        request = ComposeRequest(steps=3, seed=2, allow_flat=True, controls=(ControlRequest("n", scale),))
        ours = compose(model, conds, request, controls=[ControlInput(net.eval(), hint)])[0].pixels
        assert torch.equal(ours, plain) == same, scale


def test_the_benchmark_judges_a_parts_controlnet_beside_the_adapter(parts, tmp_path, capsys):
    import shutil

    folder = tmp_path / "parts"
    shutil.copytree(parts / "parts", folder)
    assert main(["train", "controlnet", "-o", str(tmp_path / "cn"), "--parts", str(folder), "--steps", "1",
                 "--batch-size", "2"]) == 0
    code, out, err = run(capsys, "bench", "controllability", "--quick", "--model", folder, "-o", tmp_path / "bench")
    assert code == 0, err
    report = json.loads((tmp_path / "bench" / "report.json").read_text())
    rows = report["controlnet"]["kinds"]
    assert list(rows) == ["sketch", "depth", "instances"]
    assert rows["sketch"]["figure"] == "edge_f1" and 0 <= rows["sketch"]["controlnet"] <= 1
    assert rows["instances"]["ceiling"] == report["conditions"]["instances"]["ceiling"]
    assert set(report["controlnet"]["seconds_per_image"]) == {"composer", "controlnet"}
    assert "ControlNet beside the Composer adapter" in (tmp_path / "bench" / "report.md").read_text()
    shipped = json.loads((tmp_path / "bench" / "figures.json").read_text())["controlnet"]  # what benchmark.json holds
    assert shipped["sketch"] == {k: rows["sketch"][k] for k in ("figure", "floor", "controlnet", "ceiling")}
