"""Conditions are typed, immutable values; a ConditionSet maps each kind to at most one of them.

A condition says *what* the model is told (a caption, a masked image, later a sketch, a palette,
blobs, ...). *Where* it enters the model is declared by the adapter that consumes that kind, never
inferred from the payload's shape. A kind that is absent from a set is the null condition: each
adapter documents what its null is (the empty caption for text, nothing at all for additive ones).
"""

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..errors import InvalidParameter


@dataclass(frozen=True)
class Condition:
    """Base of every condition value. Subclasses set ``kind``, hold their payload as fields, check it
    in ``__post_init__`` (naming the field), and say how they are saved and drawn:

    - ``meta()``: JSON-ready fields; ``arrays()``: array payload (saved as safetensors, exactly);
    - ``from_saved(meta, arrays)``: the inverse, validating as the constructor does;
    - ``picture()``: an RGB PIL image a person can look at.
    Saving and loading themselves live in conditions/files.py, once for every kind.
    """

    kind: ClassVar[str] = ""

    def meta(self) -> dict:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    @classmethod
    def from_saved(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "Condition":
        raise NotImplementedError

    def picture(self):
        raise NotImplementedError

    def describe(self) -> dict:
        """A JSON-friendly summary for provenance: the fields, and a hash of the arrays."""
        digest = hashlib.sha256()
        for name, a in sorted(self.arrays().items()):
            a = np.ascontiguousarray(a)
            digest.update(f"{name}:{a.dtype}:{a.shape}".encode() + a.tobytes())
        return {**self.meta(), **({"sha256": digest.hexdigest()} if self.arrays() else {})}


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
        """A new set where the given conditions replace those of the same kind (in place) or are appended."""
        new = {c.kind: c for c in conditions}
        kept = tuple(new.pop(c.kind, c) for c in self.items_)
        return ConditionSet(kept + tuple(new.values()))

    def without(self, *kinds: str) -> "ConditionSet":
        """A new set with the given kinds dropped (each becomes its null)."""
        return ConditionSet(tuple(c for c in self.items_ if c.kind not in kinds))

    def describe(self) -> dict:
        return {c.kind: c.describe() for c in self.items_}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConditionSet) and dict(self) == dict(other)

    __hash__ = None

    def __repr__(self) -> str:
        return f"ConditionSet({', '.join(repr(c) for c in self.items_)})"


EMPTY = ConditionSet()
