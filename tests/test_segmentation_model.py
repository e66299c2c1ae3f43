"""Instances from a local transformers semantic-segmentation model (a tiny random SegFormer, offline)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from recomposer.decompose.decomposer import Backends, decompose
from recomposer.decompose.segmentation import TransformersSegmenter
from recomposer.errors import ModelError, UnsafeFile


@pytest.fixture(scope="module")
def segformer_dir(tmp_path_factory):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    root = tmp_path_factory.mktemp("segformer")
    config = SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                             hidden_sizes=[8, 16], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
                             mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=3,
                             id2label={0: "wall", 1: "person", 2: "rocket"},
                             label2id={"wall": 0, "person": 1, "rocket": 2})
    torch.manual_seed(0)
    SegformerForSemanticSegmentation(config).save_pretrained(root, safe_serialization=True)
    (root / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SegformerImageProcessor", "do_resize": True, "size": {"height": 64, "width": 64},
        "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_rescale": True,
        "rescale_factor": 1 / 255, "do_reduce_labels": False}))
    return root


PHOTO = Image.fromarray(data.astronaut()).resize((96, 96))


def test_components_become_labelled_non_overlapping_instances(segformer_dir):
    instances = TransformersSegmenter(segformer_dir, min_area=0.0)(PHOTO)
    assert instances.masks.shape[1:] == (96, 96) and len(instances.labels) == instances.masks.shape[0] > 0
    assert set(instances.labels) <= {"wall", "person", "rocket"}
    assert (instances.masks.sum(0) <= 1).all() and instances.masks.sum() == 96 * 96  # a partition
    areas = instances.masks.sum((1, 2))
    assert (np.diff(areas) <= 0).all()  # largest first
    again = TransformersSegmenter(segformer_dir, min_area=0.0)(PHOTO)
    assert np.array_equal(again.masks, instances.masks)  # deterministic


def test_background_classes_and_small_pieces_are_dropped(segformer_dir):
    every = TransformersSegmenter(segformer_dir, min_area=0.0)(PHOTO)
    some = TransformersSegmenter(segformer_dir, min_area=0.05, background=("wall",))(PHOTO)
    assert "wall" not in some.labels and (some.masks.mean((1, 2)) >= 0.05).all()
    assert some.masks.shape[0] <= every.masks.shape[0]


def test_it_plugs_into_decompose(segformer_dir):
    result = decompose(PHOTO, kinds=("instances", "blobs"),
                       backends=Backends(segmenter=TransformersSegmenter(segformer_dir, min_area=0.01)))
    blobs = result.conditions["blobs"]
    assert blobs.descriptions == result.conditions["instances"].labels  # class names describe the blobs


def test_pickle_only_and_missing_dirs_are_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(UnsafeFile):
        TransformersSegmenter(tmp_path)
    with pytest.raises(ModelError, match="^segmentation-model"):
        TransformersSegmenter(tmp_path / "nope")
