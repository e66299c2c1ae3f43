"""Parameter checks shared by the library, the CLI and the API.

Each check returns the value (normalised where the rule says so) or raises ``InvalidParameter``
naming the field and the allowed range; none of them computes anything expensive.
"""

import math

from .errors import InvalidParameter


def integer(field: str, value: object, low: int, high: int | None = None) -> int:
    """An int in [low, high] (bools are refused: ``True`` is not a step count)."""
    allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(field, allowed, value)
    if value < low or (high is not None and value > high):
        raise InvalidParameter(field, allowed, value)
    return value


def real(field: str, value: object, low: float, high: float | None = None) -> float:
    """A finite float in [low, high]."""
    allowed = f"a finite number >= {low:g}" if high is None else f"a finite number in [{low:g}, {high:g}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameter(field, allowed, value)
    value = float(value)
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        raise InvalidParameter(field, allowed, value)
    return value


def fraction_window(field: str, start: object, end: object) -> tuple[float, float]:
    """A [start, end] window of the schedule, 0 <= start < end <= 1."""
    start = real(f"{field}.start", start, 0.0, 1.0)
    end = real(f"{field}.end", end, 0.0, 1.0)
    if not start < end:
        raise InvalidParameter(f"{field}.end", f"greater than {field}.start ({start:g})", end)
    return start, end


def boolean(field: str, value: object) -> bool:
    """True or False (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise InvalidParameter(field, "true or false", value)
    return value


def choice(field: str, value: object, allowed: tuple[str, ...]) -> str:
    """One of a fixed set of names."""
    if value not in allowed:
        raise InvalidParameter(field, "one of " + ", ".join(allowed), value)
    return value  # type: ignore[return-value]


MAX_SIDE = 4096  # the largest image side any command accepts


def multiple_of(field: str, value: object, factor: int, low: int = 8, high: int = MAX_SIDE) -> int:
    """An image side: an integer in [low, high] divisible by the model's size factor."""
    value = integer(field, value, low, high)
    if value % factor:
        raise InvalidParameter(field, f"a multiple of {factor} in [{low}, {high}]", value)
    return value


def seed(field: str, value: object) -> int:
    """A seed: an integer in [0, 2**63 - 1] (what ``torch.Generator.manual_seed`` accepts)."""
    return integer(field, value, 0, 2**63 - 1)
