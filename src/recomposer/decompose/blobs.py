"""Blobs from instances (BlobGEN §3.1): one IoU-maximising ellipse per instance mask."""

from ..conditions.blobs import Blobs
from ..ellipse import fit_ellipse


def blobs_from_instances(instances, descriptions=None) -> Blobs:
    """``instances``: an Instances condition (masks (N, H, W)); descriptions default to its labels."""
    masks = instances.masks
    n, h, w = masks.shape
    texts = tuple(descriptions) if descriptions is not None else tuple(instances.labels)
    return Blobs(tuple(fit_ellipse(m) for m in masks), texts, (w, h))
