"""Cross-domain compositing: masked ILVR that does nothing at T = 0 (plain img2img), reproduces the reference at
N = 1, T = 1, keeps the outside, agrees across spaces with an empty mask; resampling that costs what it says; the
command with provenance, recall and one-line errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from recomposer.cli import main
from recomposer.ilvr import blurred, low_pass
from recomposer.io.images import to_tensor
from recomposer.requests import CompositeRequest, GenerateRequest
from recomposer.tasks.composite import composite
from recomposer.tasks.generate import generate


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def scene():
    """A background, an object from another scene and its mask, at 32 px (the tiny SD's size)."""
    from recomposer.world.dataset import make_sample

    bg = make_sample(5000010, size=32).rendered.image
    source = make_sample(5000011, size=32).rendered
    k = np.bincount(source.labels.ravel())[1:].argmax() + 1
    mask = (source.labels == k)
    return Image.fromarray(bg), Image.fromarray(source.image), Image.fromarray((mask * 255).astype(np.uint8)), mask


def pasted(scene):
    bg, obj, _, mask = scene
    return Image.fromarray(np.where(mask[..., None], np.asarray(obj), np.asarray(bg)))


def test_low_pass_keeps_the_mean_and_blur_the_range():
    x = torch.randn(1, 4, 16, 16)
    assert torch.equal(low_pass(x, 1), x)
    assert torch.allclose(low_pass(x, 4).mean(), x.mean(), atol=1e-5)
    m = torch.zeros(1, 1, 16, 16)
    m[..., 4:12, 4:12] = 1
    b = blurred(m, 1.5)
    assert b.min() >= 0 and b.max() <= 1 and 0 < b[0, 0, 4, 3] < 1


def test_no_guidance_is_plain_img2img(tiny, scene):
    bg, obj, mask, _ = scene
    request = CompositeRequest("a scene", application="scribble", t_in=0.0, t_out=0.0, strength=0.6, steps=10,
                               guidance=5.0, seed=4, batch=2, allow_flat=True)
    ours = composite(tiny, bg, mask, request, obj)
    plain = generate(tiny, GenerateRequest("a scene", scheduler="ddim", steps=10, guidance=5.0, seed=4, batch=2,
                                           strength=0.6, allow_flat=True), image=pasted(scene))
    for a, b in zip(ours, plain):
        assert (a.pixels - b.pixels).abs().max() < 1e-5  # (float rounding: a batch and its singles differ so)


@pytest.mark.parametrize("space, scheduler", [("xt", "ddim"), ("x0", "euler"), ("xt", "euler_a")])
def test_full_guidance_at_n1_reproduces_the_reference_up_to_the_vae(tiny, scene, space, scheduler):
    """x_t: the last step lands on y_0 itself, whatever the scheduler. x̂₀: the step's noise part is kept, so the
    result is y_0 where the last step is clean (Euler's σ ends at 0; SD's DDIM ends at ᾱ_0 < 1, a little noise)."""
    bg, obj, mask, _ = scene
    request = CompositeRequest("", application="immersion", t_in=1.0, t_out=1.0, n_in=1, n_out=1, space=space,
                               resamples=0, steps=8, seed=0, scheduler=scheduler, allow_flat=True)
    (ours,) = composite(tiny, bg, mask, request, obj)
    with torch.no_grad():
        y0 = tiny.encode_image(to_tensor(pasted(scene))).mode() * tiny.vae.config.scaling_factor
        want = (tiny.decode(y0).float() / 2 + 0.5).clamp(0, 1)[0]
    assert torch.allclose(ours.pixels, want, atol=1e-4)


def test_the_outside_is_kept_within_the_vaes_error(scene):
    from recomposer.models.loading import load_bundled
    from recomposer.world.dataset import make_sample

    bundled = load_bundled(torch.device("cpu"), torch.float32)
    bg = make_sample(5000010).rendered.image
    source = make_sample(5000011).rendered
    k = np.bincount(source.labels.ravel())[1:].argmax() + 1
    region = source.labels == k
    request = CompositeRequest("", application="immersion", t_in=0.3, n_in=2, resamples=0, steps=12, seed=0,
                               allow_flat=True)
    (ours,) = composite(bundled, Image.fromarray(bg), Image.fromarray((region * 255).astype(np.uint8)), request,
                        Image.fromarray(source.image))
    with torch.no_grad():
        y = to_tensor(Image.fromarray(np.where(region[..., None], source.image, bg)))
        recon = (bundled.decode(bundled.encode_image(y).mode() * bundled.vae.config.scaling_factor) / 2 + 0.5)
    far = ~torch.nn.functional.max_pool2d(torch.from_numpy(region).float()[None, None], 17, 1, 8)[0, 0].bool()
    target = torch.from_numpy(bg).permute(2, 0, 1).float() / 255
    error = (ours.pixels - target)[:, far].square().mean()
    vae_error = (recon[0].clamp(0, 1) - target)[:, far].square().mean()
    assert far.sum() > 500 and error <= vae_error * 1.5 + 1e-4, (error, vae_error)


def test_spaces_agree_with_an_empty_mask(tiny, scene):
    bg, obj, _, _ = scene
    empty = Image.new("L", bg.size, 0)
    results = [composite(tiny, bg, empty, CompositeRequest("x", application="immersion", t_in=0.7, t_out=0.0,
                                                           space=space, resamples=0, steps=6, seed=1,
                                                           allow_flat=True), obj)[0].pixels for space in ("xt", "x0")]
    assert torch.equal(*results)


def test_zero_resamples_is_no_resampling_and_resampling_costs_its_evaluations(tiny, scene):
    bg, obj, mask, _ = scene
    common = dict(application="scribble", steps=10, seed=2, allow_flat=True)  # (scribble: no resampling of its own)
    (none,) = composite(tiny, bg, mask, CompositeRequest("x", **common), obj)
    (zero,) = composite(tiny, bg, mask, CompositeRequest("x", resample_start=0.2, resamples=0, **common), obj)
    assert torch.equal(none.pixels, zero.pixels) and zero.provenance["evaluations"] == 10
    (more,) = composite(tiny, bg, mask, CompositeRequest("x", resample_start=0.2, jump=4, resamples=2, **common), obj)
    assert more.provenance["evaluations"] == 2 + 4 * 3 + 4  # steps 0-1, block 2-5 run 3 times, the last block once
    assert not torch.equal(none.pixels, more.pixels)


def test_composite_command_with_recall(capsys, tmp_path, scene, tiny_dir):
    bg, obj, mask, _ = scene
    for name, im in (("bg", bg), ("obj", obj), ("mask", mask)):
        im.save(tmp_path / f"{name}.png")
    code, out, err = run(capsys, "composite", tmp_path / "bg.png", "--object", tmp_path / "obj.png", "--mask",
                         tmp_path / "mask.png", "--model", tiny_dir, "--steps", 6, "--seed", 3, "--jump", 2,
                         "--resamples", 1, "-o", tmp_path / "out.png")
    assert code == 0, err
    code, out, err = run(capsys, "recall", tmp_path / "out.png")
    assert code == 0 and "identical pixels" in out + err, out + err


@pytest.mark.parametrize("args, field", [
    (("--t-in", 1.5), "t-in"),
    (("--n-in", 3), "n-in"),
    (("--object", "small.png"), "object"),
    (("--augment",), "augment"),
    (("--space", "pixels"), "space"),
    (("--mask", "black.png"), "marks no pixel"),
    (("--scheduler", "heun"), "scheduler"),
    (("--scheduler", "dpmpp_2m", "--resample-start", 0.2), "scheduler"),
])
def test_bad_input_is_one_line_and_nothing_written(capsys, tmp_path, scene, tiny_dir, args, field):
    bg, obj, mask, _ = scene
    bg.save(tmp_path / "bg.png")
    mask.save(tmp_path / "mask.png")
    obj.resize((16, 16)).save(tmp_path / "small.png")
    Image.new("L", bg.size, 0).save(tmp_path / "black.png")
    args = tuple(tmp_path / a if isinstance(a, str) and a.endswith(".png") else a for a in args)
    code, out, err = run(capsys, "composite", tmp_path / "bg.png", "--mask", tmp_path / "mask.png", "--model",
                         tiny_dir, "--steps", 2, *args, "-o", tmp_path / "out.png")
    assert code != 0 and field in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.png").exists()


def test_the_applications_by_name_are_composite_with_their_defaults(tiny, scene):
    from recomposer.tasks.composite import augment_backgrounds, immerse, scribble_edit

    bg, obj, mask, _ = scene
    request = CompositeRequest("x", steps=3, seed=5, resamples=0, allow_flat=True)
    for named, application, args in ((immerse, "immersion", (bg, obj, mask)), (scribble_edit, "scribble", (bg, mask)),
                                     (augment_backgrounds, "augment", (bg, obj, mask))):
        (ours,) = named(tiny, *args, request=request)
        assert ours.provenance["params"]["application"] == application
        given = obj if application != "scribble" else None
        (direct,) = composite(tiny, bg, mask, CompositeRequest("x", application=application, steps=3, seed=5,
                                                               resamples=0, allow_flat=True), given)
        assert torch.equal(ours.pixels, direct.pixels)
