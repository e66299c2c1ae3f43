"""Parity with diffusers' own pipelines on the same tiny SD components (issue 2, item 4).

Same components, prompt, negative prompt, scheduler, steps, guidance, size and per-sample seeds:
the decoded images must match to 1e-4 in float and to one 8-bit level after quantisation.
"""

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline

from recomposer.models.tiny import tiny_sd
from recomposer.schedulers import make_scheduler
from recomposer.tasks.generate import GenerateRequest, generate


def pipeline(cls, backbone, scheduler):
    pipe = cls(vae=backbone.vae, unet=backbone.unet, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer,
               scheduler=make_scheduler(scheduler, backbone.scheduler_config), safety_checker=None,
               feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generators(seed, n):
    return [torch.Generator().manual_seed(seed + k) for k in range(n)]


def assert_same(ours, reference):
    """reference: (B, 3, H, W) floats in [0, 1] from diffusers (output_type='pt')."""
    floats = torch.stack([g.pixels for g in ours])
    assert floats.shape == reference.shape
    assert (floats - reference).abs().max().item() <= 1e-4
    ours8 = np.stack([np.asarray(g.image) for g in ours]).astype(int)
    ref8 = (reference.permute(0, 2, 3, 1).numpy() * 255).round().astype(int)
    assert np.abs(ours8 - ref8).max() <= 1


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler_a", "dpmpp_2m", "unipc"])
def test_text_to_image_matches_diffusers(tiny, scheduler):
    ref = pipeline(StableDiffusionPipeline, tiny, scheduler)(
        "a red circle above a blue square", negative_prompt="blurry", num_inference_steps=6, guidance_scale=6.5,
        height=32, width=40, num_images_per_prompt=2, generator=generators(7, 2), output_type="pt").images
    ours = generate(tiny, GenerateRequest("a red circle above a blue square", negative="blurry", scheduler=scheduler,
                                          steps=6, guidance=6.5, seed=7, batch=2, width=40, height=32))
    assert_same(ours, ref)


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a"])
def test_v_prediction_matches_diffusers(scheduler):
    backbone = tiny_sd(seed=1, prediction_type="v_prediction")
    ref = pipeline(StableDiffusionPipeline, backbone, scheduler)(
        "a green star", num_inference_steps=5, guidance_scale=4.0, height=32, width=32,
        generator=generators(3, 1), output_type="pt").images
    ours = generate(backbone, GenerateRequest("a green star", scheduler=scheduler, steps=5, guidance=4.0, seed=3))
    assert_same(ours, ref)


def test_guidance_one_is_the_conditional_prediction(tiny):
    ref = pipeline(StableDiffusionPipeline, tiny, "euler")(
        "a ring", num_inference_steps=4, guidance_scale=1.0, height=32, width=32,
        generator=generators(0, 1), output_type="pt").images
    assert_same(generate(tiny, GenerateRequest("a ring", scheduler="euler", steps=4, guidance=1.0, seed=0)), ref)


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a"])
def test_guidance_rescale_matches_diffusers_on_a_zero_terminal_snr_v_model(scheduler):
    """Lin et al. 2024's recipe (v, zero terminal SNR, trailing steps, rescaled guidance) against diffusers'
    guidance_rescale; the rescale must change the image, or this would prove nothing."""
    backbone = tiny_sd(seed=2, prediction_type="v_prediction")
    backbone = replace(backbone, scheduler_config={**backbone.scheduler_config, "rescale_betas_zero_snr": True,
                                                   "timestep_spacing": "trailing"})
    settings = dict(scheduler=scheduler, steps=5, guidance=9.0, seed=4, batch=2)
    ref = pipeline(StableDiffusionPipeline, backbone, scheduler)(
        "a green star", num_inference_steps=5, guidance_scale=9.0, guidance_rescale=0.7, height=32, width=32,
        num_images_per_prompt=2, generator=generators(4, 2), output_type="pt").images
    ours = generate(backbone, GenerateRequest("a green star", guidance_rescale=0.7, **settings))
    assert_same(ours, ref)
    plain = generate(backbone, GenerateRequest("a green star", **settings))
    assert (torch.stack([g.pixels for g in plain]) - ref).abs().max() > 0.01


@pytest.mark.parametrize("scheduler,strength", [("ddim", 0.6), ("euler_a", 0.75), ("dpmpp_2m", 1.0)])
def test_img2img_matches_diffusers(tiny, photo, scheduler, strength):
    ref = pipeline(StableDiffusionImg2ImgPipeline, tiny, scheduler)(
        "an astronaut", image=photo, strength=strength, negative_prompt="dark", num_inference_steps=10,
        guidance_scale=5.0, num_images_per_prompt=2, generator=generators(11, 2), output_type="pt").images
    ours = generate(tiny, GenerateRequest("an astronaut", negative="dark", scheduler=scheduler, steps=10,
                                          guidance=5.0, seed=11, batch=2, strength=strength), image=photo)
    assert_same(ours, ref)


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_inpainting_with_a_4_channel_unet_matches_diffusers(tiny, photo, strength):
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 4:20] = 1
    from PIL import Image

    mask_image = Image.fromarray((mask[0, 0].numpy() * 255).astype(np.uint8))
    ref = pipeline(StableDiffusionInpaintPipeline, tiny, "ddim")(
        "a helmet", image=photo, mask_image=mask_image, strength=strength, num_inference_steps=8,
        guidance_scale=5.0, height=32, width=32, generator=generators(5, 1), output_type="pt").images
    ours = generate(tiny, GenerateRequest("a helmet", scheduler="ddim", steps=8, guidance=5.0, seed=5,
                                          strength=strength), image=photo, mask=mask)
    assert_same(ours, ref)
