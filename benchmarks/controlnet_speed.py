"""What ControlNets cost in recomposer against diffusers on the same weights (issue 16's speed figures).

    python benchmarks/controlnet_speed.py [--repeats 7] [--steps 20] [--size 64] [--threads 1] [-o FILE.json]

Both sides in one process, interleaved (ours first in even rounds), ``--repeats`` rounds after one warm-up each;
the ratio is the median of each round's ours/diffusers (each side's median time is reported too). On the tiny
SD-shaped backbone (models/tiny.py) at ``--size`` px with ControlNets made from its UNet (``from_unet``):
classifier-free guidance 7.5, DPM++ 2M, batch 1.

    one net        generate --controlnet A            vs StableDiffusionControlNetPipeline(A)          goal <= 1.02x
    A + B half     A for the whole run, B for [0, 0.5] vs the pipeline with MultiControlNetModel([A, B])  goal <= 0.8x
    A half, B half A for [0, 0.5], B for [0.5, 1]     vs the same pipeline, same windows

diffusers runs every net at every step (a net outside its window at scale 0, PR #7584); recomposer does not run
a net outside its window. So with c = (one net's forward) / (the UNet's forward), measured here as well, skipping
alone gives (1 + 1.5c) / (1 + 2c) and (1 + c) / (1 + 2c); recomposer also runs each net's hint encoder once a run
(diffusers: once a step), which takes a little more off every row.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import StableDiffusionControlNetPipeline
    from diffusers.utils import logging
    from PIL import Image

    from recomposer.models.tiny import tiny_sd
    from recomposer.requests import ControlRequest, GenerateRequest
    from recomposer.schedulers import make_scheduler
    from recomposer.tasks.generate import ControlInput, generate
    from recomposer.training.controlnet import new_controlnet

    logging.set_verbosity_error()
    backbone = tiny_sd(0, sample_size=args.size)  # native at --size
    nets = [new_controlnet(backbone, ("image",), seed=k).eval() for k in (1, 2)]
    with torch.no_grad():  # non-zero outputs, so both sides add real residuals
        for k, net in enumerate(nets):
            g = torch.Generator().manual_seed(k)
            for p in [*net.controlnet_down_blocks.parameters(), *net.controlnet_mid_block.parameters()]:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    hints = [Image.effect_noise((args.size, args.size), 60 + 30 * k).convert("RGB") for k in range(2)]
    pipe = StableDiffusionControlNetPipeline(
        vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, unet=backbone.unet,
        controlnet=nets, scheduler=make_scheduler("dpmpp_2m", backbone.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompt = "a red circle above a blue square"

    def ours(windows):
        controls = tuple(ControlRequest(f"net{k}", 1.0, a, b) for k, (a, b) in enumerate(windows))
        request = GenerateRequest(prompt, scheduler="dpmpp_2m", steps=args.steps, guidance=7.5, seed=1,
                                  width=args.size, height=args.size, controls=controls, allow_flat=True)
        return lambda: generate(backbone, request, controls=[ControlInput(nets[k], hints[k])
                                                             for k in range(len(windows))])

    def theirs(windows):
        def run():
            one = len(windows) == 1
            pipe.controlnet = nets[0] if one else _multi(nets)
            pipe("a red circle above a blue square", image=hints[0] if one else hints, num_inference_steps=args.steps,
                 guidance_scale=7.5, height=args.size, width=args.size,
                 control_guidance_start=[a for a, _ in windows], control_guidance_end=[b for _, b in windows],
                 generator=torch.Generator().manual_seed(1), output_type="pt")
        return run

    settings = {"one net": [(0.0, 1.0)], "A + B half": [(0.0, 1.0), (0.0, 0.5)],
                "A half, B half": [(0.0, 0.5), (0.5, 1.0)]}
    report = {"steps": args.steps, "size": args.size, "repeats": args.repeats, "threads": args.threads,
              "model": "tiny SD (models/tiny.py), ControlNets from its UNet", "figures": {}}
    for name, windows in settings.items():
        a, b = ours(windows), theirs(windows)
        ours_s, theirs_s, ratio = _interleaved(a, b, args.repeats)
        report["figures"][name] = {"ours_s": ours_s, "diffusers_s": theirs_s, "ratio": ratio,
                                   "ratio_of_medians": ours_s / theirs_s}
        print(f"{name}: ours {ours_s:.3f} s, diffusers {theirs_s:.3f} s, {ratio:.3f}x (paired; of the medians "
              f"{ours_s / theirs_s:.3f}x)", flush=True)
    c = _forward_ratio(backbone, nets[0], args.size, args.repeats)
    report["net_over_unet"] = c
    report["expected"] = {"A + B half": (1 + 1.5 * c) / (1 + 2 * c), "A half, B half": (1 + c) / (1 + 2 * c)}
    bound = report["expected"]
    print(f"one net's forward / the UNet's: {c:.3f} (skipping alone: A + B half {bound['A + B half']:.3f}x, "
          f"A half, B half {bound['A half, B half']:.3f}x)")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")


def _multi(nets):
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    return MultiControlNetModel(nets)


def _interleaved(a, b, repeats: int) -> tuple[float, float, float]:
    """(median of a's times, median of b's, median of the ratios a/b of each round's two runs): the paired ratio
    cancels the machine's drift between rounds (here ±5% over minutes), which the ratio of medians does not."""
    a(), b()  # warm-up
    times = ([], [])
    for i in range(repeats):
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            (a, b)[k]()
            times[k].append(time.perf_counter() - start)
    return (statistics.median(times[0]), statistics.median(times[1]),
            statistics.median(x / y for x, y in zip(*times)))


@torch.no_grad()
def _forward_ratio(backbone, net, size: int, repeats: int) -> float:
    """Median time of one ControlNet forward over one UNet forward, batch 2 (guidance's two rows)."""
    latent = size // backbone.vae_factor
    x = torch.randn(2, backbone.latent_channels, latent, latent)
    t = torch.tensor([500, 500])
    text = torch.randn(2, backbone.prompt_length, backbone.unet.config.cross_attention_dim)
    hint = torch.rand(2, 3, size, size)
    unet = lambda: backbone.unet(x, t, encoder_hidden_states=text)  # noqa: E731
    control = lambda: net(x, t, encoder_hidden_states=text, controlnet_cond=hint)  # noqa: E731
    return _interleaved(control, unet, repeats * 5)[2]


if __name__ == "__main__":
    main()
