"""One training run per output folder (RELIABILITY R7).

Two processes training into one folder would interleave their checkpoints and loss log. The first
takes an OS lock on ``FOLDER/.lock`` (``flock``: the kernel releases it when the process dies, however
it dies), and a second is refused with one line naming the holder. A process may take the lock of a
folder it already holds (a command holds it for its whole run; the trainer inside takes it again).
Under multi-process training only the main process (global rank 0) locks. A folder the lock itself
created is removed again when the run ends having written nothing into it (a command that failed
while loading leaves no empty run folder behind).
"""

import atexit
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from ..errors import RecomposerError

LOCK_FILE = ".lock"
_held: dict[str, tuple[int, bool]] = {}  # resolved folder -> (the open, locked descriptor, we made the folder)


def acquire(folder: str | Path) -> None:
    """Lock ``folder`` (created if needed) for this process until ``release`` or ``release_all`` (the CLI's
    end of a command, or the process's exit); refuse if another process holds it."""
    folder = Path(folder)
    if os.environ.get("RANK", "0") != "0":
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _held:
        return
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if created:
            folder.rmdir()
        raise RecomposerError("output", f"{folder} is in use by another training run (process {holder}); wait for "
                                        "it to end or choose another folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = (fd, created)


def release(folder: str | Path) -> None:
    """Drop the lock (closing the descriptor drops the flock). The lock file stays, unless the folder was
    made by ``acquire`` and holds nothing else: then both go."""
    folder = Path(folder)
    fd, created = _held.pop(str(folder.resolve()), (None, False))
    if fd is None:
        return
    if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
        (folder / LOCK_FILE).unlink()
        folder.rmdir()
    os.close(fd)


def release_all() -> None:
    for key in list(_held):
        release(key)


@contextmanager
def run_lock(folder: str | Path):
    """``acquire`` for the duration; released after unless this process already held it."""
    held = str(Path(folder).resolve()) in _held
    acquire(folder)
    try:
        yield
    finally:
        if not held:
            release(folder)


atexit.register(release_all)
