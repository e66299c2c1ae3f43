"""Learned decomposition backends (depth, image embedding, caption) and their conditions.

Every model here is a tiny random one built from a config and saved with safetensors into a
temporary directory, then loaded back through recomposer's own loaders: no network, no downloads.
Real data: scikit-image's Middlebury motorcycle pair and its ground-truth disparity.
"""

import torch

torch.set_num_threads(1)

import json  # noqa: E402
import pickle  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from skimage import data  # noqa: E402

from recomposer.conditions import ConditionSet  # noqa: E402
from recomposer.conditions.caption import Caption  # noqa: E402
from recomposer.conditions.depth import Depth  # noqa: E402
from recomposer.conditions.files import load_condition, load_set, save_condition, save_set  # noqa: E402
from recomposer.conditions.image_embedding import ImageEmbedding  # noqa: E402
from recomposer.decompose.captioner import Captioner, TransformersCaptioner, load_captioner  # noqa: E402
from recomposer.decompose.depth import (DepthEstimator, TransformersDepth, load_depth_estimator,  # noqa: E402
                                        no_depth_backend, predicted_quantity)
from recomposer.decompose.embedding import ClipImageEncoder, ImageEncoder, load_image_encoder  # noqa: E402
from recomposer.errors import BadImage, InvalidParameter, ModelError, RecomposerError, UnsafeFile  # noqa: E402


# --- data -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def motorcycle():
    """(left RGB uint8 (500, 741, 3), right, disparity float32 (500, 741) with inf where unmatched)."""
    return data.stereo_motorcycle()


@pytest.fixture(scope="module")
def small_left(motorcycle):
    return Image.fromarray(motorcycle[0]).resize((74, 50), Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def small_right(motorcycle):
    return Image.fromarray(motorcycle[1]).resize((74, 50), Image.Resampling.LANCZOS)


# --- tiny models, saved as a user would have them -------------------------------------------------

def _spread(model: torch.nn.Module, seed: int) -> None:
    """Re-draw weights at unit gain: the default init (std 0.02) makes a tiny depth head output ~1e-9."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, w in model.named_parameters():
            if w.ndim > 1:
                w.copy_(torch.randn(w.shape, generator=g) / w[0].numel() ** 0.5)
            elif name.endswith("bias"):
                w.copy_(torch.randn(w.shape, generator=g) * 0.1)


def _save(model, processor, folder, tokenizer=None):
    model.save_pretrained(folder, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Folders of tiny random models: depth (DPT, Depth Anything relative/metric, GLPN), CLIP, captioners."""
    from transformers import (BertConfig, BertTokenizer, BlipConfig, BlipForConditionalGeneration,
                              BlipImageProcessorPil, BlipProcessor, CLIPConfig, CLIPImageProcessorPil, CLIPModel,
                              CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection, DepthAnythingConfig,
                              DepthAnythingForDepthEstimation, Dinov2Config, DPTConfig, DPTForDepthEstimation,
                              DPTImageProcessorPil, GitConfig, GitForCausalLM, GLPNConfig, GLPNForDepthEstimation,
                              GLPNImageProcessorPil, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig,
                              ViTImageProcessorPil)

    root = tmp_path_factory.mktemp("learned")
    torch.manual_seed(0)
    out = {}

    dpt = DPTForDepthEstimation(DPTConfig(
        hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32,
        patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 8, 8], fusion_hidden_size=8,
        reassemble_factors=[4, 2, 1, 0.5]))
    _spread(dpt, 1)
    out["dpt"] = _save(dpt, DPTImageProcessorPil(size={"height": 32, "width": 32}, keep_aspect_ratio=False),
                       root / "dpt")

    dinov2 = Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                          image_size=28, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                          reshape_hidden_states=False)
    anything = DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=dinov2, reassemble_hidden_size=16, patch_size=14, neck_hidden_sizes=[8, 8, 8, 8],
        fusion_hidden_size=8, head_hidden_size=8, reassemble_factors=[4, 2, 1, 0.5]))
    _spread(anything, 2)
    anything_processor = DPTImageProcessorPil(size={"height": 28, "width": 28}, keep_aspect_ratio=True,
                                              ensure_multiple_of=14, image_mean=[0.485, 0.456, 0.406],
                                              image_std=[0.229, 0.224, 0.225])
    out["depth_anything"] = _save(anything, anything_processor, root / "depth-anything")
    metric = root / "depth-anything-metric"  # the same weights, declared metric (as the *-Metric-* checkpoints are)
    shutil.copytree(out["depth_anything"], metric)
    config = json.loads((metric / "config.json").read_text())
    (metric / "config.json").write_text(json.dumps({**config, "depth_estimation_type": "metric", "max_depth": 20}))
    out["depth_anything_metric"] = metric

    glpn = GLPNForDepthEstimation(GLPNConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 8, 8, 8],
        num_attention_heads=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=8, max_depth=10))
    _spread(glpn, 3)
    out["glpn"] = _save(glpn, GLPNImageProcessorPil(size_divisor=32), root / "glpn")

    vision = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=32,
                  patch_size=8, projection_dim=12)
    text = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=16, projection_dim=12, bos_token_id=1, eos_token_id=2)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=12)).eval()
    clip_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    out["clip"] = _save(clip, clip_processor, root / "clip-full")
    out["clip_model"] = clip
    half = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision)).eval()
    half.load_state_dict({k: v for k, v in clip.state_dict().items() if k.startswith(("vision_model.", "visual_"))})
    out["clip_vision"] = _save(half, None, root / "image_encoder")  # no processor config, like IP-Adapter folders
    out["clip_no_projection"] = _save(CLIPVisionModel(CLIPVisionConfig(**vision)), clip_processor, root / "no-proj")

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "red", "blue", "green", "circle",
             "square", "triangle", "on", "the", "left", "right", "of", "above", "."]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    blip = BlipForConditionalGeneration(BlipConfig(
        text_config=dict(vocab_size=len(words), hidden_size=16, encoder_hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32, max_position_embeddings=64, bos_token_id=5,
                         pad_token_id=0, sep_token_id=3, eos_token_id=3),
        vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           image_size=32, patch_size=8), projection_dim=8))
    blip_dir = root / "blip"
    blip.save_pretrained(blip_dir)
    BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(blip_dir)
    out["blip"] = blip_dir

    encoder = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        image_size=32, patch_size=8)
    decoder = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, is_decoder=True, add_cross_attention=True)
    ved_config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    ved_config.decoder_start_token_id, ved_config.pad_token_id, ved_config.eos_token_id = 2, 0, 3
    out["ved"] = _save(VisionEncoderDecoderModel(config=ved_config),
                       ViTImageProcessorPil(size={"height": 32, "width": 32}), root / "vit-bert", tokenizer)

    git = GitForCausalLM(GitConfig(
        vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           image_size=32, patch_size=8),
        vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, bos_token_id=2, eos_token_id=3, pad_token_id=0))
    out["git"] = _save(git, clip_processor, root / "git", tokenizer)
    return out


# --- Depth: the condition ------------------------------------------------------------------------

def test_motorcycle_disparity_becomes_depth_near_small(motorcycle):
    left, _, disparity = motorcycle
    depth = Depth.from_disparity(disparity)
    valid = np.isfinite(disparity)
    assert (~valid).sum() > 1000  # the ground truth really has unmatched (inf) pixels
    assert depth.values.shape == disparity.shape == left.shape[:2] and depth.values.dtype == np.float32
    assert depth.values.min() == 0.0 and depth.values.max() == 1.0
    rho = spearmanr(depth.values[valid][::7], disparity[valid][::7]).statistic
    assert rho < -0.999  # large disparity (near) -> small depth, the order kept everywhere
    assert depth.values.flat[np.nanargmax(np.where(valid, disparity, np.nan))] == 0.0  # nearest
    assert depth.values.flat[np.nanargmin(np.where(valid, disparity, np.nan))] == 1.0  # farthest
    assert np.isfinite(depth.values).all()  # unmatched pixels filled, not NaN


def test_invalid_disparity_takes_nearest_valid_value():
    # positions:  0    1       2       3     4        (nearest valid: 0, 0, 3, 3, 3)
    d = np.array([[1.0, np.nan, np.inf, 4.0, -np.inf]])
    assert Depth.from_disparity(d).values.tolist() == [[1.0, 1.0, 0.0, 0.0, 0.0]]
    # the motorcycle's unmatched pixels each equal some valid neighbour's depth
    _, _, disparity = data.stereo_motorcycle()
    depth = Depth.from_disparity(disparity)
    holes = ~np.isfinite(disparity)
    assert np.isin(depth.values[holes], depth.values[~holes]).all()


def test_disparity_edge_cases():
    assert (Depth.from_disparity(np.full((3, 4), 7.0)).values == 1.0).all()  # flat: no relief, the far plane
    ramp = Depth.from_disparity(np.arange(12.0).reshape(3, 4))
    assert ramp.values[0, 0] == 1.0 and ramp.values[-1, -1] == 0.0 and np.all(np.diff(ramp.values.ravel()) <= 0)
    with pytest.raises(InvalidParameter, match="depth.disparity"):
        Depth.from_disparity(np.full((2, 2), np.nan))
    with pytest.raises(InvalidParameter, match="depth.disparity"):
        Depth.from_disparity(np.zeros((2, 2, 3)))


def test_distance_is_disparity_inverted(motorcycle):
    disparity = motorcycle[2]
    distance = 1.0 / disparity  # inf (unmatched) -> 0, which from_distance treats as invalid
    np.testing.assert_allclose(Depth.from_distance(distance).values, Depth.from_disparity(disparity).values,
                               atol=1e-6)
    with pytest.raises(InvalidParameter, match="depth.distance"):
        Depth.from_distance(np.zeros((2, 2)))


def test_depth_validation_names_the_field():
    for bad in (np.zeros((2, 2)), np.full((2, 2), 1.5, np.float32), np.full((2, 2), np.nan, np.float32),
                np.zeros((1, 2, 2), np.float32)):
        with pytest.raises(InvalidParameter, match="depth.values"):
            Depth(bad)
    source = np.zeros((2, 2), np.float32)
    depth = Depth(source)
    source[0, 0] = 0.5  # the condition owns a copy
    assert depth.values[0, 0] == 0.0 and not depth.values.flags.writeable


def test_user_depth_image_16bit_round_trip(tmp_path, motorcycle):
    depth = Depth.from_disparity(motorcycle[2])
    path = tmp_path / "depth.png"
    depth.image16().save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really 16-bit on disk
    back = Depth.from_image(path)
    assert np.abs(back.values - depth.values).max() <= 0.5 / 65535 + 1e-7
    assert Depth.from_image(path) == back  # reading is exact and repeatable
    # 8-bit, bright = near
    gradient = np.tile(np.arange(0, 256, 51, dtype=np.uint8), (2, 1))  # 0, 51, ..., 255
    Image.fromarray(gradient, "L").save(tmp_path / "d8.png")
    got = Depth.from_image(tmp_path / "d8.png").values
    np.testing.assert_allclose(got[0], 1 - np.arange(0, 256, 51) / 255, atol=1e-7)
    assert got[0, -1] == 0.0  # the brightest pixel is the nearest
    # gray saved as RGB is fine; a colour-mapped picture is not a depth map; float is refused
    Image.fromarray(np.stack([gradient] * 3, -1)).save(tmp_path / "rgb-gray.png")
    np.testing.assert_allclose(Depth.from_image(tmp_path / "rgb-gray.png").values, got, atol=1e-7)
    colour = np.zeros((2, 6, 3), np.uint8)
    colour[..., 0] = 255
    Image.fromarray(colour).save(tmp_path / "turbo.png")
    with pytest.raises(BadImage, match="grayscale"):
        Depth.from_image(tmp_path / "turbo.png")
    Image.fromarray(np.zeros((2, 2), np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(BadImage, match="floating-point"):
        Depth.from_image(tmp_path / "f.tif")
    with pytest.raises(BadImage, match="depth"):
        Depth.from_image(tmp_path / "missing.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "depth.png").read_bytes()[:200])
    with pytest.raises(BadImage, match="truncated or corrupt"):
        Depth.from_image(tmp_path / "cut.png")


def test_depth_picture_is_rgb_near_bright(motorcycle):
    depth = Depth.from_disparity(motorcycle[2])
    picture = depth.picture()
    assert picture.mode == "RGB" and picture.size == depth.size == (741, 500)
    a = np.asarray(picture)
    nearest = np.unravel_index(np.argmin(depth.values), depth.values.shape)
    assert tuple(a[nearest]) == (255, 255, 255)
    resized = depth.resized(74, 50)
    assert resized.size == (74, 50) and 0 <= resized.values.min() and resized.values.max() <= 1


# --- ImageEmbedding: the condition -----------------------------------------------------------------

def test_image_embedding_validation_and_picture():
    for vector, encoder in ((np.zeros(4), "e"), (np.zeros((2, 2), np.float32), "e"),
                            (np.array([np.nan], np.float32), "e"), (np.zeros(0, np.float32), "e")):
        with pytest.raises(InvalidParameter, match="image_embedding.vector"):
            ImageEmbedding(vector, encoder)
    with pytest.raises(InvalidParameter, match="image_embedding.encoder"):
        ImageEmbedding(np.zeros(4, np.float32), " ")
    e = ImageEmbedding(np.array([1.0, -1.0, 0.0] + [0.5] * 30, np.float32), "test@0")
    picture = e.picture()
    assert picture.mode == "RGB" and picture.size == (32 * 8, 2 * 8)
    a = np.asarray(picture)
    assert tuple(a[4, 4]) == (255, 0, 0) and tuple(a[4, 12]) == (0, 0, 255) and tuple(a[4, 20]) == (255, 255, 255)
    assert tuple(a[12, 12]) == (128, 128, 128)  # past the end


def test_conditions_save_and_load_exactly(tmp_path, monkeypatch, motorcycle):
    import recomposer.conditions as conditions

    monkeypatch.setattr(conditions, "KINDS", {**conditions.KINDS, Depth.kind: Depth,
                                              ImageEmbedding.kind: ImageEmbedding})
    depth = Depth.from_disparity(motorcycle[2])
    embedding = ImageEmbedding(np.random.default_rng(0).standard_normal(768).astype(np.float32), "clip:x@abc")
    for c in (depth, embedding):
        save_condition(c, tmp_path)
        back = load_condition(tmp_path, c.kind)
        assert back == c and back.describe() == c.describe()
        with Image.open(tmp_path / f"{c.kind}.png") as im:
            assert im.mode == "RGB"
    both = ConditionSet.of(depth, embedding, Caption("a motorcycle"))
    (tmp_path / "set").mkdir()
    save_set(both, tmp_path / "set")
    assert load_set(tmp_path / "set") == both
    # a saved file whose meta disagrees with its array is refused, naming the field
    record = json.loads((tmp_path / "depth.json").read_text())
    record["meta"]["size"] = [1, 1]
    (tmp_path / "depth.json").write_text(json.dumps(record))
    with pytest.raises(InvalidParameter, match="depth.size"):
        load_condition(tmp_path, "depth")


# --- depth backends -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,predicts", [("dpt", "disparity"), ("depth_anything", "disparity"),
                                           ("depth_anything_metric", "distance"), ("glpn", "distance")])
def test_transformers_depth_matches_the_model(models, small_left, name, predicts):
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    estimator = TransformersDepth(models[name])
    assert isinstance(estimator, DepthEstimator) and estimator.predicts == predicts
    depth = estimator(small_left)
    assert isinstance(depth, Depth) and depth.size == small_left.size
    assert depth.values.min() == 0.0 and depth.values.max() == 1.0  # the tiny model has relief
    assert estimator(small_left) == depth and TransformersDepth(models[name])(small_left) == depth  # deterministic
    # parity: transformers directly, resized as its own post-processing does, then our documented rule
    model = AutoModelForDepthEstimation.from_pretrained(models[name]).eval()
    processor = AutoImageProcessor.from_pretrained(models[name], backend="pil")
    with torch.no_grad():
        raw = model(**processor(images=small_left, return_tensors="pt")).predicted_depth
    full = processor.post_process_depth_estimation(type("O", (), {"predicted_depth": raw})(),
                                                   target_sizes=[(50, 74)])[0]["predicted_depth"]
    expected = Depth.from_distance(full.numpy()) if predicts == "distance" else Depth.from_disparity(full.numpy())
    np.testing.assert_allclose(depth.values, expected.values, atol=1e-5)


def test_what_each_depth_model_predicts(models, small_left):
    from types import SimpleNamespace as NS

    assert predicted_quantity("dpt", NS(backbone_config=None)) == "disparity"  # MiDaS DPT
    assert predicted_quantity("dpt", NS(backbone_config=NS(model_type="beit"))) == "disparity"
    assert predicted_quantity("dpt", NS(backbone_config=NS(model_type="dinov2"))) == "distance"  # *-nyu, *-kitti
    assert predicted_quantity("depth_anything", NS(depth_estimation_type="relative")) == "disparity"
    assert predicted_quantity("depth_anything", NS(depth_estimation_type="metric")) == "distance"
    assert predicted_quantity("glpn", NS()) == "distance"
    # the override, for checkpoints the rule gets wrong: reading metres as disparity flips near and far
    as_distance = TransformersDepth(models["dpt"], predicts="distance")
    as_disparity = TransformersDepth(models["dpt"])
    rho = spearmanr(as_distance(small_left).values.ravel(), as_disparity(small_left).values.ravel()).statistic
    assert as_distance.predicts == "distance" and rho < -0.9  # not -1: raw zeros are invalid distances, filled
    with pytest.raises(InvalidParameter, match="predicts"):
        TransformersDepth(models["dpt"], predicts="metres")


def test_depth_backend_on_the_motorcycle_pair(models, small_left, small_right):
    """The two views of one scene get nearly the same layout; another picture does not."""
    estimator = TransformersDepth(models["dpt"])
    left, right = estimator(small_left), estimator(small_right)
    other = estimator(Image.fromarray(data.astronaut()).resize((74, 50)))
    same = spearmanr(left.values.ravel(), right.values.ravel()).statistic
    different = spearmanr(left.values.ravel(), other.values.ravel()).statistic
    assert same > different


def test_no_depth_backend_says_how_to_provide_one():
    with pytest.raises(RecomposerError, match="--depth-model DIR") as info:
        load_depth_estimator(None)
    assert info.value.field == "depth" and "--depth FILE" in str(info.value)
    assert str(no_depth_backend()) == str(info.value)


def test_depth_refuses_unsupported_models_and_images(models, small_left):
    with pytest.raises(ModelError, match="supported depth models") as info:
        TransformersDepth(models["clip"])
    assert info.value.field == "depth-model"
    with pytest.raises(InvalidParameter, match="image"):
        TransformersDepth(models["dpt"])(small_left.convert("L"))


# --- loading safety, for every learned backend ---------------------------------------------------------

LOADERS = [(TransformersDepth, "depth-model"), (ClipImageEncoder, "image-encoder"),
           (TransformersCaptioner, "caption-model")]


class _Canary:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))  # would create the canary file if ever unpickled


@pytest.mark.parametrize("loader,field", LOADERS)
def test_missing_and_incomplete_dirs_name_the_field(tmp_path, loader, field):
    with pytest.raises(ModelError, match="no such model directory") as info:
        loader(tmp_path / "nowhere")
    assert info.value.field == field
    with pytest.raises(ModelError, match="no config.json"):
        loader(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no .safetensors"):
        loader(tmp_path)


@pytest.mark.parametrize("loader,field", LOADERS)
def test_pickles_are_refused_unread(tmp_path, models, loader, field):
    canary = tmp_path / "canary"
    payload = pickle.dumps(_Canary(canary))
    only_pickle = tmp_path / "pickle-only"
    only_pickle.mkdir()
    shutil.copy(models["clip"] / "config.json", only_pickle)
    (only_pickle / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(UnsafeFile, match="pickle"):
        loader(only_pickle)
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(models["clip"] / "config.json", renamed)
    (renamed / "model.safetensors").write_bytes(payload)
    with pytest.raises(UnsafeFile, match="pickle"):
        loader(renamed)
    assert not canary.exists()


def test_missing_misshaped_and_nonfinite_weights_are_errors_not_random(tmp_path, models):
    from safetensors.torch import load_file, save_file

    with pytest.raises(ModelError, match="lacks") as info:
        ClipImageEncoder(models["clip_no_projection"])  # a vision model without its projection
    assert info.value.field == "image-encoder"
    wrong = shutil.copytree(models["clip"], tmp_path / "wrong-shape")
    config = json.loads((wrong / "config.json").read_text())
    config["vision_config"]["projection_dim"] = config["projection_dim"] = 10  # the weights say 12
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="wrong shape"):
        ClipImageEncoder(wrong)
    nan = shutil.copytree(models["clip"], tmp_path / "nan")
    state = load_file(nan / "model.safetensors")
    state["visual_projection.weight"][0, 0] = float("nan")
    save_file(state, nan / "model.safetensors")
    with pytest.raises(UnsafeFile, match="NaN or inf"):
        ClipImageEncoder(nan)


# --- image encoder -----------------------------------------------------------------------------

def test_clip_embedding_matches_transformers(models, small_left, small_right):
    encoder = ClipImageEncoder(models["clip"])
    assert isinstance(encoder, ImageEncoder) and encoder.dim == 12
    e = encoder(small_left)
    assert isinstance(e, ImageEmbedding) and e.vector.shape == (12,) and e.encoder == encoder.identity
    assert encoder.identity.startswith("clip:clip-full@")
    assert encoder(small_left) == e  # deterministic
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(models["clip"], backend="pil")
    with torch.no_grad():
        features = models["clip_model"].get_image_features(**processor(images=small_left, return_tensors="pt"))
    features = features if torch.is_tensor(features) else features.pooler_output
    np.testing.assert_allclose(e.vector, features[0].numpy(), atol=1e-5)
    assert not np.allclose(encoder(small_right).vector, e.vector)


def test_clip_vision_half_without_processor_config_gives_the_same_vector(models, small_left):
    full, half = ClipImageEncoder(models["clip"]), ClipImageEncoder(models["clip_vision"])
    assert full.identity.split("@")[1] == half.identity.split("@")[1]  # same weights, same identity hash
    np.testing.assert_allclose(half(small_left).vector, full(small_left).vector, atol=1e-6)


def test_clip_in_bfloat16_keeps_identity(models, small_left):
    fp32, bf16 = ClipImageEncoder(models["clip"]), ClipImageEncoder(models["clip"], dtype=torch.bfloat16)
    assert bf16.identity == fp32.identity and bf16(small_left).vector.dtype == np.float32
    np.testing.assert_allclose(bf16(small_left).vector, fp32(small_left).vector, atol=0.1)


def test_the_bundled_image_encoder_is_the_default(small_left):
    encoder = load_image_encoder(None)
    embedding = encoder(small_left)
    assert encoder.identity.startswith("bundled:world-encoder@") and embedding.dim == 256
    assert np.isclose(np.linalg.norm(embedding.vector), 1.0, atol=1e-3)
    assert encoder(small_left) == embedding  # deterministic


# --- captioner ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["blip", "ved", "git"])
def test_captioner_is_greedy_bounded_and_matches_transformers(models, small_left, name):
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    captioner = TransformersCaptioner(models[name], max_new_tokens=6)
    assert isinstance(captioner, Captioner)
    caption = captioner(small_left)
    assert isinstance(caption, Caption) and caption.text == caption.text.strip()
    assert captioner(small_left) == caption  # greedy: deterministic
    model = AutoModelForImageTextToText.from_pretrained(models[name]).eval()
    pixels = AutoImageProcessor.from_pretrained(models[name], backend="pil")(images=small_left,
                                                                             return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ids = model.generate(pixel_values=pixels, do_sample=False, num_beams=1, max_new_tokens=6)
    assert ids.shape[1] <= 6 + 1  # at most the start token plus the bound
    expected = AutoTokenizer.from_pretrained(models[name]).batch_decode(ids, skip_special_tokens=True)[0]
    assert caption.text == " ".join(expected.split())


def test_captioner_options_and_absence(models):
    assert load_captioner(None) is None  # no captioner: the caption is absent, never invented
    for bad in (0, 129, 2.0, True):
        with pytest.raises(InvalidParameter, match="max_new_tokens"):
            TransformersCaptioner(models["blip"], max_new_tokens=bad)
    with pytest.raises(ModelError, match="supported captioners") as info:
        TransformersCaptioner(models["clip"])
    assert info.value.field == "caption-model"
