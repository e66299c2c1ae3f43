"""What a command shows of its progress (progress.py's stages), on standard error.

On a terminal: one bar per open stage, with its count, elapsed time and ETA (rich; gone when the stage ends).
Off a terminal (a log, a pipe): one plain line per top-level stage (``sampling: 20 steps in 1.2 s``; stages
inside it, such as each generation of a benchmark, are silent; a stage run many times in a row is one line,
``decomposing: 24 runs, 144 steps in 0.9 s``), written when the command succeeds or before
the next long-stage line, so that a command that fails says one line, its error; for a stage that runs long,
a line every ``every`` seconds with its count and ETA; never a control code. When the
command ends normally, one summary line: ``done in 3.4 s (loading model 0.8 s, sampling 2.6 s)``.
"""

import sys
import time
from contextlib import contextmanager

from ..progress import listening


def _seconds(t: float) -> str:
    if t < 60:
        return f"{t:.1f} s"
    minutes, seconds = divmod(int(round(t)), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class _Stages:
    """The open stages (a stack) and, for the summary, how long each top-level stage took."""

    def __init__(self, stream):
        self.stream = stream
        self.open: list[dict] = []
        self.took: list[tuple[str, float]] = []
        self.began = time.monotonic()

    def start(self, name, total):
        self.open.append({"name": name, "total": total, "done": 0, "note": "", "first": None,
                          "start": time.monotonic()})

    def update(self, done, note=""):
        if self.open:
            s = self.open[-1]
            if s["first"] is None:  # a resumed count starts above 1: its rate counts from here
                s["first"], s["start"] = (done, time.monotonic()) if done > 1 else (0, s["start"])
            s.update(done=done, note=note)

    def end(self, ok=True):
        s = self.open.pop()
        took = time.monotonic() - s["start"]
        if not self.open and ok:
            self.took.append((s["name"], took))
        return s, took

    def summary(self) -> str:
        merged: dict[str, float] = {}
        for name, took in self.took:
            merged[name] = merged.get(name, 0.0) + took
        parts = ", ".join(f"{name} {_seconds(t)}" for name, t in merged.items())
        return f"done in {_seconds(time.monotonic() - self.began)}" + (f" ({parts})" if parts else "")


class Plain(_Stages):
    def __init__(self, stream, every: float = 30.0):
        super().__init__(stream)
        self.every = every
        self.last_line = time.monotonic()
        self.ended: list[dict] = []  # stages that ended, not yet written; repeats of one stage merged

    def _lines(self) -> list[str]:
        lines = []
        for e in self.ended:
            if e["runs"] > 1:  # a stage run many times in a row (each image of a batch job): one line for all
                lines.append(f"{e['name']}: {e['runs']} runs, {e['steps']} steps in {_seconds(e['took'])}")
            else:
                count = f"{e['steps']} steps in " if e["total"] else ""
                lines.append(f"{e['name']}: {count}{_seconds(e['took'])}" + (f", {e['note']}" if e["note"] else ""))
        self.ended.clear()
        return lines

    def _line(self, text: str) -> None:
        for line in [*self._lines(), text]:
            print(line, file=self.stream, flush=True)
        self.last_line = time.monotonic()

    def summary(self) -> str:
        return "\n".join([*self._lines(), super().summary()])

    def update(self, done, note=""):
        super().update(done, note)
        if len(self.open) == 1 and time.monotonic() - self.last_line >= self.every:
            s = self.open[0]
            count = f"{done}/{s['total']}" if s["total"] else str(done)
            elapsed, made = time.monotonic() - s["start"], done - s["first"]
            eta = f", {_seconds(elapsed / made * (s['total'] - done))} left" if s["total"] and made > 0 else ""
            self._line(f"{s['name']}: {count}{eta}" + (f", {note}" if note else ""))

    def end(self, ok=True):
        s, took = super().end(ok)
        if not self.open and ok:
            last = self.ended[-1] if self.ended else None
            if last is not None and last["name"] == s["name"]:
                last.update(runs=last["runs"] + 1, steps=last["steps"] + s["done"], took=last["took"] + took)
            else:
                self.ended.append({"name": s["name"], "runs": 1, "steps": s["done"], "total": s["total"],
                                   "took": took, "note": s["note"]})


class Bars(_Stages):
    def __init__(self, stream):
        super().__init__(stream)
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                             TextColumn("{task.fields[note]}"), console=Console(file=stream), transient=True)
        self.tasks: list = []

    def start(self, name, total):
        super().start(name, total)
        if not self.tasks:
            self.bars.start()
        self.tasks.append(self.bars.add_task(name, total=total, note=""))

    def update(self, done, note=""):
        super().update(done, note)
        if self.tasks:
            self.bars.update(self.tasks[-1], completed=done, note=note)

    def end(self, ok=True):
        super().end(ok)
        self.bars.remove_task(self.tasks.pop())
        if not self.tasks:
            self.bars.stop()

    def close(self):
        if self.tasks:
            self.tasks.clear()
            self.bars.stop()


@contextmanager
def progress_shown(stream=None):
    """Listen to the command's stages for its duration; the summary line if it ends normally and ran any."""
    stream = stream or sys.stderr
    shown = Bars(stream) if stream.isatty() else Plain(stream)
    try:
        with listening(shown):
            yield shown
    except BaseException:
        if isinstance(shown, Bars):
            shown.close()
        raise
    if shown.took:
        print(shown.summary(), file=stream, flush=True)
