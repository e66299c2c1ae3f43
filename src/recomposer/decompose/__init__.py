"""Composer's first half: any image becomes typed conditions (one module per representation)."""
