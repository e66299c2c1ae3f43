"""Progress of long work, reported to whoever listens.

Work names its stages (``with stage("sampling", total=20) as advance: ... advance(k)``): loading a model,
each sampling run, each decomposition, training. The command line listens (commands/terminal.py): on a
terminal a bar with the stage, its count and an ETA; off a terminal a few plain lines. Library callers and
tests listen to nothing, and a stage then costs nothing.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol


class Listener(Protocol):
    def start(self, name: str, total: int | None) -> None: ...

    def update(self, done: int, note: str = "") -> None: ...  # the innermost open stage

    def end(self, ok: bool = True) -> None: ...  # ok: the stage finished (not an error or a cancel)


Advance = Callable[..., None]  # advance(done, note="")
_listener: ContextVar[Listener | None] = ContextVar("progress", default=None)


def _ignore(done: int, note: str = "") -> None:
    pass


@contextmanager
def stage(name: str, total: int | None = None) -> Iterator[Advance]:
    """A named piece of work of ``total`` counted steps (None: uncounted); yields ``advance(done, note)``."""
    listener = _listener.get()
    if listener is None:
        yield _ignore
        return
    listener.start(name, total)
    try:
        yield listener.update
    except BaseException:
        listener.end(False)
        raise
    listener.end(True)


@contextmanager
def listening(listener: Listener) -> Iterator[Listener]:
    token = _listener.set(listener)
    try:
        yield listener
    finally:
        _listener.reset(token)
