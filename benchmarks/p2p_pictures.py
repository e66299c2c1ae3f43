"""The README's pictures of Prompt-to-Prompt, attention maps and real-image inversion on the bundled model.

    python benchmarks/p2p_pictures.py [--model PARTS_OR_DIR] [-o docs/images/p2p.png]

Rows: a word swap, a refinement, a reweighting, a local blend (each: the source, then its edit, for three
seeds); one prompt's cross-attention maps per word at each resolution; and a held-out shapes-world render
(an image the model never saw, from its own world) and a real photo, each inverted with direct inversion,
reconstructed and edited. Everything runs through the same functions as `recomposer p2p`, `attention` and `invert`.
"""

import argparse
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/images/p2p.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    from recomposer.inversion import invert, psnr
    from recomposer.io.images import to_tensor
    from recomposer.io.sheets import stacked, titled_row
    from recomposer.models.loading import load_bundled, load_model
    from recomposer.requests import Edit, MapsRequest, P2PRequest
    from recomposer.tasks.p2p import attention_maps, map_picture, prompt_to_prompt
    from recomposer.world.dataset import eval_seeds, make_sample

    cpu = torch.device("cpu")
    b = load_bundled(cpu, torch.float32) if args.model is None else load_model(args.model, cpu, torch.float32)
    base = P2PRequest("x", "x", steps=args.steps, guidance=5.0)
    edits = [
        ("word swap\nred -> green", "a red circle above a blue square", "a green circle above a blue square", Edit()),
        ("refinement\n+ striped background", "a red circle", "a red circle on a striped background",
         Edit(cross_replace=0.6)),
        ("reweight\ncircle x 1.8", "a red circle above a blue square", "a red circle above a blue square",
         Edit(reweight={"circle": 1.8})),
        ("local blend\ncircle -> star", "a red circle above a blue square", "a red star above a blue square",
         Edit(blend=("circle", "star"))),
    ]
    tiles = []
    for label, source, edited, edit in edits:
        row = []
        for seed in (1, 2, 3):
            a, e = prompt_to_prompt(b, replace(base, source=source, edited=edited, edit=edit, seed=seed))
            row += [(f"seed {seed}: source", a.image), ("edited", e.image)]
        tiles.append((label, titled_row(row, tile=96, nearest=True)))

    prompt = "a red circle above a blue square"
    image, maps, words = attention_maps(b, MapsRequest(prompt, steps=args.steps, guidance=5.0, seed=1))
    for grid, per_word in sorted(maps.items(), key=lambda kv: -kv[0][0]):
        row = [("image", image.image)] + [(word, map_picture(m, 96).convert("RGB")) for word, m in zip(words, per_word)]
        tiles.append((f"attention\n{grid[0]}x{grid[1]} cells", titled_row(row, tile=96, nearest=True)))

    scene = make_sample(eval_seeds(1, 1)[0], size=b.native_size)  # "a sky background with a big blue hexagon"
    real = Image.fromarray(scene.rendered.image)
    pixels = to_tensor(real)
    inversion = invert(b, pixels, scene.caption, "direct", args.steps, 5.0)
    same = Edit(cross_replace=1.0, self_replace=1.0)
    again, _ = prompt_to_prompt(b, replace(base, source=scene.caption, edited=scene.caption, edit=same), inversion)
    row = [("held-out render", real), (f"rebuilt {psnr(to_tensor(again.image), pixels):.1f} dB", again.image)]
    for old, new in (("blue", "red"), ("blue", "yellow"), ("hexagon", "circle")):
        changed = scene.caption.replace(old, new, 1)
        _, e = prompt_to_prompt(b, replace(base, source=scene.caption, edited=changed), inversion)
        row.append((f"{old} -> {new}", e.image))
    tiles.append(("inverted render,\nedited", titled_row(row, tile=96, nearest=True)))

    from skimage import data  # a real photo: far outside the bundled model's world, so its edits say little

    from recomposer.conditions.fitting import fit_image

    photo = fit_image(Image.fromarray(data.coffee()), (b.native_size, b.native_size))
    pixels = to_tensor(photo)
    inversion = invert(b, pixels, "a cup of coffee", "direct", args.steps, 5.0)
    again, _ = prompt_to_prompt(b, replace(base, source="a cup of coffee", edited="a cup of coffee", edit=same),
                                inversion)
    row = [("photo", photo), (f"rebuilt {psnr(to_tensor(again.image), pixels):.1f} dB", again.image)]
    for edited in ("a red cup of coffee", "a cup of tea"):
        _, e = prompt_to_prompt(b, replace(base, source="a cup of coffee", edited=edited), inversion)
        row.append((edited.replace("a cup of ", "").replace("a red cup", "red cup"), e.image))
    tiles.append(("inverted photo,\nedited", titled_row(row, tile=96, nearest=True)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    stacked(tiles).save(args.output)
    print(args.output)


if __name__ == "__main__":
    main()
