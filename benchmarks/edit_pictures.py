"""The README's pictures of instruction edits, Visii and cross-domain compositing, made with the bundled models.

    python benchmarks/edit_pictures.py [--model PARTS] [-o docs/images]
    python benchmarks/edit_pictures.py --against PARTS --name NAME [-o docs/images]

Writes instruct.png (one held-out edit per kind: before, the world's own edit, the model's edits from two seeds),
visii.png (an edit learnt from one pair, applied to three other scenes beside the written instruction) and
composite.png (object immersion, scribble editing and background augmentation). With ``--against``, only
instruct-NAME.png: the same edits by the model (``--model``, default bundled) and by PARTS' instruction model side by
side, seed 1 and 2 each. Every scene is held out: the training streams never draw it.
"""

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image


BACKDROPS = ("on a plain navy background", "against a sunset-like gradient", "on a beach, blue sky over sand")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="parts with an instruct part (default: bundled)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--visii-steps", type=int, default=1000)
    parser.add_argument("--against", type=Path, default=None, help="parts whose instruction model to compare")
    parser.add_argument("--name", default="against", help="with --against: instruct-NAME.png")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.output.mkdir(parents=True, exist_ok=True)
    if args.against is not None:
        path = args.output / f"instruct-{args.name}.png"
        instruct_pictures(args, replace_parts(args, args.against)).save(path)
        print(path)
        return
    instruct_pictures(args).save(args.output / "instruct.png")
    visii_pictures(args).save(args.output / "visii.png")
    composite_pictures(args).save(args.output / "composite.png")
    print(args.output)


def _model(args):
    from recomposer.models.bundled import WEIGHTS, load_bundled_instruct

    return load_bundled_instruct(torch.device("cpu"), torch.float32, args.model or WEIGHTS)


def _render(scene) -> Image.Image:
    from recomposer.world.render import render

    return Image.fromarray(render(scene, 64).image)


def replace_parts(args, parts: Path):
    return argparse.Namespace(**{**vars(args), "model": parts})


def instruct_pictures(args, other=None) -> Image.Image:
    """One row per edit kind; with ``other`` (args naming other parts) its model's two seeds beside the first's."""
    from recomposer.evaluation.edits import edits_of
    from recomposer.io.sheets import stacked, titled_row
    from recomposer.requests import InstructRequest
    from recomposer.tasks.instruct import instruct

    models = [("" if other is None else f"{args.model.name if args.model else 'bundled'}, ", _model(args))]
    models += [(f"{other.model.name}, ", _model(other))] if other is not None else []
    rows = []
    for kind in ("recolour", "restyle", "remove", "add", "swap_shape", "background"):
        edit = edits_of(kind, 10, offset=40_000)[0]
        before = _render(edit.before)
        made = [(f"{name}seed {k + 1}", r.image) for name, model in models
                for k, r in enumerate(instruct(model, before, InstructRequest(edit.instruction, steps=args.steps,
                                                                              seed=1, batch=2)))]
        rows.append((edit.instruction, titled_row([("before", before), ("the world's edit", _render(edit.after))] +
                                                  made, tile=128, nearest=True)))
    return stacked(rows, label_width=230)


def visii_pictures(args) -> Image.Image:
    from recomposer.evaluation.edits import _same_edit, visii_example
    from recomposer.io.sheets import stacked, titled_row
    from recomposer.requests import InstructRequest
    from recomposer.tasks.instruct import instruct
    from recomposer.tasks.visii import VisiiRequest, learn_instruction

    model = _model(args)
    example = visii_example("recolour")
    pair = (_render(example.before), _render(example.after))
    learned = learn_instruction(model, [pair], VisiiRequest(steps=args.visii_steps, seed=0))
    learned.info["sha256"] = "pictures"
    rows = [(f"learnt from this pair\n({learned.info['seconds']:.0f} s, {args.visii_steps} steps)",
             titled_row([("before", pair[0]), ("after", pair[1])], tile=128, nearest=True))]
    for i, e in enumerate(_same_edit(example, 3)):
        before = _render(e.before)
        common = dict(steps=args.steps, seed=i)
        text = instruct(model, before, InstructRequest(e.instruction, **common))[0].image
        shown = instruct(model, before, InstructRequest("", learned="pictures", **common), learned=learned)[0].image
        rows.append((f"another scene {i + 1}", titled_row([("before", before), ("learnt edit", shown),
                                                           (f"text: {e.instruction}", text)], tile=128, nearest=True)))
    return stacked(rows, label_width=230)


def composite_pictures(args) -> Image.Image:
    from recomposer.io.sheets import stacked, titled_row
    from recomposer.models.loading import load_bundled
    from recomposer.requests import CompositeRequest
    from recomposer.tasks.composite import composite
    from recomposer.world.dataset import eval_seeds, make_sample

    model = load_bundled(torch.device("cpu"), torch.float32, args.model)
    scenes = [make_sample(s) for s in eval_seeds(4, offset=60_000)]
    background, source = scenes[0].rendered.image, scenes[1].rendered
    k = int(np.bincount(source.labels.ravel())[1:].argmax()) + 1
    region = source.labels == k
    mask = Image.fromarray((region * 255).astype(np.uint8))
    pasted = Image.fromarray(np.where(region[..., None], source.image, background))
    obj = Image.fromarray(source.image)

    def seeds(request, **given):
        made = composite(model, Image.fromarray(background) if "bg" not in given else given.pop("bg"), mask,
                         request, **given)
        return [(f"seed {j + 1}", r.image) for j, r in enumerate(made)]

    common = dict(steps=args.steps, seed=1, scheduler="euler_a", guidance=3.0)  # (the bundled model's sampler)
    immersion = CompositeRequest(application="immersion", batch=3, **common)
    augment = CompositeRequest(application="augment", **common)
    scribbled = np.array(background)
    scribbled[region] = (230, 40, 40)  # a red blob painted where the object goes
    scribble = CompositeRequest("a red shape", application="scribble", batch=3, **common)
    immersed = [(f"T_in {t}", composite(model, Image.fromarray(background), mask, replace(immersion, t_in=t, batch=1),
                                        obj)[0].image) for t in (0.5, 0.7, 0.9)]
    rows = [("object immersion\n(N_in 2, resampling\nfrom 0.2; T_in: the\nshare of steps guided)",
             titled_row([("background", Image.fromarray(background)), ("object's scene", obj), ("pasted", pasted)] +
                        immersed, tile=128, nearest=True)),
            ("scribble editing\n(T_in 0.6, N_in 2)",
             titled_row([("scribbled", Image.fromarray(scribbled)), ("mask", mask.convert("RGB"))] +
                        seeds(scribble, bg=Image.fromarray(scribbled)), tile=128, nearest=True)),
            ("background augmentation\n(object kept, T_out 0,\none caption each)",
             titled_row([("pasted", pasted)] + [(words, composite(model, Image.fromarray(background), mask,
                                                                  replace(augment, prompt=f"a lime ring {words}"),
                                                                  object_image=obj)[0].image)
                                                for words in BACKDROPS], tile=128, nearest=True))]
    return stacked(rows, label_width=230)


if __name__ == "__main__":
    main()
