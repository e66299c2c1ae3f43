"""User-level operations (generate, and later vary, interpolate, edit, ...), each a function and a CLI command."""
