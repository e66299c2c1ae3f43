"""Backbones (VAE + UNet + text encoder + scheduler) and, later, the adapters that extend them."""

from .backbone import Backbone

__all__ = ["Backbone"]
