"""Framework overhead of recomposer's loop, measured side by side in one process (issue 2 figures).

1. per-image time: recomposer's generate vs diffusers' StableDiffusionPipeline, same components,
   prompt, scheduler, steps, guidance, size and seed (runs interleaved, median of --repeats);
2. the loop vs the raw UNet forwards it performs: each run's time inside UNet.forward is summed;
   overhead = loop time / that sum - 1 (median over runs);
3. multi-term guidance (base + 2 terms = 3 condition sets) vs one raw batch-3 UNet forward,
   and base + 3 terms vs a raw batch-4 forward.

    python benchmarks/loop_overhead.py [--size 64] [--steps 20] [--repeats 11] [--threads 1] [--json out.json]

Tiny SD-shaped components with random weights (compute is what matters, not the picture).
"""

import argparse
import json
import statistics
import time

import torch


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging

    from recomposer.conditions import Caption, ConditionSet
    from recomposer.denoiser import BackboneDenoiser
    from recomposer.guidance import GuidancePlan, Term, cfg, guided
    from recomposer.models.tiny import tiny_sd
    from recomposer.sampling import noise, sample
    from recomposer.schedulers import make_scheduler
    from recomposer.tasks.generate import GenerateRequest, generate

    logging.set_verbosity_error()
    b = tiny_sd(sample_size=args.size)
    request = GenerateRequest("a red circle above a blue square", negative="blurry", scheduler="euler",
                              steps=args.steps, guidance=7.5, seed=0, width=args.size, height=args.size)
    pipe = StableDiffusionPipeline(vae=b.vae, unet=b.unet, text_encoder=b.text_encoder, tokenizer=b.tokenizer,
                                   scheduler=make_scheduler("euler", b.scheduler_config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def ours():
        generate(b, request)

    def theirs():
        pipe(request.prompt, negative_prompt=request.negative, num_inference_steps=args.steps, guidance_scale=7.5,
             width=args.size, height=args.size, generator=[torch.Generator().manual_seed(0)], output_type="pil")

    with torch.no_grad():
        ours(), theirs()  # warm-up
        ours_t, theirs_t = [], []
        for i in range(args.repeats):  # interleaved, alternating who goes first, so drift hits both alike
            pairs = [(ours, ours_t), (theirs, theirs_t)]
            for fn, times in pairs if i % 2 else pairs[::-1]:
                times.append(median_time(fn, 1))
        per_image = statistics.median(ours_t) / statistics.median(theirs_t)

        # 2. the loop vs the raw UNet forwards it performs, timed inside the same runs
        denoiser = BackboneDenoiser(b)
        unet_forward = b.unet.forward
        in_unet = []

        def timed_forward(*a, **k):
            t0 = time.perf_counter()
            out = unet_forward(*a, **k)
            in_unet[-1] += time.perf_counter() - t0
            return out

        denoise = guided(denoiser, cfg(ConditionSet.of(Caption(request.prompt)), 7.5,
                                       ConditionSet.of(Caption(request.negative))), 1)

        def loop_only():
            scheduler = make_scheduler("euler", b.scheduler_config)
            scheduler.set_timesteps(args.steps)
            gens = [torch.Generator().manual_seed(0)]
            x = noise((1, 4, args.size // b.vae_factor, args.size // b.vae_factor), gens, b.device, b.dtype)
            return sample(denoise, scheduler, x * scheduler.init_noise_sigma, gens)

        b.unet.forward = timed_forward
        loop_t = []
        for _ in range(args.repeats):
            in_unet.append(0.0)
            loop_t.append(median_time(loop_only, 1))
        b.unet.forward = unet_forward
        overhead = statistics.median(t / u for t, u in zip(loop_t, in_unet)) - 1
        replay_t = in_unet

        # 3. multi-term guidance vs one raw batched forward
        sets = [ConditionSet.of(Caption(p)) for p in ("a red circle", "a blue square", "a star")]
        x = torch.randn(1, 4, args.size // b.vae_factor, args.size // b.vae_factor)
        t = torch.tensor(500)
        multi = {}
        for n_terms in (2, 3):
            plan = GuidancePlan(ConditionSet(), tuple(Term(s, 2.0) for s in sets[:n_terms]))
            d = guided(denoiser, plan, 1)
            context = torch.cat([b.encode_text([""])] + [b.encode_text([s["caption"].text]) for s in sets[:n_terms]])
            xs = x.repeat(n_terms + 1, 1, 1, 1)
            g_t, r_t = [], []
            for _ in range(args.repeats * 3):
                g_t.append(median_time(lambda: d(x, t, 0, 10), 1))
                r_t.append(median_time(lambda: unet_forward(xs, t, encoder_hidden_states=context), 1))
            multi[n_terms] = statistics.median(g_t) / statistics.median(r_t)

    result = {
        "setup": {"size": args.size, "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
                  "scheduler": "euler", "torch": torch.__version__},
        "per_image_seconds": {"recomposer": statistics.median(ours_t), "diffusers": statistics.median(theirs_t)},
        "per_image_ratio": per_image,
        "loop_seconds": statistics.median(loop_t), "raw_unet_seconds": statistics.median(replay_t),
        "loop_overhead": overhead,
        "guidance_3_sets_vs_batch3_forward": multi[2],
        "guidance_4_sets_vs_batch4_forward": multi[3],
    }
    print("| figure | value | goal |\n|---|---|---|")
    print(f"| per image, recomposer / diffusers | {per_image:.3f}x ({result['per_image_seconds']['recomposer']:.3f} s "
          f"vs {result['per_image_seconds']['diffusers']:.3f} s) | <= 1.02x |")
    print(f"| loop / raw UNet forwards | +{100 * overhead:.1f}% | <= 5% |")
    print(f"| guidance, base + 2 terms / raw batch-3 forward | {multi[2]:.3f}x | <= 1.1x |")
    print(f"| guidance, base + 3 terms / raw batch-4 forward | {multi[3]:.3f}x | <= 1.1x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
