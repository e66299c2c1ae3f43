"""Visii: an instruction learnt from before/after pairs lowers the guided denoising loss on them, keeps its start,
end and padding tokens, runs through `instruct --learned` (with extra words) only on its own model, takes the CLIP
direction term from a CLIP model of the right width, and every bad input is one line with nothing written."""

import json

import pytest
import torch
from PIL import Image

from recomposer.cli import main
from recomposer.models.tiny import save_diffusers_dir, tiny_sd
from recomposer.requests import InstructRequest
from recomposer.tasks.instruct import instruct
from recomposer.tasks.visii import (
    VisiiRequest,
    _loss_plans,
    initial_caption,
    learn_instruction,
    load_learned,
    pair_tensors,
    save_learned,
)


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def ip2p():
    return tiny_sd(seed=3, in_channels=8)


@pytest.fixture(scope="module")
def ip2p_dir(ip2p, tmp_path_factory):
    return save_diffusers_dir(ip2p, tmp_path_factory.mktemp("models") / "tiny-ip2p")


@pytest.fixture(scope="module")
def pair(photo):
    return photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).point(lambda p: 255 - p)


def probe_loss(backbone, pair, request, states, mask, timesteps=(100, 300, 500, 700, 900)):
    from recomposer.denoiser import Step
    from recomposer.schedulers import make_scheduler

    images, size = pair_tensors(backbone, [pair])
    guided, inputs = _loss_plans(backbone, images, size, request, states, mask)
    scheduler = make_scheduler("ddpm", backbone.scheduler_config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x0 = backbone.encode_image(images[0][1]).mode() * backbone.vae.config.scaling_factor
        total = 0.0
        for t in timesteps:
            noise = torch.randn(x0.shape, generator=g)
            t = torch.tensor([t])
            x_t = scheduler.add_noise(x0, noise, t)
            total += float((guided(x_t, Step(0, 1, 0, 1, t), inputs[0]) - noise).square().mean())
    return total


def test_learning_lowers_the_loss_and_keeps_the_fixed_tokens(ip2p, pair):
    request = VisiiRequest(init="make it so", steps=60, lr=3e-2, seed=0)
    learned = learn_instruction(ip2p, [pair], request)
    states, mask, learnt = initial_caption(ip2p, "make it so")
    assert learnt.sum() == len("makeitso") and not learnt[0]  # the byte-level tokenizer: a token per letter
    assert torch.equal(learned.states[:, ~learnt], states[:, ~learnt])  # start, end and padding kept
    assert not torch.equal(learned.states[:, learnt], states[:, learnt])
    assert probe_loss(ip2p, pair, request, learned.states, mask) < probe_loss(ip2p, pair, request, states, mask)
    assert learned.info["model"] == ip2p.identity() and learned.info["clip"] is False


def test_a_file_round_trips_and_instruct_applies_it(ip2p, pair, photo, tmp_path):
    learned = learn_instruction(ip2p, [pair], VisiiRequest(init="flip it", steps=3))
    path = save_learned(learned, tmp_path / "i.safetensors")
    back = load_learned(path)
    assert torch.equal(back.states, learned.states) and torch.equal(back.learnt, learned.learnt)
    request = InstructRequest("", steps=2, seed=1, learned=back.info["sha256"])
    (plain,) = instruct(ip2p, photo, request, learned=back)
    (more,) = instruct(ip2p, photo, InstructRequest("and blue", steps=2, seed=1, learned=back.info["sha256"]),
                       learned=back)
    assert not torch.equal(plain.pixels, more.pixels)  # the extra words are heard
    assert plain.provenance["inputs"]["learned"]["sha256"] == back.info["sha256"]
    with pytest.raises(Exception, match="learned"):
        instruct(ip2p, photo, InstructRequest("x", steps=1), learned=back)  # the request must name the file


def test_the_clip_term_needs_a_clip_model_as_wide_as_the_text_encoder(ip2p, pair, tmp_path):
    from transformers import CLIPConfig, CLIPModel

    from recomposer.decompose.embedding import load_clip

    def clip_of(width, name):
        config = CLIPConfig(text_config=dict(vocab_size=300, hidden_size=width, intermediate_size=37,
                                             num_attention_heads=4, num_hidden_layers=1, max_position_embeddings=77,
                                             bos_token_id=0, eos_token_id=1, pad_token_id=1),
                            vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                               num_hidden_layers=1, image_size=32, patch_size=8),
                            projection_dim=16)
        torch.manual_seed(0)
        CLIPModel(config).save_pretrained(tmp_path / name, safe_serialization=True)
        return load_clip(tmp_path / name)

    learned = learn_instruction(ip2p, [pair], VisiiRequest(steps=3), clip=clip_of(32, "clip"))
    assert learned.info["clip"] is True
    with pytest.raises(Exception, match="48 wide"):
        learn_instruction(ip2p, [pair], VisiiRequest(steps=1), clip=clip_of(48, "wide"))


def test_visii_and_instruct_learned_on_the_command_line(capsys, tmp_path, ip2p_dir, pair, photo):
    before, after = pair
    before.save(tmp_path / "b.png")
    after.save(tmp_path / "a.png")
    photo.save(tmp_path / "new.png")
    code, out, err = run(capsys, "visii", tmp_path / "b.png", tmp_path / "a.png", "-o", tmp_path / "i.safetensors",
                         "--model", ip2p_dir, "--steps", 4, "--init", "flip it")
    assert code == 0 and "CLIP direction term is off" in err, err
    code, out, err = run(capsys, "instruct", tmp_path / "new.png", "--learned", tmp_path / "i.safetensors",
                         "--with-text", "more", "--model", ip2p_dir, "--steps", 2, "--seed", 0,
                         "-o", tmp_path / "edit.png")
    assert code == 0 and (tmp_path / "edit.png").is_file(), err
    other = save_diffusers_dir(tiny_sd(seed=4, in_channels=8), tmp_path / "other")
    code, out, err = run(capsys, "instruct", tmp_path / "new.png", "--learned", tmp_path / "i.safetensors",
                         "--model", other, "--steps", 2, "-o", tmp_path / "edit2.png")
    assert code != 0 and "learnt on another model" in err and not (tmp_path / "edit2.png").exists(), err


@pytest.mark.parametrize("case", ["odd", "sizes", "exists", "not-instruct", "both", "nan"])
def test_bad_input_is_one_line_and_nothing_written(capsys, tmp_path, tiny_dir, ip2p_dir, photo, case):
    photo.save(tmp_path / "b.png")
    photo.resize((16, 16)).save(tmp_path / "small.png")
    out = tmp_path / "i.safetensors"
    args = {"odd": ("visii", tmp_path / "b.png", "-o", out, "--model", ip2p_dir),
            "sizes": ("visii", tmp_path / "b.png", tmp_path / "small.png", "-o", out, "--model", ip2p_dir),
            "exists": ("visii", tmp_path / "b.png", tmp_path / "b.png", "-o", tmp_path / "b.png", "--model", ip2p_dir),
            "not-instruct": ("visii", tmp_path / "b.png", tmp_path / "b.png", "-o", out, "--model", tiny_dir),
            "both": ("instruct", tmp_path / "b.png", "make it red", "--learned", out, "-o", tmp_path / "e.png"),
            "nan": ("visii", tmp_path / "b.png", tmp_path / "b.png", "-o", out, "--guidance", "nan")}[case]
    code, stdout, err = run(capsys, *args)
    assert code != 0 and len(err.strip().splitlines()) == 1 and not out.exists(), err
    assert not (tmp_path / "e.png").exists()
    assert {"odd": "images", "sizes": "images", "exists": "output", "not-instruct": "not an instruction model",
            "both": "with-text", "nan": "guidance"}[case] in err, err
    json.dumps(case)
