"""Subcommands of the `recomposer` CLI, one module per group."""
