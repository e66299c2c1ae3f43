"""All-or-nothing file writes (RELIABILITY.md R6): temp file in the same folder, fsync, rename."""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, then rename it over ``path``.
    A reader sees the old file or the whole new one; a failure leaves no temp file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result gets the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_png(image, path: str | Path) -> Path:
    """A plain PNG (no provenance), written atomically; parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


def write_folder(output: str | Path, files: dict) -> Path:
    """A new folder of files, all or none: written into a hidden temp folder beside ``output``, then renamed.
    ``files`` maps names to str (text), a PIL image (PNG), or a callable that writes into the temp folder."""
    import shutil

    from ..errors import RecomposerError

    output = Path(output)
    if output.exists():
        raise RecomposerError("output", f"{output} exists; choose a new folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        for name, content in files.items():
            if isinstance(content, str):
                (tmp / name).write_text(content)
            elif callable(content):
                content(tmp)
            else:
                content.save(tmp / name, format="PNG")
        os.chmod(tmp, 0o777 & ~_umask())
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output
