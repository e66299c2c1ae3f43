"""The Composer adapter on tiny SD components: exact backbone behaviour when it hears nothing, each kind
through its declared door, guidance terms with different condition subsets in one forward, files, errors.

Conditions come from a shapes-world sample rendered at 32 px (tiny SD's native size). "Trained" is the
zero-initialised adapter with its zero layers randomised, as training would leave them.
"""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from recomposer.conditions import (Blobs, Caption, ConditionSet, Depth, ImageEmbedding, Instances, Intensity,
                                   MaskedImage, Palette, Sketch)
from recomposer.denoiser import BackboneDenoiser, ModelInputs, Step
from recomposer.errors import InvalidParameter, ModelError
from recomposer.guidance import GuidancePlan, Term, cfg, guided
from recomposer.models.composer import CHANNELS, TIME, TOKENS, ComposerAdapter, ComposerConfig, generation_size
from recomposer.models.doors import installed as is_attached
from recomposer.models.doors import remove as detach
from recomposer.models.tiny import tiny_sd
from recomposer.sampling import noise, sample
from recomposer.schedulers import make_scheduler
from recomposer.world.dataset import make_sample
from recomposer.ellipse import Ellipse

EMBEDDING_DIM = 16
KINDS = ("caption", "image_embedding", "palette", "sketch", "instances", "depth", "intensity", "masked_image")


@pytest.fixture(scope="module")
def world():
    """Every Composer condition of one shapes-world scene at 32 px."""
    s = make_sample(5, size=32)
    r = s.rendered
    image = torch.from_numpy(r.image).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, 32, 32)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 4:20] = 1
    vector = np.random.default_rng(0).standard_normal(EMBEDDING_DIM).astype(np.float32)
    return {"caption": Caption(s.caption), "image_embedding": ImageEmbedding(vector, "test-encoder"),
            "palette": Palette(s.palette), "sketch": Sketch(r.sketch), "instances": Instances(r.masks),
            "depth": Depth(r.depth), "intensity": Intensity(r.intensity), "masked_image": MaskedImage(image, mask)}


def conds(world, *kinds):
    return ConditionSet(tuple(world[k] for k in kinds))


def composer_denoiser(backbone, adapter, size=None):
    """The backbone with ``adapter`` on its stack, as a denoiser."""
    return BackboneDenoiser(backbone.with_adapters(adapter), size)


def trained_copy(adapter, seed=1, scale=0.5):
    """The adapter with every zero-initialised parameter drawn at random."""
    new = copy.deepcopy(adapter)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in new.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return new


@pytest.fixture(scope="module")
def composer():
    """tiny_sd(0) with the doors attached (the `tiny` fixture is the same weights, unattached)."""
    backbone = tiny_sd(seed=0)
    zero = ComposerAdapter(ComposerConfig.for_backbone(backbone, EMBEDDING_DIM)).eval()
    return backbone, composer_denoiser(backbone, zero), composer_denoiser(backbone, trained_copy(zero))


def x_and_t(batch=2, seed=0):
    t = Step(0, 10, 0, 10, torch.tensor(500))
    return torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(seed)), t


def adapter_of(denoiser):
    return denoiser.backbone.adapter(ComposerAdapter)


def forward(denoiser, conditions, x, t):
    return denoiser(x, t, denoiser.encode(conditions).repeat(x.shape[0]))


def test_attaching_adds_no_weights_to_the_backbone(tiny, composer):
    backbone, _, _ = composer
    assert is_attached(backbone.unet) and not is_attached(tiny.unet)
    assert backbone.identity() == tiny.identity()  # same names, shapes and bytes: the doors hold no weights
    x, t = x_and_t()  # and the plain denoiser still runs on the attached UNet, bit for bit
    caption = ConditionSet.of(Caption("a ring"))
    assert torch.equal(forward(BackboneDenoiser(backbone), caption, x, t), forward(BackboneDenoiser(tiny), caption, x, t))


@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m"])
def test_zero_init_adapter_without_composer_conditions_matches_diffusers(tiny, composer, scheduler):
    """Prompt + negative prompt, CFG, 2 images: our loop over the attached model == diffusers' pipeline
    over the plain backbone (same seeds, steps, guidance), to 1e-4."""
    backbone, zero, _ = composer
    pipe = StableDiffusionPipeline(vae=tiny.vae, unet=tiny.unet, text_encoder=tiny.text_encoder,
                                   tokenizer=tiny.tokenizer, scheduler=make_scheduler(scheduler, tiny.scheduler_config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe("a red circle above a blue square", negative_prompt="blurry", num_inference_steps=6,
                     guidance_scale=6.5, height=32, width=32, num_images_per_prompt=2,
                     generator=[torch.Generator().manual_seed(7 + k) for k in range(2)], output_type="pt").images

    plan = cfg(ConditionSet.of(Caption("a red circle above a blue square")), 6.5,
               negative=ConditionSet.of(Caption("blurry")))
    steps = make_scheduler(scheduler, backbone.scheduler_config)
    steps.set_timesteps(6)
    generators = [torch.Generator().manual_seed(7 + k) for k in range(2)]
    x = noise((2, 4, 16, 16), generators, backbone.device, backbone.dtype) * steps.init_noise_sigma
    g, inputs = guided(zero, plan, 2)
    x = sample(g, inputs, steps, x, generators)
    ours = (backbone.decode(x) / 2 + 0.5).clamp(0, 1)
    assert ours.shape == reference.shape == (2, 3, 32, 32)
    assert (ours - reference).abs().max().item() <= 1e-4


def test_zero_init_adapter_hears_nothing_at_time_and_channel_doors(tiny, world, composer):
    """Any subset of caption and local kinds: exactly the prediction without them (and the plain backbone's)."""
    _, zero, _ = composer
    x, t = x_and_t()
    caption_only = forward(zero, conds(world, "caption"), x, t)
    plain = BackboneDenoiser(tiny)
    assert torch.allclose(caption_only, forward(plain, conds(world, "caption"), x, t), atol=1e-5, rtol=0)
    for kinds in [("sketch",), ("depth", "masked_image"), ("instances", "intensity", "sketch"),
                  ("sketch", "instances", "depth", "intensity", "masked_image")]:
        assert torch.equal(forward(zero, conds(world, "caption", *kinds), x, t), caption_only), kinds


def test_zero_init_tokens_only_take_softmax_weight(world, composer):
    """A present image embedding or palette at zero init: zero tokens, no time addition; the only change is
    that its slots are attended (a zero key still gets weight e^0 in the softmax), nothing else."""
    _, zero, _ = composer
    x, t = x_and_t()
    without = zero.encode(conds(world, "caption"))
    with_ = zero.encode(conds(world, "caption", "image_embedding", "palette"))
    assert torch.equal(with_.context, without.context) and torch.equal(with_.time_addition, without.time_addition)
    assert with_.context_mask[0, -8:].tolist() == [1.0] * 8 and without.context_mask[0, -8:].tolist() == [0.0] * 8
    attended = replace(without, context_mask=torch.ones_like(without.context_mask))
    assert torch.equal(zero(x, t, with_.repeat(2)), zero(x, t, attended.repeat(2)))


def test_each_kind_enters_through_its_declared_doors(world, composer):
    backbone, _, trained = composer
    adapter = adapter_of(trained)
    for kind in KINDS:
        feature = backbone.encode_sentence([world[kind].text]) if kind == "caption" else adapter.features(world[kind])
        out = adapter({kind: feature}, 1, (16, 16))
        doors = ComposerAdapter.ROUTES[kind]
        assert bool(out.time_addition.any()) == (TIME in doors), kind
        assert bool(out.token_mask.any()) == bool(out.tokens.any()) == (TOKENS in doors), kind
        assert bool(out.input_addition.any()) == (CHANNELS in doors), kind
    slots = adapter({"palette": adapter.features(world["palette"])}, 1, (16, 16)).token_mask
    assert slots.tolist() == [[0.0] * 4 + [1.0] * 4]  # slots: image embedding 4, then palette 4


def test_trained_adapter_hears_each_kind_and_nothing_absent(tiny, world, composer):
    backbone, _, trained = composer
    x, t = x_and_t()
    plain = BackboneDenoiser(tiny)
    empty = forward(trained, ConditionSet(), x, t)
    # No kind at all, or the empty caption (the caption's null): the backbone, whatever the weights.
    assert torch.allclose(empty, forward(plain, ConditionSet(), x, t), atol=1e-5, rtol=0)
    assert torch.equal(forward(trained, ConditionSet.of(Caption("")), x, t), empty)
    for kind in KINDS:
        change = (forward(trained, conds(world, kind), x, t) - empty).abs().max().item()
        assert change > 1e-3, (kind, change)
    # An absent kind's weights play no part: re-drawing the depth and palette weights changes nothing here.
    other = copy.deepcopy(adapter_of(trained))
    with torch.no_grad():
        for name, p in other.named_parameters():
            if "depth" in name or "palette" in name:
                p.normal_()
    rerun = composer_denoiser(backbone, other)
    present = conds(world, "caption", "sketch", "image_embedding")
    assert torch.equal(forward(rerun, present, x, t), forward(trained, present, x, t))


class CountingComposer(BackboneDenoiser):
    def __init__(self, backbone, adapter):
        super().__init__(backbone.with_adapters(adapter))
        self.batches = []

    def __call__(self, x, t, inputs):
        self.batches.append(x.shape[0])
        return super().__call__(x, t, inputs)


def test_terms_with_different_condition_subsets_run_in_one_forward(world, composer):
    backbone, _, trained = composer
    d = CountingComposer(backbone, adapter_of(trained))
    base = conds(world, "caption")
    terms = [conds(world, "caption", "sketch", "depth"), conds(world, "caption", "palette"),
             conds(world, "image_embedding", "instances", "masked_image", "intensity")]
    x, t = x_and_t(batch=2)
    g, inputs = guided(d, GuidancePlan(base, tuple(Term(c, s) for c, s in zip(terms, (3.0, 2.0, 1.5)))), 2)
    out = g(x, t, inputs)
    assert d.batches == [8]  # (base + 3 terms) x batch 2, one forward
    e0, e1, e2, e3 = (forward(trained, c, x, t) for c in (base, *terms))
    assert torch.allclose(out, e0 + 3.0 * (e1 - e0) + 2.0 * (e2 - e0) + 1.5 * (e3 - e0), atol=1e-5)


def test_batch_equals_singles(world, composer):
    _, _, trained = composer
    x, t = x_and_t(batch=3, seed=4)
    everything = conds(world, *KINDS)
    batch = forward(trained, everything, x, t)
    for k in range(3):
        assert torch.allclose(batch[k:k + 1], forward(trained, everything, x[k:k + 1], t), atol=1e-5, rtol=0)


def test_per_row_keep_equals_absence(world, composer):
    """Training's per-sample dropout: a row where a kind is not kept gets what absence gives."""
    _, _, trained = composer
    adapter = adapter_of(trained)
    kinds = ("palette", "sketch", "depth")
    features = {k: adapter.features(world[k]).repeat(2, *[1] * (adapter.features(world[k]).ndim - 1)) for k in kinds}
    keep = {"palette": torch.tensor([1.0, 0.0]), "depth": torch.tensor([0.0, 1.0])}
    both = adapter(features, 2, (16, 16), keep)
    rows = [adapter({k: features[k][:1] for k in ("palette", "sketch")}, 1, (16, 16)),
            adapter({k: features[k][:1] for k in ("sketch", "depth")}, 1, (16, 16))]
    for name in ("time_addition", "tokens", "token_mask", "input_addition"):
        expected = torch.cat([getattr(r, name) for r in rows])
        assert torch.allclose(getattr(both, name), expected, atol=1e-6, rtol=0), name


def test_adapter_weights_round_trip_through_safetensors(tmp_path, composer):
    _, _, trained = composer
    path = adapter_of(trained).save(tmp_path / "composer.safetensors")
    loaded = ComposerAdapter.load(path)
    assert loaded.config == adapter_of(trained).config
    original = adapter_of(trained).state_dict()
    assert loaded.state_dict().keys() == original.keys()
    assert all(torch.equal(loaded.state_dict()[k], original[k]) for k in original)


def test_detach_gives_back_the_plain_backbone(tiny, world):
    backbone = tiny_sd(seed=0)
    adapter = ComposerAdapter(ComposerConfig.for_backbone(backbone, EMBEDDING_DIM))
    adapter.attach(backbone)
    adapter.attach(backbone)  # idempotent
    detach(backbone.unet)
    x, t = x_and_t()
    assert not is_attached(backbone.unet)
    assert torch.equal(forward(BackboneDenoiser(backbone), conds(world, "caption"), x, t),
                       forward(BackboneDenoiser(tiny), conds(world, "caption"), x, t))


def test_bad_inputs_name_the_field(world, composer):
    backbone, zero, _ = composer
    with pytest.raises(InvalidParameter, match="^sketch: .*32x32.*48x32"):
        zero.encode(ConditionSet.of(Sketch(np.zeros((32, 48), bool))))
    with pytest.raises(InvalidParameter, match="^conditions"):
        zero.encode(ConditionSet.of(Caption("x"), Blobs((Ellipse(8.0, 8.0, 4.0, 2.0, 0.0),), ("a dot",), (32, 32))))
    with pytest.raises(InvalidParameter, match="^image_embedding.vector"):
        zero.encode(ConditionSet.of(ImageEmbedding(np.ones(5, np.float32), "test-encoder")))
    picky = ComposerAdapter(replace(adapter_of(zero).config, image_encoder="clip:some-model@0123"))
    with pytest.raises(InvalidParameter, match="^image_embedding.encoder"):
        picky.features(world["image_embedding"])
    with pytest.raises(InvalidParameter, match="^depth"):  # sizes must agree across the sets of a plan
        generation_size(conds(world, "sketch"), ConditionSet.of(Depth(np.zeros((16, 16), np.float32))))
    assert generation_size(conds(world, "sketch", "caption"), conds(world, "depth")) == (32, 32)
    with pytest.raises(InvalidParameter, match="^width"):
        composer_denoiser(backbone, adapter_of(zero), size=(33, 32))
    with pytest.raises(InvalidParameter, match="^size"):  # latents of another size than the conditions
        zero(torch.zeros(1, 4, 8, 8), x_and_t()[1], zero.encode(conds(world, "sketch")))
    wide = ComposerAdapter(replace(adapter_of(zero).config, cross_attention_dim=64))
    with pytest.raises(ModelError, match="cross_attention_dim"):
        tiny_sd(seed=0).with_adapters(wide)


def test_rows_without_a_door_batch_with_rows_that_have_it(world, composer):
    """Per-row presence: a row without extra tokens or additions batches with one that has them, and computes
    what it computes alone."""
    _, zero, trained = composer
    x, t = x_and_t(batch=1)
    plain = ModelInputs(context=trained.encode(ConditionSet()).context[:, :77])  # tokens only, no doors
    full = trained.encode(conds(world, "caption", "palette", "sketch"))
    both = ModelInputs.cat([plain, full])
    assert both.context_mask[0, 77:].eq(0).all() and both.time_addition[0].eq(0).all()
    out = trained(x.repeat(2, 1, 1, 1), t, both)
    assert torch.allclose(out[:1], trained(x, t, plain), atol=1e-5) and torch.allclose(out[1:], trained(x, t, full),
                                                                                        atol=1e-5)


def test_sentence_embedding_clip_pooled_and_bert_masked_mean(tiny):
    from transformers import BertConfig, BertModel, BertTokenizer

    from recomposer.models.backbone import Backbone

    tokens = tiny.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt")
    assert torch.equal(tiny.encode_sentence(["a red circle"]), tiny.text_encoder(tokens.input_ids).pooler_output)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "circle", "blue"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bert = BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=37), add_pooling_layer=False).eval()
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})

    def backbone(length):
        return Backbone(vae=tiny.vae, unet=tiny.unet, text_encoder=bert, tokenizer=tokenizer,
                        scheduler_config=tiny.scheduler_config, text_attention_mask=True, max_text_tokens=length)

    short, long = backbone(8).encode_sentence(["red circle"]), backbone(16).encode_sentence(["red circle"])
    states = backbone(8).encode_text(["red circle"])[0, :4]  # [CLS] red circle [SEP]
    assert torch.allclose(short, long, atol=1e-6) and torch.allclose(short[0], states.mean(0), atol=1e-6)
