"""Instances from a learned semantic-segmentation model in a local transformers directory.

Any ``AutoModelForSemanticSegmentation`` (SegFormer, UperNet, DPT, BEiT, MobileViT, ...): per-pixel
class logits are resized to the image (bilinear, as transformers' own post-processing does), the
arg-max class map is split into connected components (8-connectivity), and every component of at
least ``min_area`` of the image becomes one instance labelled with its class name. Classes listed in
``background`` (by name, e.g. "wall", "sky") are not instances.
"""

from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from ..conditions.instances import Instances
from ..errors import InvalidParameter, NonFiniteResult
from ..models.local import check_model_dir, load_image_processor, load_pretrained


class TransformersSegmenter:
    def __init__(self, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 min_area: float = 0.002, background: tuple[str, ...] = ()):
        from transformers import AutoModelForSemanticSegmentation

        field = "segmentation-model"
        if not 0 <= min_area < 1:
            raise InvalidParameter("min_area", "a fraction of the image in [0, 1)", min_area)
        self.root = check_model_dir(path, field)
        self.processor = load_image_processor(self.root, field)
        self.model = load_pretrained(AutoModelForSemanticSegmentation, self.root, field, device, dtype)
        self.names = {int(k): str(v) for k, v in self.model.config.id2label.items()}
        self.min_area, self.background = min_area, frozenset(background)

    @torch.inference_mode()
    def __call__(self, image) -> Instances:
        image = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        if image.mode != "RGB":
            raise InvalidParameter("image", "an RGB image", image.mode)
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"]
        logits = self.model(pixel_values=pixels.to(self.model.device, self.model.dtype)).logits.float()  # (1, K, h, w)
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteResult("segmentation", "the segmentation model produced NaN or inf")
        logits = torch.nn.functional.interpolate(logits, size=(image.height, image.width), mode="bilinear",
                                                 align_corners=False)
        classes = logits[0].argmax(0).cpu().numpy()  # (H, W)
        masks, labels = [], []
        for k in np.unique(classes):
            name = self.names.get(int(k), str(int(k)))
            if name in self.background:
                continue
            count, components = cv2.connectedComponents((classes == k).astype(np.uint8), connectivity=8)
            for c in range(1, count):
                mask = components == c
                if mask.mean() >= self.min_area:
                    masks.append(mask)
                    labels.append(name)
        order = np.argsort([-m.sum() for m in masks], kind="stable")  # largest first
        if not masks:
            return Instances(np.zeros((0, image.height, image.width), bool), ())
        return Instances(np.stack([masks[i] for i in order]), tuple(labels[i] for i in order))
