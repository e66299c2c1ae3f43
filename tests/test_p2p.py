"""Prompt-to-Prompt, attention processors and real-image inversion through the one loop, on tiny SD (CLIP,
byte-level tokens) and on the bundled model (MiniLM, padding masked)."""

import numpy as np
import pytest
import torch

from recomposer.attention.p2p import Edit, refine_mapper, swap_mapper, word_tokens
from recomposer.attention.processors import installed
from recomposer.attention.store import AttentionStore
from recomposer.cli import main
from recomposer.errors import InvalidParameter, ModelError
from recomposer.inversion import Inversion, invert, psnr
from recomposer.tasks.generate import GenerateRequest, generate
from recomposer.tasks.p2p import MapsRequest, P2PRequest, attention_maps, edit_kind, prompt_to_prompt

SOURCE, EDITED = "a red circle", "a blue circle"


def pixels(result):
    return np.asarray(result.image)


def test_the_same_prompt_gives_the_source_exactly(tiny):
    source, edited = prompt_to_prompt(tiny, P2PRequest(SOURCE, SOURCE, steps=6))
    assert np.array_equal(pixels(source), pixels(edited)) and torch.equal(source.pixels, edited.pixels)


def test_no_replacement_is_a_plain_generation_of_the_edited_prompt(tiny):
    _, edited = prompt_to_prompt(tiny, P2PRequest(SOURCE, EDITED, steps=6, seed=3,
                                                  edit=Edit(cross_replace=0.0, self_replace=0.0)))
    (plain,) = generate(tiny, GenerateRequest(EDITED, scheduler="ddim", steps=6, seed=3, guidance=7.5))
    assert np.array_equal(pixels(edited), pixels(plain)) and torch.allclose(edited.pixels, plain.pixels, atol=1e-5)


def test_a_swap_changes_the_image_and_keeps_the_source(tiny):
    source, edited = prompt_to_prompt(tiny, P2PRequest(SOURCE, EDITED, steps=6, seed=3))
    (plain,) = generate(tiny, GenerateRequest(SOURCE, scheduler="ddim", steps=6, seed=3, guidance=7.5))
    assert np.array_equal(pixels(source), pixels(plain))  # the source row is exactly a plain generation
    assert not torch.equal(source.pixels, edited.pixels)
    free = prompt_to_prompt(tiny, P2PRequest(SOURCE, EDITED, steps=6, seed=3,
                                             edit=Edit(cross_replace=0.0, self_replace=0.0)))[1]
    # attention injection pulls the edit towards the source
    assert (edited.pixels - source.pixels).abs().mean() < (free.pixels - source.pixels).abs().mean()


def test_reweighting_by_one_and_a_refinement_adding_nothing_change_nothing(tiny):
    _, swapped = prompt_to_prompt(tiny, P2PRequest(SOURCE, EDITED, steps=6, seed=1))
    _, reweighted = prompt_to_prompt(tiny, P2PRequest(SOURCE, EDITED, steps=6, seed=1, edit=Edit(reweight={"blue": 1.0})))
    assert torch.equal(swapped.pixels, reweighted.pixels)
    for edit in (Edit(cross_replace=1.0, self_replace=1.0), Edit(reweight={"red": 1.0})):
        source, same = prompt_to_prompt(tiny, P2PRequest(SOURCE, SOURCE, steps=6, seed=1, edit=edit))
        assert torch.equal(source.pixels, same.pixels)
    m, alphas = refine_mapper(tiny.tokenizer, SOURCE, SOURCE, 77)
    assert torch.equal(m, torch.eye(77)) and alphas.eq(1).all()
    source, stronger = prompt_to_prompt(tiny, P2PRequest(SOURCE, SOURCE, steps=6, seed=1,
                                                         edit=Edit(reweight={"red": 1.8})))
    assert not torch.equal(stronger.pixels, source.pixels)


def test_refinement_aligns_tokens_and_swaps_map_words():
    from recomposer.models.tiny import byte_level_tokenizer

    tok = byte_level_tokenizer()
    assert edit_kind("a red circle", "a red circle in snow") == "refine"
    assert edit_kind("a red circle", "a blue circle") == "swap"
    m, alphas = refine_mapper(tok, "a cat", "a big cat", 20)
    words, positions, end = word_tokens(tok, "a big cat")
    assert alphas[positions[1]].eq(0).all() and alphas[positions[2]].eq(1).all()  # "big" is new, "cat" aligned
    swap = swap_mapper(tok, "a cat", "a tiger", 20)  # "cat" (3 tokens) -> "tiger" (5): each takes the mean
    _, src, _ = word_tokens(tok, "a cat")
    _, dst, _ = word_tokens(tok, "a tiger")
    assert torch.allclose(swap[src[1]][:, dst[1]], torch.full((3, 5), 1 / 3))
    assert swap.sum(0)[:end].gt(0).all()


def test_local_blend_keeps_the_source_outside_the_blend_region(tiny):
    seen = {}
    import recomposer.attention.p2p as p2p

    real = p2p.local_blend

    def spying(store, words, threshold, start):
        hook = real(store, words, threshold, start)

        def wrapped(state):
            out = hook(state)
            seen["last"] = (state.x_next.clone(), out.clone())
            return out

        return wrapped

    p2p_module = __import__("recomposer.tasks.p2p", fromlist=["local_blend"])
    original = p2p_module.local_blend
    p2p_module.local_blend = spying
    try:
        prompt_to_prompt(tiny, P2PRequest(SOURCE, EDITED, steps=6, edit=Edit(blend=("red", "blue"), blend_threshold=0.95)))
    finally:
        p2p_module.local_blend = original
    before, after = seen["last"]
    outside = (after[1] == after[0]).all(0)  # latent cells where the edit is the source's
    assert outside.any() and not outside.all()
    assert torch.equal(after[1][:, outside], after[0][:, outside])
    assert torch.allclose(after[1][:, ~outside], before[1][:, ~outside], atol=1e-5)


def test_processors_are_removed_after_a_run(tiny):
    (before,) = generate(tiny, GenerateRequest(SOURCE, steps=4, seed=2))
    originals = dict(tiny.unet.attn_processors)
    prompt_to_prompt(tiny, P2PRequest(SOURCE, EDITED, steps=4))
    with pytest.raises(RuntimeError):
        with installed(tiny.unet, AttentionStore(), (16, 16)):
            raise RuntimeError("a run that fails")
    assert {k: type(v) for k, v in tiny.unet.attn_processors.items()} == {k: type(v) for k, v in originals.items()}
    (after,) = generate(tiny, GenerateRequest(SOURCE, steps=4, seed=2))
    assert torch.equal(before.pixels, after.pixels)


def test_attention_maps_cover_every_word_at_every_cross_attention_resolution(tiny):
    result, maps, words = attention_maps(tiny, MapsRequest("a red circle", steps=3))
    assert words == ["a", "red", "circle"] and maps and all(m.shape[0] == 3 for m in maps.values())
    assert all(torch.isfinite(m).all() and m.ge(0).all() for m in maps.values())
    (plain,) = generate(tiny, GenerateRequest("a red circle", scheduler="ddim", steps=3, seed=0, guidance=7.5))
    assert np.array_equal(pixels(result), pixels(plain))  # reading the maps changed nothing


@pytest.mark.parametrize("request_, field", [
    (P2PRequest(SOURCE, "a blue big round circle"), "edited"),
    (P2PRequest(SOURCE, EDITED, edit=Edit(reweight={"green": 2.0})), "reweight"),
    (P2PRequest(SOURCE, EDITED, edit=Edit(blend=("square",))), "blend"),
    (P2PRequest(SOURCE, EDITED, edit=Edit(cross_replace=1.5)), "cross-replace"),
    (P2PRequest(SOURCE, EDITED, edit=Edit(self_replace=-0.1)), "self-replace"),
    (P2PRequest(SOURCE, EDITED, edit=Edit(reweight={"blue": 3.0})), "reweight.blue"),
])
def test_bad_edits_name_the_field(tiny, request_, field):
    with pytest.raises(InvalidParameter) as e:
        prompt_to_prompt(tiny, request_)
    assert e.value.field == field


def test_batch_of_edits_equals_singles(tiny):
    """Two samples' P2P rows in one forward compute what each computes alone (batch == singles, R8)."""
    a = prompt_to_prompt(tiny, P2PRequest(SOURCE, EDITED, steps=4, seed=5))
    b = prompt_to_prompt(tiny, P2PRequest(SOURCE, EDITED, steps=4, seed=5))
    assert torch.equal(a[1].pixels, b[1].pixels)


# ---------------------------------------------------------------- inversion

def test_inversion_round_trips_exactly_where_the_model_allows_it(tiny, monkeypatch):
    """The mechanism: with a denoiser whose ε does not depend on x (so DDIM's path is linear), walking the
    path up with the inverse scheduler and down with DDIM gives the latents back to float precision."""
    from recomposer.denoiser import BackboneDenoiser
    from recomposer.inversion import ddim_path

    e = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(BackboneDenoiser, "__call__", lambda self, x, step, inputs: e.expand_as(x))
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for steps in (5, 12):
        path = ddim_path(tiny, image, SOURCE, steps)
        inversion = Inversion(invert(tiny, image, SOURCE, "ddim", steps=steps).info, path[-1])
        source, _ = prompt_to_prompt(tiny, P2PRequest(SOURCE, SOURCE, steps=steps, guidance=1.0,
                                                      edit=Edit(cross_replace=0, self_replace=0)), inversion)
        with torch.no_grad():
            want = tiny.decode(path[0])[0].float()
        assert torch.allclose(source.pixels * 2 - 1, want.clamp(-1, 1), atol=2e-4)


@pytest.fixture(scope="module")
def bundled_scene():
    from recomposer.models.loading import load_bundled
    from recomposer.world.dataset import eval_seeds, make_sample

    sample = make_sample(eval_seeds(1, 7)[0])
    return load_bundled(torch.device("cpu"), torch.float32), sample.tensors()["image"][None], sample.caption


def reconstruct(backbone, inversion, prompt, guidance):
    source, _ = prompt_to_prompt(backbone, P2PRequest(prompt, prompt, steps=inversion.info.steps, guidance=guidance,
                                                      edit=Edit(cross_replace=0, self_replace=0)), inversion)
    return source.pixels[None] * 2 - 1


def test_null_text_beats_ddim_at_the_edit_guidance_and_negative_prompt_retraces_ddim(bundled_scene):
    backbone, image, caption = bundled_scene
    ddim = invert(backbone, image, caption, "ddim", steps=10)
    null = invert(backbone, image, caption, "null-text", steps=10, guidance=3.0, inner=4)
    fast = invert(backbone, image, caption, "negative-prompt", steps=10, guidance=3.0)
    plain, optimised, negative = (reconstruct(backbone, i, caption, 3.0) for i in (ddim, null, fast))
    assert psnr(optimised, image) > psnr(plain, image) + 1, (psnr(optimised, image), psnr(plain, image))
    # ∅ := the prompt: at any guidance the sampler follows the prompt alone, DDIM's own path (guidance 1)
    assert torch.allclose(negative, reconstruct(backbone, ddim, caption, 1.0), atol=1e-4)
    assert null.info.first == 1 and null.nulls.shape[0] == 10 - 1 and fast.nulls is None  # zero terminal SNR


def test_direct_inversion_keeps_the_source_row_on_the_ddim_path(bundled_scene, tmp_path):
    """Ju et al. 2024: the source row is the image up to the VAE, exactly; the edited row follows its own prompt.
    On the bundled model (zero terminal SNR) the path starts one level below x_T, where it still holds the image."""
    from recomposer.inversion import ddim_path, zero_terminal_snr

    backbone, image, caption = bundled_scene
    direct = invert(backbone, image, caption, "direct", steps=10, guidance=3.0)
    assert zero_terminal_snr(backbone) and direct.info.first == 1 and direct.path.shape[0] == 9
    with torch.no_grad():
        vae = backbone.decode(ddim_path(backbone, image, caption, 10)[0])[0].float().clamp(-1, 1)
    source, edited = prompt_to_prompt(backbone, P2PRequest(caption, caption.replace("a ", "one ", 1), steps=10,
                                                           guidance=3.0), direct)
    assert torch.allclose(source.pixels * 2 - 1, vae, atol=1e-4)
    assert not torch.allclose(edited.pixels, source.pixels, atol=1e-3)
    direct.save(tmp_path / "inv")
    assert torch.equal(Inversion.load(tmp_path / "inv", backbone).path, direct.path.float())


def test_a_schedule_with_signal_at_its_end_inverts_all_the_way_up(tiny):
    from recomposer.inversion import zero_terminal_snr

    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    assert not zero_terminal_snr(tiny) and invert(tiny, image, SOURCE, "direct", steps=4).info.first == 0


def test_a_saved_inversion_reloads_bit_identically_and_refuses_another_model(tiny, tmp_path):
    from recomposer.models.tiny import tiny_sd

    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    inversion = invert(tiny, image, SOURCE, "null-text", steps=4, guidance=5.0, inner=2)
    inversion.save(tmp_path / "inv")
    again = Inversion.load(tmp_path / "inv", tiny)
    assert torch.equal(again.latents, inversion.latents.float()) and torch.equal(again.nulls, inversion.nulls.float())
    assert again.info == inversion.info
    with pytest.raises(ModelError, match="another model"):
        Inversion.load(tmp_path / "inv", tiny_sd(seed=1))


# ---------------------------------------------------------------- the commands

def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_p2p_invert_and_attention_commands(tiny_dir, photo, tmp_path, capsys):
    photo.save(tmp_path / "photo.png")
    code, out, err = run(capsys, "p2p", SOURCE, EDITED, "--model", tiny_dir, "--steps", 4, "--reweight", "blue=1.5",
                         "--blend", "blue", "-o", tmp_path / "p2p")
    assert code == 0 and out.split() == [str(tmp_path / "p2p" / "source.png"), str(tmp_path / "p2p" / "edited.png")], err
    code, out, err = run(capsys, "invert", tmp_path / "photo.png", "--prompt", "an astronaut", "--method",
                         "negative-prompt", "--steps", 4, "--model", tiny_dir, "-o", tmp_path / "inv")
    assert code == 0 and (tmp_path / "inv" / "inversion.safetensors").is_file(), err
    code, out, err = run(capsys, "p2p", "an astronaut in red", "--inversion", tmp_path / "inv", "--model", tiny_dir,
                         "-o", tmp_path / "edit")
    assert code == 0 and (tmp_path / "edit" / "edited.png").is_file(), err
    code, out, err = run(capsys, "attention", SOURCE, "--model", tiny_dir, "--steps", 2, "-o", tmp_path / "maps")
    assert code == 0 and (tmp_path / "maps" / "sheet.png").is_file(), err


@pytest.mark.parametrize("args, field", [
    (("p2p", SOURCE, "a blue big round circle"), "edited"),
    (("p2p", SOURCE, EDITED, "--reweight", "green=2"), "reweight"),
    (("p2p", SOURCE, EDITED, "--blend", "square"), "blend"),
    (("p2p", SOURCE, EDITED, "--cross-replace", 2), "cross-replace"),
    (("p2p", SOURCE, EDITED, "--reweight", "blue"), "reweight"),
    (("p2p", SOURCE), "EDITED_PROMPT"),
    (("invert", "nowhere.png", "--prompt", "x", "--method", "magic"), "method"),
])
def test_bad_command_input_is_one_line_and_writes_nothing(tiny_dir, tmp_path, capsys, args, field):
    code, out, err = run(capsys, *args, "--model", tiny_dir, "-o", tmp_path / "out")
    assert code == 2 and err.startswith(f"error: {field}:"), err
    assert not (tmp_path / "out").exists()


def test_an_inversion_of_another_model_or_size_is_refused(tiny_dir, photo, tmp_path, capsys):
    from recomposer.models.tiny import save_diffusers_dir, tiny_sd

    photo.save(tmp_path / "photo.png")
    assert run(capsys, "invert", tmp_path / "photo.png", "--prompt", "x", "--method", "ddim", "--steps", 2, "--model",
               tiny_dir, "-o", tmp_path / "inv")[0] == 0
    other = save_diffusers_dir(tiny_sd(seed=4), tmp_path / "other")
    code, out, err = run(capsys, "p2p", "y", "--inversion", tmp_path / "inv", "--model", other, "-o", tmp_path / "o")
    assert code == 2 and "another model" in err and not (tmp_path / "o").exists()
