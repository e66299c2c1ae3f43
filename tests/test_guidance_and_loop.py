"""Guidance rules over condition sets and the one loop: batching, windows, signed terms, rows with their own
plans, hooks, resampling, callbacks, cancellation."""

from dataclasses import replace

import pytest
import torch

from recomposer.conditions import Caption, ConditionSet
from recomposer.denoiser import BackboneDenoiser, Step
from recomposer.errors import Cancelled, InvalidParameter, NonFiniteResult
from recomposer.guidance import Guided, GuidancePlan, Term, cfg, composer, dual, guided
from recomposer.models.tiny import tiny_sd
from recomposer.sampling import resampling_positions, sample
from recomposer.schedulers import make_scheduler
from recomposer.tasks.generate import GenerateRequest, generate

P = ConditionSet.of(Caption("a red circle"))
Q = ConditionSet.of(Caption("a blue square"))
EMPTY = ConditionSet()


class CountingDenoiser(BackboneDenoiser):
    """Records the batch size of every forward."""

    def __init__(self, backbone):
        super().__init__(backbone)
        self.batches = []

    def __call__(self, x, step, inputs):
        self.batches.append(x.shape[0])
        return super().__call__(x, step, inputs)


def step_at(index=0, count=10):
    return Step(index, count, index, count, torch.tensor(500))


def x_and_t(backbone, batch=2, seed=0):
    x = torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
    return x, step_at()


def separate(denoiser, conds, x, t, batch):
    return denoiser(x, t, denoiser.encode(conds).repeat(batch))


def run_guided(d, plan, x, step, batch=None):
    g, inputs = guided(d, plan, batch if batch is not None else len(x))
    return g(x, step, inputs)


def test_cfg_equals_its_formula_from_separate_forwards(tiny):
    d = BackboneDenoiser(tiny)
    x, t = x_and_t(tiny)
    expected = separate(d, EMPTY, x, t, 2) + 7.0 * (separate(d, P, x, t, 2) - separate(d, EMPTY, x, t, 2))
    assert torch.allclose(run_guided(d, cfg(P, 7.0), x, t), expected, atol=1e-5)


def test_null_conditions_equal_the_empty_caption(tiny):
    """A set without a caption is the null caption: the same as an explicit empty string."""
    d = BackboneDenoiser(tiny)
    x, t = x_and_t(tiny)
    assert torch.equal(separate(d, EMPTY, x, t, 2), separate(d, ConditionSet.of(Caption("")), x, t, 2))
    assert torch.equal(run_guided(d, cfg(P, 3.0), x, t), run_guided(d, cfg(P, 3.0, ConditionSet.of(Caption(""))), x, t))


def test_composer_rule_strengthens_c1_against_c2(tiny):
    d = BackboneDenoiser(tiny)
    x, t = x_and_t(tiny)
    e1, e2 = separate(d, P, x, t, 2), separate(d, Q, x, t, 2)
    assert torch.allclose(run_guided(d, composer(P, Q, 3.0), x, t), e2 + 3.0 * (e1 - e2), atol=1e-5)


def test_three_terms_run_in_one_batched_forward(tiny):
    d = CountingDenoiser(tiny)
    x, t = x_and_t(tiny, batch=2)
    r = ConditionSet.of(Caption("a star"))
    plan = GuidancePlan(EMPTY, (Term(P, 2.0), Term(Q, 1.5), Term(r, 0.5)))
    out = run_guided(d, plan, x, t)
    assert d.batches == [8]  # (base + 3 terms) x batch 2, one forward
    e0, e1, e2, e3 = (separate(d, c, x, t, 2) for c in (EMPTY, P, Q, r))
    assert torch.allclose(out, e0 + 2.0 * (e1 - e0) + 1.5 * (e2 - e0) + 0.5 * (e3 - e0), atol=1e-5)


def test_term_windows_switch_terms_on_and_off(tiny):
    d = CountingDenoiser(tiny)
    x, t = x_and_t(tiny, batch=1)
    plan = GuidancePlan(EMPTY, (Term(P, 2.0, 0.0, 0.5), Term(Q, 3.0, 0.5, 1.0)))
    denoise, inputs = guided(d, plan, 1)
    e0, e1, e2 = (separate(d, c, x, t, 1) for c in (EMPTY, P, Q))
    assert torch.allclose(denoise(x, step_at(0), inputs), e0 + 2.0 * (e1 - e0), atol=1e-5)  # step 0: only P
    assert torch.allclose(denoise(x, step_at(4), inputs), e0 + 2.0 * (e1 - e0), atol=1e-5)  # (4+1)/10 <= 0.5
    assert torch.allclose(denoise(x, step_at(5), inputs), e0 + 3.0 * (e2 - e0), atol=1e-5)  # step 5: only Q
    assert [Term(P, 1.0, 0.2, 0.6).active(i, 10) for i in range(10)] == [False, False, True, True, True, True,
                                                                           False, False, False, False]


def test_a_guidance_interval_guides_inside_and_gives_the_conditional_outside(tiny):
    """Kynkäänniemi et al. 2024: ε̂ = ε(c) outside [start, end] (one row a sample), ε(∅) + w (ε(c) − ε(∅)) inside."""
    d = CountingDenoiser(tiny)
    x, t = x_and_t(tiny, batch=2)
    e0, e1 = (separate(d, c, x, t, 2) for c in (EMPTY, P))
    d.batches.clear()
    denoise, inputs = guided(d, cfg(P, 5.0, interval=(0.2, 0.7)), 2)
    for index, inside in ((0, False), (2, True), (6, True), (7, False), (9, False)):
        expected = e0 + 5.0 * (e1 - e0) if inside else e1
        assert torch.allclose(denoise(x, step_at(index), inputs), expected, atol=1e-4), index
    assert d.batches == [2, 4, 4, 2, 2]
    assert cfg(P, 5.0).terms == (Term(P, 5.0),)  # the whole schedule: the plain rule
    assert cfg(P, 1.0, interval=(0.2, 0.7)).terms == (Term(P, 1.0),)  # nothing to guide: one row every step


def test_scale_one_alone_skips_the_base_forward(tiny):
    d = CountingDenoiser(tiny)
    x, t = x_and_t(tiny, batch=3)
    out = run_guided(d, cfg(P, 1.0), x, t)
    assert d.batches == [3]
    assert torch.allclose(out, separate(d, P, x, t, 3), atol=1e-6)


def test_signed_terms_and_explicit_references_give_dual_guidance(tiny):
    """InstructPix2Pix's rule, s_I below 1 included: ε(∅) + s_I (ε(I) − ε(∅)) + s_T (ε(IT) − ε(I)), one forward."""
    d = CountingDenoiser(tiny)
    x, t = x_and_t(tiny, batch=2)
    both = ConditionSet.of(Caption("a red circle, bigger"))
    e0, e1, e2 = (separate(d, c, x, t, 2) for c in (EMPTY, P, both))
    d.batches.clear()
    for s_i, s_t in ((1.5, 7.5), (0.5, 3.0), (-0.5, 2.0)):
        out = run_guided(d, dual(P, both, s_i, s_t), x, t)
        assert torch.allclose(out, e0 + s_i * (e1 - e0) + s_t * (e2 - e1), atol=1e-4), (s_i, s_t)
    assert d.batches == [6, 6, 6]
    negative = run_guided(d, GuidancePlan(P, (Term(Q, -2.0),)), x, t)  # a negative scale pushes away
    assert torch.allclose(negative, separate(d, P, x, t, 2) - 2.0 * (separate(d, Q, x, t, 2) - separate(d, P, x, t, 2)),
                          atol=1e-4)


def test_rows_of_one_batch_follow_their_own_plans_in_one_forward(tiny):
    d = CountingDenoiser(tiny)
    x, t = x_and_t(tiny, batch=2)
    g = Guided(d)
    out = g(x, t, g.encode([cfg(P, 4.0), composer(Q, P, 2.0)]))
    assert d.batches == [4]  # 2 rows x 2 sets, one forward
    alone0 = run_guided(d, cfg(P, 4.0), x[:1], t)
    alone1 = run_guided(d, composer(Q, P, 2.0), x[1:], t)
    assert torch.allclose(out, torch.cat([alone0, alone1]), atol=1e-5)
    seen = []

    class Roles(BackboneDenoiser):
        def __call__(self, x, step, inputs):
            seen.append(inputs.rows)
            return super().__call__(x, step, inputs)

    g = Guided(Roles(tiny))
    g(x, t, g.encode([cfg(P, 4.0), cfg(Q, 4.0)]))
    assert [(r.sample, r.set) for r in seen[0]] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert [r.conditional for r in seen[0]] == [False, False, True, True]


def test_a_steps_rows_are_laid_out_once_and_a_changed_copy_lays_out_its_own(tiny):
    from dataclasses import replace

    d = BackboneDenoiser(tiny)
    x, t = x_and_t(tiny, batch=2)
    g = Guided(d)
    inputs = g.encode([cfg(P, 4.0), composer(Q, P, 2.0)])
    first = g(x, t, inputs)
    assert len(inputs.layouts) == 1 and torch.equal(g(x, step_at(1), inputs), g(x, step_at(1), inputs))
    assert len(inputs.layouts) == 1  # the same step shape: the same layout
    other = g.encode([cfg(Q, 4.0), composer(Q, P, 2.0)])  # sample 0 hears Q instead of P
    changed = replace(inputs, encoded=(other.encoded[0], inputs.encoded[1]))
    assert changed.layouts == {}
    out = g(x, t, changed)
    assert torch.allclose(out, g(x, t, other), atol=1e-6) and not torch.allclose(out[0], first[0])
    assert torch.equal(out[1], first[1])


def test_a_guided_denoiser_is_a_denoiser(tiny):
    """Rules compose: a Guided over a Guided applies the inner rule to each of the outer rule's sets."""
    x, t = x_and_t(tiny, batch=1)
    inner = Guided(BackboneDenoiser(tiny))
    inputs = inner.encode(cfg(P, 3.0), 1)
    assert inner.prediction_type == "epsilon"
    assert torch.allclose(inner(x, t, inputs), run_guided(BackboneDenoiser(tiny), cfg(P, 3.0), x, t), atol=1e-6)


def test_guidance_rescale_matches_the_fullest_conditional_spread(tiny):
    """φ = 1 gives the guided prediction the per-sample spread of the fullest term's prediction (CFG: the prompt;
    dual: (c_I, c_T)), φ = 0.7 mixes it with the plain guided one as Lin et al. 2024's Algorithm 2."""
    d = BackboneDenoiser(tiny)
    x, t = x_and_t(tiny, batch=2)
    both = ConditionSet.of(Caption("a red circle, bigger"))
    e0, e1, e2 = (separate(d, c, x, t, 2) for c in (EMPTY, P, both))
    for plan, conditional in ((cfg(P, 7.0), e1), (dual(P, both, 1.5, 7.5), e2)):
        guided_plain = run_guided(d, plan, x, t)
        full = run_guided(d, replace(plan, rescale=1.0), x, t)
        ratio = full.std(dim=(1, 2, 3)) / conditional.std(dim=(1, 2, 3))
        assert torch.allclose(ratio, torch.ones(2), atol=1e-4)
        assert not torch.allclose(full, guided_plain, atol=1e-3)  # guidance at 7 inflates the spread
        mixed = run_guided(d, replace(plan, rescale=0.7), x, t)
        assert torch.allclose(mixed, 0.7 * full + 0.3 * guided_plain, atol=1e-4)
    assert torch.allclose(run_guided(d, cfg(P, 1.0, rescale=0.7), x, t), e1, atol=1e-5)  # nothing to rescale


@pytest.mark.parametrize("phi", [float("nan"), -0.1, 1.5])
def test_guidance_rescale_outside_0_1_is_refused(phi):
    with pytest.raises(InvalidParameter, match="^guidance-rescale"):
        cfg(P, 7.0, rescale=phi)
    with pytest.raises(InvalidParameter, match="^guidance-rescale"):
        GenerateRequest("a ring", guidance_rescale=phi).check()


@pytest.mark.parametrize("start,end,field", [(0.5, 0.5, "guidance-start"), (-0.1, 1.0, "guidance-start"),
                                             (0.0, 1.2, "guidance-end"), (float("nan"), 1.0, "guidance-start")])
def test_a_bad_guidance_interval_is_refused(start, end, field):
    with pytest.raises(InvalidParameter, match=f"^{field}"):
        GenerateRequest("a ring", guidance_start=start, guidance_end=end).check()


@pytest.mark.parametrize("scale,start,end", [(float("nan"), 0.0, 1.0), (float("inf"), 0, 1), (101.0, 0.0, 1.0),
                                             (1.0, 0.6, 0.4), (1.0, -0.1, 1.0), (1.0, 0.0, 1.5)])
def test_invalid_terms_name_the_field(scale, start, end):
    with pytest.raises(InvalidParameter, match="^guidance"):
        Term(P, scale, start, end)


def test_unknown_condition_kind_is_refused(tiny):
    from dataclasses import dataclass

    from recomposer.conditions import Condition

    @dataclass(frozen=True)
    class Depth(Condition):
        kind = "depth"

    with pytest.raises(InvalidParameter, match="conditions"):
        BackboneDenoiser(tiny).encode(ConditionSet.of(Caption("x"), Depth()))


@pytest.mark.parametrize("scheduler", ["euler_a", "ddim", "dpmpp_2m"])
def test_batch_equals_singles(tiny, scheduler):
    request = GenerateRequest("a heart", negative="noise", scheduler=scheduler, steps=5, guidance=5.0, seed=20,
                              batch=3)
    batch = generate(tiny, request)
    for k in range(3):
        (single,) = generate(tiny, GenerateRequest(**{**request.__dict__, "seed": 20 + k, "batch": 1}))
        assert torch.allclose(batch[k].pixels, single.pixels, atol=1e-4)
        assert batch[k].seed == 20 + k


def test_img2img_batch_equals_singles(tiny, photo):
    request = GenerateRequest("x", scheduler="euler_a", steps=6, seed=4, batch=2, strength=0.5)
    batch = generate(tiny, request, image=photo)
    for k in range(2):
        (single,) = generate(tiny, GenerateRequest(**{**request.__dict__, "seed": 4 + k, "batch": 1}), image=photo)
        assert torch.allclose(batch[k].pixels, single.pixels, atol=1e-4)


def test_callbacks_see_every_step_in_order(tiny, photo):
    seen = []
    generate(tiny, GenerateRequest("x", steps=10, strength=0.5), image=photo,
             callback=lambda s: seen.append((s.step.index, s.step.count, s.step.position, tuple(s.x_next.shape))))
    assert [s[0] for s in seen] == list(range(5))
    assert {s[1] for s in seen} == {5} and [s[2] for s in seen] == list(range(5, 10))
    assert seen[0][3] == (1, 4, 16, 16)


def test_cancellation_stops_between_steps(tiny):
    d = CountingDenoiser(tiny)
    scheduler = make_scheduler("euler", tiny.scheduler_config)
    scheduler.set_timesteps(10)
    done = []
    g, inputs = guided(d, cfg(P, 5.0), 1)
    with pytest.raises(Cancelled):
        sample(g, inputs, scheduler, torch.randn(1, 4, 16, 16), [torch.Generator()],
               callback=lambda s: done.append(s.step.index), cancel=lambda: len(done) >= 3)
    assert done == [0, 1, 2] and len(d.batches) == 3


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_hooks_see_the_prediction_and_x0_before_and_after_the_step(tiny, scheduler):
    g, inputs = guided(BackboneDenoiser(tiny), cfg(P, 3.0), 1)
    schedule = make_scheduler(scheduler, tiny.scheduler_config)
    schedule.set_timesteps(6)
    seen, before = [], []
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * schedule.init_noise_sigma

    def after(state):
        seen.append(state)
        return state.x_next

    def first(x, step):
        before.append((step.index, x.clone()))
        return x

    out = sample(g, inputs, schedule, x, [torch.Generator().manual_seed(0)], before=[first], hooks=[after])
    assert [s.step.index for s in seen] == list(range(6)) and [b[0] for b in before] == list(range(6))
    assert torch.equal(before[0][1], x) and torch.equal(seen[-1].x_next, out) and seen[-1].t_next is None
    assert torch.equal(seen[2].t_next, schedule.timesteps[3])
    if scheduler == "ddim":  # x = √ᾱ x̂₀ + √(1 − ᾱ) ε̂
        a = schedule.alphas_cumprod[int(seen[2].step.timestep)]
        assert torch.allclose(seen[2].x0, (seen[2].x - (1 - a).sqrt() * seen[2].prediction) / a.sqrt(), atol=1e-4)
    else:  # sigma-scaled: x̃ = x̂₀ + σ ε̂
        assert torch.allclose(seen[2].x0, seen[2].x - schedule.sigmas[2] * seen[2].prediction, atol=1e-4)


def test_an_after_hook_changes_where_the_loop_continues(tiny):
    g, inputs = guided(BackboneDenoiser(tiny), cfg(P, 3.0), 1)
    schedule = make_scheduler("ddim", tiny.scheduler_config)
    schedule.set_timesteps(4)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    entered = []
    sample(g, inputs, schedule, x, [torch.Generator()], hooks=[lambda state: state.x_next * 0],
           before=[lambda x, step: entered.append(x.abs().max().item()) or x])
    assert entered[0] > 0 and entered[1:] == [0.0, 0.0, 0.0]


def test_resampling_schedule_and_its_cost():
    assert resampling_positions(6, 0, 2, 0) == list(range(6))
    assert resampling_positions(6, 2, 2, 1) == [0, 1, 2, 3, 2, 3, 4, 5]  # no resampling after the last block
    assert resampling_positions(6, 0, 3, 2) == [0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 4, 5]
    with pytest.raises(InvalidParameter, match="^jump"):
        resampling_positions(6, 0, 0, 1)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_the_loop_resamples_by_stepping_back(tiny, scheduler):
    g, inputs = guided(BackboneDenoiser(tiny), cfg(P, 3.0), 1)
    plain = make_scheduler(scheduler, tiny.scheduler_config)
    plain.set_timesteps(6)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3)) * plain.init_noise_sigma
    once = sample(g, inputs, plain, x, [torch.Generator().manual_seed(3)])
    again = make_scheduler(scheduler, tiny.scheduler_config)
    again.set_timesteps(6)
    same = sample(g, inputs, again, x, [torch.Generator().manual_seed(3)],
                  positions=resampling_positions(6, 0, 2, 0))
    assert torch.equal(once, same)  # zero resamples: exactly the plain run
    third = make_scheduler(scheduler, tiny.scheduler_config)
    third.set_timesteps(6)
    visits = []
    resampled = sample(g, inputs, third, x, [torch.Generator().manual_seed(3)],
                       positions=resampling_positions(6, 2, 2, 2), callback=lambda s: visits.append(s.step.position))
    assert visits == [0, 1, 2, 3, 2, 3, 2, 3, 4, 5] and torch.isfinite(resampled).all()
    assert not torch.allclose(resampled, once)


def test_4_channel_inpainting_keeps_the_known_region(tiny, photo):
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :, 16:] = 1
    seen = []
    out = generate(tiny, GenerateRequest("x", scheduler="ddim", steps=6, seed=1), image=photo, mask=mask,
                   callback=lambda s: seen.append(s.x_next))
    plain = generate(tiny, GenerateRequest("x", scheduler="ddim", steps=6, seed=1, strength=1.0), image=photo)
    last = seen[-1]
    known = tiny.encode_image(__import__("recomposer.io.images", fromlist=["to_tensor"]).to_tensor(photo))
    known = known.sample(torch.Generator().manual_seed(1)) * tiny.vae.config.scaling_factor
    assert torch.allclose(last[..., :8], known[..., :8], atol=1e-6)  # latent columns outside the mask
    assert not torch.allclose(out[0].pixels, plain[0].pixels)


def test_9_channel_inpainting_unet_hears_the_mask():
    backbone = tiny_sd(seed=2, in_channels=9)
    from recomposer.io.images import to_pil

    image = to_pil(torch.zeros(1, 3, 32, 32))[0]
    a, b = torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)
    a[..., :16, :] = 1
    b[..., 16:, :] = 1
    request = GenerateRequest("x", scheduler="ddim", steps=3, seed=0)
    out_a = generate(backbone, request, image=image, mask=a)[0].pixels
    out_b = generate(backbone, request, image=image, mask=b)[0].pixels
    assert not torch.allclose(out_a, out_b)
    with pytest.raises(InvalidParameter, match="^mask"):
        generate(backbone, request)


def test_nan_latents_are_an_error_not_an_image(tiny, monkeypatch):
    def broken(self, x, step, inputs):
        return torch.full_like(x[:, :4], float("nan"))

    monkeypatch.setattr(BackboneDenoiser, "__call__", broken)
    with pytest.raises(NonFiniteResult, match="^latents"):
        generate(tiny, GenerateRequest("x", steps=2))
