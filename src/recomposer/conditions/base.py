"""Conditions are typed, immutable values; a ConditionSet maps each kind to at most one of them.

A condition says *what* the model is told (a caption, a masked image, later a sketch, a palette,
blobs, ...). *Where* it enters the model is declared by the adapter that consumes that kind, never
inferred from the payload's shape. A kind that is absent from a set is the null condition: each
adapter documents what its null is (the empty caption for text, nothing at all for additive ones).
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import InvalidParameter


@dataclass(frozen=True)
class Condition:
    """Base of every condition value. Subclasses set ``kind`` and hold their payload as fields."""

    kind: ClassVar[str] = ""

    def describe(self) -> dict:
        """A JSON-friendly summary for provenance (payload hashes rather than raw tensors)."""
        raise NotImplementedError


@dataclass(frozen=True)
class ConditionSet(Mapping[str, Condition]):
    """An immutable mapping kind -> Condition. Edits return new sets."""

    items_: tuple[Condition, ...] = field(default=())

    def __post_init__(self) -> None:
        kinds = [c.kind for c in self.items_]
        if len(set(kinds)) != len(kinds):
            raise InvalidParameter("conditions", "at most one condition of each kind", kinds)

    @classmethod
    def of(cls, *conditions: Condition | None) -> "ConditionSet":
        """Build a set from conditions, skipping Nones (handy for optional inputs)."""
        return cls(tuple(c for c in conditions if c is not None))

    def __getitem__(self, kind: str) -> Condition:
        for c in self.items_:
            if c.kind == kind:
                return c
        raise KeyError(kind)

    def __iter__(self) -> Iterator[str]:
        return (c.kind for c in self.items_)

    def __len__(self) -> int:
        return len(self.items_)

    def with_(self, *conditions: Condition) -> "ConditionSet":
        """A new set where the given conditions replace any of the same kind."""
        replaced = {c.kind for c in conditions}
        return ConditionSet(tuple(c for c in self.items_ if c.kind not in replaced) + tuple(conditions))

    def without(self, *kinds: str) -> "ConditionSet":
        """A new set with the given kinds dropped (each becomes its null)."""
        return ConditionSet(tuple(c for c in self.items_ if c.kind not in kinds))

    def describe(self) -> dict:
        return {c.kind: c.describe() for c in self.items_}

    def __repr__(self) -> str:
        return f"ConditionSet({', '.join(repr(c) for c in self.items_)})"


EMPTY = ConditionSet()
