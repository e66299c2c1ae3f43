"""`recomposer demo`: the bundled model decomposes two images and recomposes them, on a CPU in well under a minute.

The two images: a held-out shapes-world scene (the model's own domain) and scikit-image's photo of a cat
(``chelsea``), fitted to 64 px. Each row of the sheet is one Composer task; every image is also saved.
"""

from pathlib import Path

from PIL import Image

SCENE_SEED_OFFSET = 7  # evaluation scene EVAL_SEED_BASE + 7: two small objects on a flat background


def run_demo(output: Path, steps: int = 20, model_path: str | None = None) -> Path:
    from .. import validation as v
    from ..conditions import Caption, ConditionSet
    from ..io.files import write_folder
    from ..provenance import write_png
    from ..io.sheets import stacked, titled_row
    from ..tasks.composer import ComposeRequest, compose, load_composer
    from ..world.dataset import eval_seeds, make_sample

    from ..io.output import check_new_folder

    v.integer("steps", steps, 1, 1000)
    check_new_folder(output)
    from skimage import data

    model = load_composer(model_path)
    scene = make_sample(eval_seeds(1, SCENE_SEED_OFFSET)[0], size=model.size)
    a = Image.fromarray(scene.rendered.image)
    b = model.fit(Image.fromarray(data.chelsea()))
    kinds = ("image_embedding", "palette", "sketch", "instances", "intensity")
    ca = model.decompose(a, ("caption", *kinds), caption=scene.caption)
    cb = model.decompose(b, kinds)

    def run(conds, seeds=3):
        return compose(model, conds, ComposeRequest(steps=steps, batch=seeds, seed=1))

    caption = Caption(scene.caption)
    rows = {
        "inputs": [("scene", a), *[(k, ca[k].picture()) for k in ("sketch", "instances", "palette")],
                   ("photo", b), *[(k, cb[k].picture()) for k in ("sketch", "palette")]],
        "scene, from all\nits conditions": run(ca),
        "scene variations\n(embedding + palette)": run(ca.without("sketch", "instances", "intensity")),
        "palette swap: scene\nlayout, photo colours": run(ca.without("palette", "image_embedding", "intensity")
                                                            .with_(cb["palette"])),
        "mixed: photo sketch +\nscene palette + caption": run(cb.without("palette", "image_embedding",
                                                                          "instances", "intensity")
                                                               .with_(ca["palette"], caption)),
        "caption only": run(ConditionSet.of(caption)),
        "photo, from its\nsketch + palette": run(cb.without("image_embedding", "instances", "intensity")),
    }
    files, tiles = {}, []
    for label, images in rows.items():
        named = images if label == "inputs" else [(f"seed {k + 1}", r.image) for k, r in enumerate(images)]
        tiles.append((label, titled_row(named, tile=128, nearest=True)))
        slug = label.split("\n")[0].replace(" ", "-").replace(",", "").replace(":", "")
        for k, (_, im) in enumerate(named):
            name = f"{slug}-{k}.png"
            files[name] = im if label == "inputs" else (  # a result carries its provenance, as every command's do
                lambda folder, name=name, r=images[k]: write_png(folder / name, r.image, r.provenance))
    files["sheet.png"] = stacked(tiles)
    files["caption.txt"] = scene.caption + "\n"
    write_folder(output, files)
    return output / "sheet.png"
