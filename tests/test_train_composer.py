"""Composer training: the dropout rule's statistics, the step on tiny SD (training sees exactly what sampling
sees, only the adapter learns, it can fit a batch, epsilon and v targets), and `recomposer train composer`
with checkpoints, resume and refused parameters."""

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from recomposer.cli import main
from recomposer.conditions import ConditionSet
from recomposer.denoiser import BackboneDenoiser, forward_unet
from recomposer.errors import InvalidParameter
from recomposer.models.composer import ComposerAdapter
from recomposer.models.tiny import tiny_sd
from recomposer.training import TrainConfig, read_loss_log, train
from recomposer.training.composer import (WORLD_KINDS, ComposerTraining, composer_batch, composer_step, new_adapter,
                                          world_batches, world_conditions, world_sampler)
from recomposer.training.dropout import DropoutRates, condition_keep
from recomposer.world.dataset import EVAL_SEED_BASE, make_sample

KINDS = ("caption", "palette", "sketch", "instances", "depth", "intensity", "masked_image")
N = 200_000  # samples for the dropout statistics


# ---------------------------------------------------------------- dropout

def close(observed: float, p: float, n: int = N) -> bool:
    """Within 5 binomial standard deviations of p."""
    return abs(observed - p) <= 5 * math.sqrt(p * (1 - p) / n)


def keep_matrix(rates=DropoutRates(), seed=0, kinds=KINDS, n=N):
    keep = condition_keep(kinds, n, rates, torch.Generator().manual_seed(seed))
    return torch.stack([keep[k] for k in kinds], dim=1)  # (N, K) bool


def test_dropout_frequencies_match_the_combined_rule():
    kept = keep_matrix()
    rest = 0.8  # 1 − all_dropped − all_kept
    p = torch.tensor([0.7 if k == "intensity" else 0.5 for k in KINDS], dtype=torch.float64)
    for j, kind in enumerate(KINDS):  # P(k kept) = all_kept + rest·(1 − p_k)
        assert close(kept[:, j].double().mean().item(), 0.1 + rest * (1 - p[j].item())), kind
    assert close((~kept).all(1).double().mean().item(), 0.1 + rest * p.prod().item())  # ≈ 0.1087
    assert close(kept.all(1).double().mean().item(), 0.1 + rest * (1 - p).prod().item())  # ≈ 0.1038
    # the modes make kinds dependent within a sample: P(both kept) = 0.1 + 0.8·0.25 = 0.3, not 0.5·0.5
    assert close((kept[:, 0] & kept[:, 1]).double().mean().item(), 0.3)
    # the two all-or-nothing sets are disjoint: with all_dropped + all_kept = 1 nothing is mixed
    split = keep_matrix(DropoutRates(all_dropped=0.3, all_kept=0.7), n=20_000)
    assert bool((split.all(1) | (~split).all(1)).all()) and close(split.all(1).double().mean().item(), 0.7, 20_000)


def test_caption_alone_keeps_only_the_caption_in_its_share():
    kept = keep_matrix(DropoutRates(caption_alone=0.3))
    others = kept[:, 1:]  # KINDS[0] is the caption
    rest = 0.5  # 1 − all_dropped − all_kept − caption_alone
    p = torch.tensor([0.7 if k == "intensity" else 0.5 for k in KINDS], dtype=torch.float64)
    alone = kept[:, 0] & ~others.any(1)  # the share, plus the independent draws that happen to give the same
    assert close(alone.double().mean().item(), 0.3 + rest * (1 - p[0].item()) * p[1:].prod().item())
    assert close(kept[:, 0].double().mean().item(), 0.1 + 0.3 + rest * 0.5)
    for j in range(1, len(KINDS)):  # every other kind loses the share
        assert close(kept[:, j].double().mean().item(), 0.1 + rest * (1 - p[j].item())), KINDS[j]
    assert close((~kept).all(1).double().mean().item(), 0.1 + rest * p.prod().item())
    # without a caption among the kinds, the share drops everything
    none = keep_matrix(DropoutRates(caption_alone=1.0, all_dropped=0.0, all_kept=0.0), kinds=KINDS[1:], n=64)
    assert not none.any()


def test_dropout_is_independent_across_samples():
    kept = keep_matrix().double()  # neighbouring rows: joint frequency = product of marginals
    for j in (0, KINDS.index("intensity")):
        a, b = kept[:-1, j], kept[1:, j]
        assert close((a * b).mean().item(), a.mean().item() * b.mean().item())
    dropped = (kept == 0).all(1).double()
    assert close((dropped[:-1] * dropped[1:]).mean().item(), dropped.mean().item() ** 2)


def test_dropout_is_a_pure_function_of_its_inputs():
    first = condition_keep(KINDS, 64, DropoutRates(), torch.Generator().manual_seed(5))
    again = condition_keep(tuple(reversed(KINDS)), 64, DropoutRates(), torch.Generator().manual_seed(5))
    other = condition_keep(KINDS, 64, DropoutRates(), torch.Generator().manual_seed(6))
    assert all(torch.equal(first[k], again[k]) for k in KINDS)  # same draws, whatever the order of the kinds
    assert any(not torch.equal(first[k], other[k]) for k in KINDS)
    assert all(first[k].dtype == torch.bool and first[k].shape == (64,) for k in KINDS)
    # the generator advances by the same draws whatever the rates (a run's later draws do not depend on them)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    condition_keep(KINDS, 8, DropoutRates(), g1)
    condition_keep(KINDS, 8, DropoutRates(drop=0.0, all_dropped=1.0, all_kept=0.0), g2)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
    none = condition_keep(KINDS, 8, DropoutRates(all_dropped=1.0, all_kept=0.0), torch.Generator())
    assert not any(none[k].any() for k in KINDS)


@pytest.mark.parametrize("make, field", [
    (lambda: DropoutRates(all_dropped=0.6, all_kept=0.5), "dropout.all_kept"),
    (lambda: DropoutRates(drop=1.5), "dropout.drop"),
    (lambda: DropoutRates(caption_alone=0.85), "dropout.caption_alone"),
    (lambda: DropoutRates(per_kind={"depth": -0.1}), "dropout.per_kind.depth"),
    (lambda: condition_keep(("depth", "depth"), 2, DropoutRates(), torch.Generator()), "kinds"),
    (lambda: condition_keep(("depth",), 0, DropoutRates(), torch.Generator()), "batch"),
])
def test_bad_dropout_settings_name_the_field(make, field):
    with pytest.raises(InvalidParameter) as e:
        make()
    assert e.value.field == field


# ---------------------------------------------------------------- the step on tiny SD

def trainee(prediction_type="epsilon", rates=DropoutRates(), randomise=False, **options):
    """A fresh tiny SD (the session's `tiny` stays untouched) with a new adapter; ``randomise``: every
    zero-initialised adapter layer drawn at random, as training would leave it."""
    backbone = tiny_sd(seed=0, prediction_type=prediction_type)
    adapter = new_adapter(backbone, image_embedding_dim=16, seed=0)
    if randomise:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in adapter.parameters():
                if not p.any():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return ComposerTraining(backbone, adapter, rates=rates, **options)


@pytest.fixture(scope="module")
def batch():
    return world_batches(tiny_sd(seed=0), 2, 32)(0)


def test_batches_are_world_seeds_with_their_exact_conditions():
    backbone = tiny_sd(seed=0)
    batches = world_batches(backbone, 2, 32)
    b3 = batches(3)
    samples = [make_sample(s, size=32) for s in (6, 7)]
    images = torch.stack([s.tensors()["image"] for s in samples])
    with torch.no_grad():
        posterior = backbone.vae.encode(images).latent_dist
        prompts = backbone.encode_prompts([s.caption for s in samples])
    assert torch.allclose(b3["latent_mean"], posterior.mean, atol=2e-3, rtol=2e-3)  # kept in fp16, as a cache does
    assert torch.allclose(b3["tokens"], prompts.tokens, atol=2e-3, rtol=2e-3)
    assert torch.allclose(b3["features"]["depth"][0, 0], torch.from_numpy(samples[0].rendered.depth), atol=5e-4)
    assert torch.equal(b3["features"]["sketch"][1, 0], torch.from_numpy(samples[1].rendered.sketch).float())
    assert set(b3["features"]) == set(WORLD_KINDS) - {"caption"} and all(p.all() for p in b3["present"].values())
    again = batches(3)
    assert all(torch.equal(again["features"][k], b3["features"][k]) for k in b3["features"])
    with pytest.raises(InvalidParameter) as e:
        batches(EVAL_SEED_BASE // 2)  # would reach the evaluation split
    assert e.value.field == "index"


def test_the_step_predicts_exactly_what_sampling_predicts(batch):
    """For every sample, the training forward equals the sampling denoiser on the set of kinds that were kept:
    the same encoding of every condition, the same doors, dropped = absent (and a caption dropped = "").
    Sample 1 lacks its sketch and caption: they must stay absent whatever the draw."""
    model = trainee(randomise=True)
    samples = [make_sample(s, size=32) for s in (0, 1)]
    sets = [world_conditions(samples[0]), world_conditions(samples[1]).without("sketch", "caption")]
    images = torch.stack([s.tensors()["image"] for s in samples])
    mixed = composer_batch(model.backbone, images, sets, model.adapter)
    denoiser = BackboneDenoiser(model.backbone, size=(32, 32))
    seen = set()
    for seed in range(4):
        with torch.no_grad():
            result = model.step(mixed, torch.Generator().manual_seed(seed))
        assert not result.keep["sketch"][1] and not result.keep["caption"][1]
        for i, conds in enumerate(sets):
            kept = ConditionSet(tuple(conds[k] for k in conds if result.keep[k][i]))
            seen.add(len(kept))
            inputs = denoiser.encode(kept)
            want = forward_unet(model.unet, result.noisy[i:i + 1], result.timesteps[i:i + 1], inputs)
            assert (result.prediction[i:i + 1] - want).abs().max().item() < 1e-5, (seed, i, sorted(kept))
    assert len(seen) > 2  # several different subsets were checked


def test_the_step_is_deterministic_and_its_targets_are_the_schedulers(batch):
    for prediction_type in ("epsilon", "v_prediction"):
        model = trainee(prediction_type)
        with torch.no_grad():
            r = model.step(batch, torch.Generator().manual_seed(3))
            again = model.step(batch, torch.Generator().manual_seed(3))
        assert torch.equal(r.loss, again.loss) and torch.isfinite(r.loss)
        a = model.noise_scheduler.alphas_cumprod[r.timesteps].view(-1, 1, 1, 1)  # ᾱ_t
        assert torch.allclose(r.noisy, a.sqrt() * r.clean + (1 - a).sqrt() * r.noise, atol=1e-6)
        want = r.noise if prediction_type == "epsilon" else a.sqrt() * r.noise - (1 - a).sqrt() * r.clean
        assert torch.allclose(r.target, want, atol=1e-6)
        assert torch.allclose(r.loss, ((r.prediction - want) ** 2).mean(), atol=1e-6)


def test_gradients_reach_only_the_adapter_and_the_backbone_stays_unchanged(batch, tmp_path):
    model = trainee()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("adapter.")}
    adapter_before = copy.deepcopy(model.adapter.state_dict())
    model(batch, torch.Generator().manual_seed(0)).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("adapter."))
    assert not any(p.requires_grad for p in model.adapter.time["image_embedding"].parameters())  # no encoder given
    assert model.adapter.channels_in.weight.grad.abs().sum() > 0 and model.adapter.time["caption"].weight.grad.any()
    model.zero_grad(set_to_none=True)

    config = TrainConfig(output_dir=tmp_path, steps=3, batch_size=2, lr=1e-3, weight_decay=0.1, checkpoint_every=3)
    train(config, model, composer_step, lambda index: batch)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in frozen.items())  # VAE, text encoder and UNet untouched
    changed = [n for n, p in model.adapter.state_dict().items() if not torch.equal(p, adapter_before[n])]
    assert any(n.startswith("local.") for n in changed) and "channels_in.weight" in changed
    assert not any(n.startswith(("time.image_embedding", "tokens.image_embedding")) for n in changed)


def test_train_unet_option_trains_the_unet_too(batch):
    model = trainee(train_unet=True)
    model(batch, torch.Generator().manual_seed(0)).backward()
    assert model.unet.conv_in.weight.grad is not None and model.unet.training
    assert all(p.grad is None for p in [*model.vae.parameters(), *model.text_encoder.parameters()])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_few_dozen_steps_fit_a_fixed_batch(batch, prediction_type):
    """Same batch, same draws every step, all conditions kept: the adapter alone brings the loss down."""
    model = trainee(prediction_type, rates=DropoutRates(all_dropped=0.0, all_kept=1.0))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model(batch, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_sample_grid_is_deterministic():
    model = trainee(randomise=True)
    sample_fn = world_sampler(32, count=1, steps=2)
    first, second = sample_fn(model, 1), sample_fn(model, 2)
    assert first.size == (4 * 32, 32) and first.tobytes() == second.tobytes()


# ---------------------------------------------------------------- the command

def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_composer_writes_checkpoints_and_the_adapter_and_resumes(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    common = ("train", "composer", "--model", tiny_dir, "-o", out, "--batch-size", 2, "--checkpoint-every", 3)
    code, stdout, err = run(capsys, *common, "--steps", 6)
    assert code == 0, err
    assert stdout.split() == [str(out / "composer.safetensors")]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003", "step-000006"]
    first = read_loss_log(out / "loss.jsonl")
    assert [r["step"] for r in first] == [1, 2, 3, 4, 5, 6] and all(math.isfinite(r["loss"]) for r in first)
    adapter = ComposerAdapter.load(out / "composer.safetensors")
    assert adapter.config.image_encoder is None and adapter.config.sentence_dim == 32

    code, stdout, err = run(capsys, *common, "--steps", 8)
    assert code == 0, err
    records = read_loss_log(out / "loss.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9)) and records[:6] == first
    saved = load_file(out / "checkpoints" / "step-000008" / "model.safetensors")
    final = ComposerAdapter.load(out / "composer.safetensors").state_dict()
    trained = [n for n in saved if n.startswith("adapter.")]
    assert trained and all(torch.equal(final[n.removeprefix("adapter.")], saved[n]) for n in trained)

    stages = json.loads((out / "composer-run.json").read_text())["stages"]
    assert stages == [{"after_step": 0, "caption_alone": 0.0}]  # a resume with the same settings adds nothing
    code, _, err = run(capsys, *common, "--steps", 9, "--caption-alone", 0.25)  # a curriculum: recorded
    assert code == 0, err
    stages = json.loads((out / "composer-run.json").read_text())["stages"]
    assert stages == [{"after_step": 0, "caption_alone": 0.0}, {"after_step": 8, "caption_alone": 0.25}]
    code, _, err = run(capsys, *common, "--steps", 10, "--caption-alone", 0.25, "--permute-instances")
    assert code == 0, err
    stages = json.loads((out / "composer-run.json").read_text())["stages"]
    assert stages[-1] == {"after_step": 9, "caption_alone": 0.25, "permute_instances": True}
    code, _, err = run(capsys, *common, "--steps", 11, "--caption-alone", 0.25, "--permute-instances",
                       "--foreground-weight", 3)
    assert code == 0, err
    stages = json.loads((out / "composer-run.json").read_text())["stages"]
    assert stages[-1] == {"after_step": 10, "caption_alone": 0.25, "permute_instances": True, "foreground_weight": 3.0}
    code, _, err = run(capsys, *common, "--steps", 12, "--foreground-weight", -1)
    assert code == 2 and err.startswith("error: foreground-weight:")
    code, _, err = run(capsys, *common, "--steps", 9, "--caption-alone", 0.9)
    assert code == 2 and err.startswith("error: caption-alone:") and "0.8" in err

    code, _, err = run(capsys, *common, "--steps", 8, "--no-resume")  # an earlier run is never overwritten
    assert code == 2 and err.startswith("error: output:")
    code, _, err = run(capsys, *common, "--steps", 8, "--size", 48)  # nor continued with other data
    assert code == 2 and err.startswith("error: size:")


@pytest.mark.parametrize("args, field", [
    (("--steps", 0), "steps"), (("--batch-size", 0), "batch_size"), (("--lr", -1), "lr"),
    (("--size", 33), "size"), (("--size", 8), "size"), (("--checkpoint-every", 0), "checkpoint_every"),
    (("--sample-every", -1), "sample_every"), (("--seed", -1), "seed"), (("--mixed-precision", "fp8"),
                                                                         "mixed_precision"),
    (("--steps", 10, "--cooldown-steps", 11), "cooldown_steps"),
])
def test_bad_parameters_name_the_field_and_write_nothing(tiny_dir, tmp_path, capsys, args, field):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", "composer", "--model", tiny_dir, "-o", out, *args)
    assert code == 2 and err.startswith(f"error: {field}:") and stdout == "", err
    assert not out.exists()


def test_missing_models_are_clear_errors(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "composer", "-o", out, "--model", tmp_path / "nowhere")
    assert code == 2 and err.startswith("error: model:")
    code, _, err = run(capsys, "train", "composer", "-o", out, "--parts", tmp_path / "nothing-here")
    assert code == 2 and err.startswith("error: model:") and "vae" in err
    assert not out.exists()


def test_permuted_instance_codes_keep_the_layout_and_change_the_colours():
    import torch

    from recomposer.training.composer import _COLOURS, permuted_instances

    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, :4] = 1
    labels[:, 4:, :4] = 2
    codes = permuted_instances(labels, torch.Generator().manual_seed(0))  # (2, 3, 8, 8)
    assert codes.shape == (2, 3, 8, 8) and torch.equal(codes[:, :, 4:, 4:], torch.zeros(2, 3, 4, 4))  # black stays
    for b in range(2):
        ones, twos = codes[b, :, 0, 0], codes[b, :, 7, 0]
        assert torch.equal(codes[b, :, :4], ones[:, None, None].expand(3, 4, 8))  # one code per instance
        assert not torch.equal(ones, twos) and ones.abs().sum() > 0
    assert not torch.equal(codes[0], codes[1])  # each sample its own permutation
    fixed = torch.from_numpy(_COLOURS[1])
    draws = [permuted_instances(labels[:1], torch.Generator().manual_seed(s))[0, :, 0, 0] for s in range(20)]
    assert sum(torch.equal(d, fixed) for d in draws) < 5  # instance 1 is no longer always the first code


def test_foreground_weighting_weighs_each_latent_position_by_its_objects(batch):
    from recomposer.training.composer import foreground_positions

    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :2, :2] = 3  # one latent cell (of 4x4) wholly covered, one half covered
    labels[0, 2:4, 2] = 1
    m = foreground_positions(labels, (4, 4), 4.0)
    assert m.shape == (1, 1, 4, 4) and m[0, 0, 0, 0] == 5.0 and m[0, 0, 1, 1] == 3.0 and (m >= 1).all()
    assert (m == 1).sum() == 14

    plain, weighted = trainee(), trainee(foreground_weight=4.0)
    weighted.load_state_dict(plain.state_dict())
    with torch.no_grad():
        r = plain.step(batch, torch.Generator().manual_seed(3))
        w = weighted.step(batch, torch.Generator().manual_seed(3))
    assert torch.equal(r.prediction, w.prediction)  # the same draws and forward; only the loss differs
    m = foreground_positions(batch["instance_labels"], tuple(r.clean.shape[-2:]), 4.0)
    assert (m > 1).any() and torch.allclose(w.loss, (m * (r.prediction - r.target) ** 2).mean(), atol=1e-6)
    with pytest.raises(InvalidParameter, match="^foreground_weight"):
        trainee(foreground_weight=-1.0)
    without = {k: v for k, v in batch.items() if k != "instance_labels"}
    with pytest.raises(InvalidParameter, match="^foreground_weight"):
        weighted.step(without, torch.Generator().manual_seed(3))
