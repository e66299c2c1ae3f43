"""InstructPix2Pix: pixels equal to diffusers' StableDiffusionInstructPix2PixPipeline on a tiny 8-channel SD (Euler
ancestral, Euler, DDIM), dual guidance that is the paper's formula for any s_I (diffusers turns guidance off below
1), and `recomposer instruct` with provenance, recall and one-line errors."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline
from PIL import Image

from recomposer.cli import main
from recomposer.conditions import Caption, ConditionSet, SourceImage
from recomposer.denoiser import BackboneDenoiser, Step
from recomposer.guidance import dual, guided
from recomposer.io.images import to_tensor
from recomposer.models.tiny import save_diffusers_dir, tiny_sd
from recomposer.requests import InstructRequest
from recomposer.schedulers import make_scheduler
from recomposer.tasks.instruct import instruct


@pytest.fixture(scope="module")
def ip2p():
    return tiny_sd(seed=3, in_channels=8)


@pytest.fixture(scope="module")
def ip2p_dir(ip2p, tmp_path_factory):
    return save_diffusers_dir(ip2p, tmp_path_factory.mktemp("models") / "tiny-ip2p")


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("scheduler", ["euler_a", "euler", "ddim"])
def test_instruct_matches_diffusers_pipeline(ip2p, photo, scheduler):
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=ip2p.vae, unet=ip2p.unet, text_encoder=ip2p.text_encoder, tokenizer=ip2p.tokenizer,
        scheduler=make_scheduler(scheduler, ip2p.scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe("make it blue", image=photo, num_inference_steps=8, guidance_scale=7.5, image_guidance_scale=1.5,
                     num_images_per_prompt=2, generator=[torch.Generator().manual_seed(3 + k) for k in range(2)],
                     output_type="pt").images
    ours = torch.stack([r.pixels for r in instruct(ip2p, photo, InstructRequest(
        "make it blue", scheduler=scheduler, steps=8, seed=3, batch=2))])
    plain = torch.stack([r.pixels for r in instruct(ip2p, photo, InstructRequest(
        "make it blue", scheduler=scheduler, steps=8, seed=3, batch=2, image_guidance=1.0, guidance=1.0))])
    assert (ours - plain).abs().max().item() > 1e-2  # guidance changes the image (or the test proves nothing)
    assert (ours - reference).abs().max().item() <= 1e-4
    assert (ours * 255).round().sub((reference * 255).round()).abs().max().item() <= 1


@pytest.mark.parametrize("s_i", [0.5, 1.5])
def test_dual_guidance_is_the_formula_for_any_image_scale(ip2p, photo, s_i):
    """One batched forward of the three sets equals ε(∅,∅) + s_I·[ε(c_I,∅) − ε(∅,∅)] + s_T·[ε(c_I,c_T) − ε(c_I,∅)]
    from three separate forwards, s_I below 1 included."""
    source = SourceImage(to_tensor(photo))
    image_only, both = ConditionSet.of(source), ConditionSet.of(source, Caption("make it blue"))
    denoiser = BackboneDenoiser(ip2p, (32, 32))
    denoise, inputs = guided(denoiser, dual(image_only, both, s_i, 7.5), 1)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    step = Step(3, 10, 3, 10, torch.tensor(400))
    with torch.no_grad():
        ours = denoise(x, step, inputs)
        e = {name: denoiser(x, step, denoiser.encode(conds))
             for name, conds in (("null", ConditionSet()), ("image", image_only), ("both", both))}
    want = e["null"] + s_i * (e["image"] - e["null"]) + 7.5 * (e["both"] - e["image"])
    assert torch.allclose(ours, want, atol=1e-4)  # (batched vs single rows, amplified by s_T)


def test_the_unconditional_image_is_zeros(ip2p, photo):
    from recomposer.models.adapter import CONCAT
    from recomposer.models.instruct import InstructChannels

    doors = ip2p.adapter(InstructChannels).encode(ip2p, ConditionSet(), (32, 32))
    assert torch.equal(doors[CONCAT], torch.zeros(1, 4, 16, 16))
    latents = ip2p.adapter(InstructChannels).encode(ip2p, ConditionSet.of(SourceImage(to_tensor(photo))), (32, 32))
    want = ip2p.vae.encode(to_tensor(photo)).latent_dist.mode()  # the mode, not scaled by the VAE's factor
    assert torch.allclose(latents[CONCAT], want)


def test_the_command_writes_provenance_and_recall_reproduces(ip2p_dir, photo, tmp_path, capsys):
    photo.save(tmp_path / "photo.png")
    code, out, err = run(capsys, "instruct", tmp_path / "photo.png", "make it blue", "--model", ip2p_dir, "--steps", 3,
                         "--seed", 4, "-o", tmp_path / "out")
    assert code == 0, err
    made = tmp_path / "out" / "4.png"
    record = json.loads(Image.open(made).text["recomposer"])
    assert record["task"] == "instruct" and record["params"]["image_guidance"] == 1.5
    code, out, err = run(capsys, "recall", made, "--inputs", tmp_path)
    assert code == 0 and "identical" in out, (out, err)


@pytest.mark.parametrize("args, field", [
    (("--image-guidance", "nan"), "image-guidance"),
    (("--guidance-rescale", "-0.5"), "guidance-rescale"),
    (("--guidance", "inf"), "guidance"),
    (("--steps", 0), "steps"),
    (("--scheduler", "nope"), "scheduler"),
])
def test_bad_values_are_one_line_naming_the_option(ip2p_dir, photo, tmp_path, capsys, args, field):
    photo.save(tmp_path / "photo.png")
    code, out, err = run(capsys, "instruct", tmp_path / "photo.png", "make it blue", "--model", ip2p_dir, *args,
                         "-o", tmp_path / "out")
    assert code == 2 and err.startswith(f"error: {field}:") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_model_that_does_not_hear_an_image_is_refused_before_loading(tiny_dir, photo, tmp_path, capsys):
    photo.save(tmp_path / "photo.png")
    code, out, err = run(capsys, "instruct", tmp_path / "photo.png", "make it blue", "--model", tiny_dir,
                         "-o", tmp_path / "out")
    assert code == 2 and "is not an instruction model" in err and len(err.strip().splitlines()) == 1, err
    import shutil

    from recomposer.models.bundled import WEIGHTS

    parts = tmp_path / "parts"  # bundled-format parts with no instruct part
    shutil.copytree(WEIGHTS, parts, ignore=shutil.ignore_patterns("instruct.*"))
    code, out, err = run(capsys, "instruct", tmp_path / "photo.png", "make it blue", "--model", parts,
                         "-o", tmp_path / "out")
    assert code == 2 and "has no instruct part" in err, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(Exception, match="not an instruction model"):
        instruct(tiny_sd(0), photo, InstructRequest("x", steps=1))
    odd = Image.fromarray(np.random.default_rng(0).integers(0, 256, (33, 35, 3), np.uint8))
    (result,) = instruct(tiny_sd(seed=3, in_channels=8), odd, InstructRequest("x", steps=1))
    assert result.image.size == (34, 32)  # cut down to multiples of the VAE's factor (2), as diffusers does
