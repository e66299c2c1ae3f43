"""`recomposer train controlnet`: a ControlNet made from the backbone's UNet adds nothing until it learns, learns
through the frozen UNet, trains on your triplets or on world hints, on tiny SD and on bundled-format parts, and
what it writes runs in `generate --controlnet`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from recomposer.cli import main
from recomposer.models.controlnet import HINT_KINDS, with_kind_planes
from recomposer.denoiser import ModelInputs
from recomposer.training.base import BaseTraining, caption_inputs
from recomposer.training.composer import encode_scenes, rows_batch
from recomposer.training.controlnet import ControlNetTraining, new_controlnet, world_hints


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def world_batch(tiny):
    return rows_batch(encode_scenes(tiny, None, range(3), 32), tiny.mask_padding, image_embedding=False)


def test_an_untrained_net_adds_nothing_and_learns_through_the_frozen_unet(tiny, world_batch):
    """from_unet's zero convolutions: the first loss is the plain UNet's for the same draws (the same generator
    order: caption dropout, then the hint kinds, then noise and t); a step moves the net and nothing else."""
    plain = BaseTraining(tiny, caption_drop=0.1)  # (it unfreezes the UNet: ControlNetTraining freezes it again)
    net = new_controlnet(tiny, ("sketch",), seed=0)
    trainee = ControlNetTraining(tiny, net, ("sketch",), caption_drop=0.1)
    ours = trainee.step(world_batch, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    keep = torch.rand(3, generator=g) >= 0.1  # the same draws: caption dropout, the kind of each hint, then
    torch.randint(0, 1, (3,), generator=g)  # Diffusion.step's noise and timesteps
    tokens, mask = caption_inputs(world_batch, keep, plain.null)
    want = plain.diffusion.step(tiny.unet, world_batch, g, ModelInputs(context=tokens, context_mask=mask),
                                {"caption": keep})
    assert torch.allclose(ours.loss, want.loss, atol=1e-6)
    before = {k: p.detach().clone() for k, p in tiny.unet.named_parameters()}
    tiny.unet.zero_grad(set_to_none=True)  # (the session's tiny model may carry other tests' gradients)
    ours.loss.backward()
    grads = [p.grad for p in net.controlnet_down_blocks.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in tiny.unet.parameters())  # the backbone is frozen
    assert all(torch.equal(before[k], p) for k, p in tiny.unet.named_parameters())
    tiny.unet.eval()


def test_world_hints_are_the_conditions_pictures_with_kind_planes(world_batch):
    f = world_batch["features"]
    kinds = torch.tensor([0, 1, 2])
    hint = world_hints(f, kinds, HINT_KINDS)  # (3, 6, 32, 32)
    assert hint.shape == (3, 6, 32, 32)
    assert torch.equal(hint[0, :3], (1 - f["sketch"][0]).expand(3, -1, -1))  # black lines on white
    assert torch.equal(hint[1, :3], (1 - f["depth"][1]).expand(3, -1, -1))  # near bright
    assert torch.equal(hint[2, :3], f["instances"][2])
    for row, kind in enumerate(kinds.tolist()):
        planes = hint[row, 3:].flatten(1)
        assert torch.equal(planes[kind], torch.ones(32 * 32)) and planes.sum() == 32 * 32
    one = world_hints(f, torch.zeros(3, dtype=torch.long), ("depth",))
    assert one.shape == (3, 3, 32, 32) and torch.equal(one, with_kind_planes(one, torch.zeros(3), 1))


def _triplets(folder, count=3):
    """A folder of world renders, their sketches as hints and their captions, in train_controlnet's layout."""
    from recomposer.world.dataset import make_sample

    lines = []
    for seed in range(count):
        s = make_sample(seed, size=32)
        Image.fromarray(s.rendered.image).save(folder / f"{seed}.png")
        Image.fromarray(np.where(s.rendered.sketch, 0, 255).astype(np.uint8)).save(folder / f"{seed}-hint.png")
        lines.append(json.dumps({"image": f"{seed}.png", "conditioning_image": f"{seed}-hint.png",
                                 "text": s.caption}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_triplets_train_a_net_that_generate_runs(tiny_dir, tmp_path, capsys):
    data = _triplets(tmp_path)
    code, out, err = run(capsys, "train", "controlnet", "-o", tmp_path / "run", "--model", tiny_dir, "--data", data,
                         "--steps", 2, "--batch-size", 2, "--lr", 1e-3, "--size", 32, "--sample-every", 2)
    assert code == 0, err
    grid = Image.open(tmp_path / "run" / "samples" / "step-000002.png")
    assert grid.size == (3 * 32, 3 * 32)  # a row per triplet: the target, its hint, what the net made
    net = tmp_path / "run" / "controlnet"
    assert (net / "config.json").is_file() and list(net.glob("*.safetensors"))
    assert json.loads((tmp_path / "run" / "controlnet-run.json").read_text())["kinds"] == ["image"]
    code, out, err = run(capsys, "generate", "a red circle", "--model", tiny_dir, "--steps", 2, "--seed", 1,
                         "--controlnet", net, "--control-image", data / "0-hint.png", "-o", tmp_path / "out.png")
    assert code == 0 and (tmp_path / "out.png").is_file(), err


def test_world_hints_train_on_tiny_sd(tiny_dir, tmp_path, capsys):
    code, out, err = run(capsys, "train", "controlnet", "-o", tmp_path / "run", "--model", tiny_dir, "--hint", "depth",
                         "--steps", 1, "--batch-size", 2, "--size", 32, "--sample-every", 1)
    assert code == 0 and (tmp_path / "run" / "controlnet" / "config.json").is_file(), err
    assert Image.open(tmp_path / "run" / "samples" / "step-000001.png").size == (3 * 32, 4 * 32)


@pytest.mark.parametrize("args, field", [
    (("--hint", "edges"), "hint"),
    (("--hint", "sketch", "--hint", "sketch"), "hint"),
    (("--hint", "sketch", "--hint", "depth"), "hint"),  # several kinds ship as a parts folder's part
    ((), "hint"),
    (("--data", "nowhere.jsonl"), "data"),
    (("--data", "x.jsonl", "--hint", "sketch"), "data"),
    (("--hint", "sketch", "--batch-size", 0), "batch_size"),
])
def test_bad_input_is_one_line_naming_the_field(tiny_dir, tmp_path, capsys, args, field):
    code, out, err = run(capsys, "train", "controlnet", "-o", tmp_path / "run", "--model", tiny_dir, *args)
    assert code == 2 and err.startswith("error:") and field in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_bad_triplet_files_name_the_line(tiny_dir, tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text('{"image": "x.png", "conditioning_image": "y.png", "text": "t"}\n')
    code, out, err = run(capsys, "train", "controlnet", "-o", tmp_path / "run", "--model", tiny_dir,
                         "--data", tmp_path / "a.jsonl")
    assert code == 2 and "a.jsonl line 1" in err and "x.png" in err, err
    (tmp_path / "b.jsonl").write_text('{"image": "x.png"}\n')
    code, out, err = run(capsys, "train", "controlnet", "-o", tmp_path / "run", "--model", tiny_dir,
                         "--data", tmp_path / "b.jsonl")
    assert code == 2 and "conditioning_image" in err, err
