"""recomposer: decompose images into typed conditions; recompose any mix of them with diffusion models."""

__version__ = "0.1.0"
