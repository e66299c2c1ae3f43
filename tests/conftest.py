"""Shared fixtures: tiny SD-shaped backbones with random weights, built offline. One torch thread."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    from recomposer.models.tiny import tiny_sd

    return tiny_sd(seed=0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny SD saved as a diffusers directory (what --model PATH loads)."""
    from recomposer.models.tiny import save_diffusers_dir, tiny_sd

    return save_diffusers_dir(tiny_sd(seed=0), tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def photo():
    """A real photo (scikit-image's astronaut) at 32x32, as a PIL image."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((32, 32), Image.Resampling.LANCZOS)
