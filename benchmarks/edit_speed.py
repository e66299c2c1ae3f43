"""What InstructPix2Pix and cross-domain compositing cost (issues 17 and 18's speed figures).

    python benchmarks/edit_speed.py [--repeats 7] [--steps 20] [--threads 1] [-o FILE.json]

Both sides in one process, interleaved (controlnet_speed.py's ``_interleaved``: ``--repeats`` rounds after one
warm-up each, the order alternating; the ratio is the median of each round's ours/theirs), batch 1:

    instruct      recomposer instruct vs diffusers' StableDiffusionInstructPix2PixPipeline on the same tiny 8-channel
                  SD (models/tiny.py) at 64 px, Euler a, s_T 7.5, s_I 1.5                           goal <= 1.02x
    composite     composite (immersion, no resampling) vs plain img2img (generate, strength 1) on the bundled
                  model, DDIM, the same steps                                                       goal <= 1.1x
    resampling    composite with RePaint resampling from 0.2 (jump 10, 10 resamples): its time and its UNet
                  evaluations, beside the plain run's
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from controlnet_speed import _interleaved
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {"steps": args.steps, "repeats": args.repeats, "threads": args.threads, "figures": {}}
    report["figures"]["instruct"] = instruct_figure(args)
    report["figures"].update(composite_figures(args))
    for name, figure in report["figures"].items():
        print(name, json.dumps(figure), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")


def instruct_figure(args) -> dict:
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from diffusers.utils import logging

    from recomposer.models.tiny import tiny_sd
    from recomposer.requests import InstructRequest
    from recomposer.schedulers import make_scheduler
    from recomposer.tasks.instruct import instruct
    from recomposer.world.dataset import eval_seeds, make_sample

    logging.set_verbosity_error()
    model = tiny_sd(3, in_channels=8, sample_size=64)
    image = Image.fromarray(make_sample(eval_seeds(1)[0]).rendered.image)
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=make_scheduler("euler_a", model.scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    request = InstructRequest("make the star red", steps=args.steps, seed=1, allow_flat=True)

    def ours():
        instruct(model, image, request)

    def theirs():
        pipe("make the star red", image=image, num_inference_steps=args.steps, guidance_scale=7.5,
             image_guidance_scale=1.5, generator=torch.Generator().manual_seed(1), output_type="pt")

    a, b, ratio = _interleaved(ours, theirs, args.repeats)
    return {"ours_s": a, "diffusers_s": b, "ratio": ratio, "model": "tiny 8-channel SD at 64 px"}


def composite_figures(args) -> dict:
    from recomposer.models.loading import load_bundled
    from recomposer.requests import CompositeRequest, GenerateRequest
    from recomposer.tasks.composite import composite
    from recomposer.tasks.generate import generate
    from recomposer.world.dataset import eval_seeds, make_sample

    model = load_bundled(torch.device("cpu"), torch.float32)
    background, source = (make_sample(s).rendered for s in eval_seeds(2, offset=60_000))
    k = int(np.bincount(source.labels.ravel())[1:].argmax()) + 1
    mask = Image.fromarray(((source.labels == k) * 255).astype(np.uint8))
    bg, obj = Image.fromarray(background.image), Image.fromarray(source.image)
    plain = CompositeRequest(application="immersion", resamples=0, steps=args.steps, seed=1, allow_flat=True)
    resampled = CompositeRequest(application="immersion", steps=args.steps, seed=1, allow_flat=True)
    img2img = GenerateRequest("", scheduler="ddim", steps=args.steps, guidance=plain.guidance, seed=1, strength=1.0,
                              allow_flat=True)
    evaluations = {}

    def ours(request, name):
        def go():
            evaluations[name] = composite(model, bg, mask, request, obj)[0].provenance["evaluations"]
        return go

    a, b, ratio = _interleaved(ours(plain, "plain"), lambda: generate(model, img2img, image=bg), args.repeats)
    c, _, _ = _interleaved(ours(resampled, "resampled"), lambda: None, max(3, args.repeats // 2))
    return {"composite": {"ours_s": a, "img2img_s": b, "ratio": ratio, "evaluations": evaluations["plain"],
                          "model": "bundled, 64 px, DDIM"},
            "resampling": {"seconds": c, "evaluations": evaluations["resampled"], "over_plain": c / a}}


if __name__ == "__main__":
    main()
