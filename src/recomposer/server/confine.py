"""Every file a request names is found inside a configured folder, or refused (issue 19: path confinement).

A name is tried against each root in turn: ``realpath(root / name)`` (an absolute name: ``realpath(name)``) must lie
inside ``realpath(root)`` and be a regular file. ``realpath`` resolves ``..`` and every symlink first, so a link
inside a root that points outside it is refused like a literal ``../``. Nothing is decoded here: the web framework
decodes a URL once, and a name that still holds ``%2e%2e`` is a literal file name (that does not exist). A NUL byte,
an empty name or a name over 1,024 characters is refused before the file system sees it.
"""

import os
from pathlib import Path

from ..errors import InvalidParameter

MAX_NAME = 1024


class Roots:
    """The folders a server reads from (uploads, results, ``--inputs`` folders) by name, each made absolute and
    resolved once."""

    def __init__(self, **folders: Path):
        self.folders = {name: Path(os.path.realpath(folder)) for name, folder in folders.items()}

    def find(self, name: object, field: str, only: tuple[str, ...] | None = None, folder: bool = False) -> Path:
        """The existing regular file (``folder``: folder) ``name`` names inside one of the roots (``only``: those)."""
        if not isinstance(name, str) or not name or len(name) > MAX_NAME or "\0" in name:
            raise InvalidParameter(field, f"a file name of 1 to {MAX_NAME} characters without NUL", _shown(name))
        roots = [self.folders[k] for k in (only or tuple(self.folders))]
        for root in roots:
            candidate = Path(os.path.realpath(name if os.path.isabs(name) else root / name))
            if inside(candidate, root) and (candidate.is_dir() if folder else candidate.is_file()):
                return candidate
        raise InvalidParameter(field, f"a {'folder' if folder else 'file'} inside the server's folders (" + ", ".join(
            k for k in (only or tuple(self.folders))) + ")", _shown(name))


def inside(path: Path, root: Path) -> bool:
    """Whether resolved ``path`` is ``root`` or below it (by whole path components, never by string prefix)."""
    try:
        return os.path.commonpath([str(path), str(root)]) == str(root)
    except ValueError:  # different drives
        return False


def _shown(name: object) -> str:
    text = repr(name) if not isinstance(name, str) else name.replace("\0", "\\0")
    return text[:120]
