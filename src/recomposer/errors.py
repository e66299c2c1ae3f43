"""The errors recomposer raises on purpose.

Every error a user can cause names the field at fault and what is allowed, so the CLI, the
HTTP API and library callers can all show one clear line instead of a traceback.
"""


class RecomposerError(ValueError):
    """A problem with what the user asked for or gave us, explained in one line."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class InvalidParameter(RecomposerError):
    """A parameter outside its allowed range, e.g. ``InvalidParameter("steps", "an integer >= 1", 0)``."""

    def __init__(self, field: str, allowed: str, got: object):
        self.allowed = allowed
        self.got = got
        super().__init__(field, f"must be {allowed} (got {got!r})")


class UnsafeFile(RecomposerError):
    """A file we refuse to read: a pickle, an unknown format, or a malformed weights file."""


class BadImage(RecomposerError):
    """An image that cannot be read or normalised by the documented rules."""


class ModelError(RecomposerError):
    """A model directory or checkpoint that is missing, incomplete or does not fit its config."""


class NonFiniteResult(RecomposerError):
    """NaN or inf appeared in latents or pixels; nothing is saved (usually fp16 overflow)."""


class FlatResult(RecomposerError):
    """An image came out as one flat colour (a broken VAE or UNet, an fp16 overflow); nothing is saved."""


class Cancelled(Exception):
    """Sampling was cancelled between two steps; not an error in the user's input."""


class Notice(UserWarning):
    """Something the user should know that is not an error (a prompt cut to the text encoder's window); the CLI
    prints each as one ``warning:`` line."""
