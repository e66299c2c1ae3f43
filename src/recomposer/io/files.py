"""All-or-nothing file writes (RELIABILITY.md R6): temp file or folder beside the target, fsync, rename.

Temp names carry the writer's process id, ``.NAME.PID.RANDOM.tmp``: a write cut short by a signal
removes its own temp (the CLI turns SIGTERM into an exception for that), and one cut short by SIGKILL
leaves a temp whose process is gone, which the next write into that folder removes
(``remove_stale_temps``). A temp of a live process, another run writing there now, is left alone.
"""

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, then rename it over ``path``.
    A reader sees the old file or the whole new one; a failure leaves no temp file behind."""
    path = Path(path)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; a result gets the usual permissions
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


ABOUT = "recomposer-about"  # the PNG text chunk of every picture that is not a replayable result


def png_about(about: dict | None = None):
    """The PNG text chunk that says what a picture is (a grid, a contact sheet, a world layer, a condition's
    picture) and which command made it; results carry their full provenance instead (provenance.write_png).
    ``recomposer info`` prints either."""
    import json
    from importlib.metadata import version

    from PIL import PngImagePlugin

    from ..invocation import current

    record = {"format": 1, "what": "picture", **(about or {}), "recomposer": version("recomposer")}
    if current() is not None:
        record["invocation"] = current()
    info = PngImagePlugin.PngInfo()
    info.add_itxt(ABOUT, json.dumps(record, sort_keys=True, default=str))
    return info


def save_png(image, path: str | Path, about: dict | None = None) -> Path:
    """A PNG with its ``png_about`` chunk, written atomically; parent folders are created. A path with another
    extension is refused (io/output.py's policy: a file is what its name says)."""
    from ..errors import InvalidParameter

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InvalidParameter("output", "a .png file (recomposer writes PNGs)", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    info = png_about(about)
    return atomic_write(path, lambda f: image.save(f, format="PNG", pnginfo=info))


def write_folder(output: str | Path, files: dict) -> Path:
    """A new folder of files, all or none: written into a hidden temp folder beside ``output``, every file
    fsynced, then renamed. ``files`` maps names to str (text), a PIL image (PNG), or a callable that writes
    into the temp folder."""
    from ..errors import RecomposerError

    output = Path(output)
    if output.exists():
        raise RecomposerError("output", f"{output} exists; choose a new folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(output)
    try:
        for name, content in files.items():
            if isinstance(content, str):
                (tmp / name).write_text(content)
            elif callable(content):
                content(tmp)
            else:
                content.save(tmp / name, format="PNG", pnginfo=png_about())
        for path in sorted(tmp.rglob("*"), reverse=True):  # files first, then their folders
            _fsync_dir(path) if path.is_dir() else _fsync_file(path)
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask())
        os.chmod(tmp, 0o777 & ~umask())
        _fsync_dir(tmp)
        tmp.rename(output)
        _fsync_dir(output.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def temp_folder(target: Path) -> Path:
    """A new hidden temp folder beside ``target``, of our naming (stale ones there are removed first)."""
    remove_stale_temps(target.parent)
    return Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))


def remove_stale_temps(folder: str | Path) -> None:
    """Remove temp files and folders of our naming whose writer process is gone (killed mid-write)."""
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or _alive(int(match["pid"])):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or no pid at all
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dataset_records(source: str | Path, columns: tuple[str, ...], files: tuple[str, ...],
                    field: str) -> list[tuple[dict, str]]:
    """A training set's records: ``source`` a JSONL file or a folder holding a metadata.jsonl, each record with
    string ``columns``; the columns in ``files`` name files relative to the JSONL's folder, which must exist, and
    come back as absolute Paths. Pairs of (record, "NAME line N")."""
    from ..errors import InvalidParameter

    source = Path(source)
    path = source / "metadata.jsonl" if source.is_dir() else source
    if not path.is_file():
        raise InvalidParameter(field, f"a JSONL file of {' / '.join(columns)} records, or a folder with a "
                                      "metadata.jsonl", str(source))
    records = []
    for record, where in jsonl_records(path, columns, field):
        record = {**record, **{k: path.parent / record[k] for k in files}}
        for k in files:
            if not record[k].is_file():
                raise InvalidParameter(field, f"files that exist ({where})", str(record[k]))
        records.append((record, where))
    return records


def jsonl_records(path: Path, columns: tuple[str, ...], field: str) -> list[tuple[dict, str]]:
    """The JSON objects of a JSONL file, one per non-blank line, each with string ``columns``: (record, "NAME line N")
    pairs. Anything else is one InvalidParameter naming ``field`` and the line; an empty file is refused."""
    import json

    from ..errors import InvalidParameter

    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name} line {number}"
            try:
                record = json.loads(line)
            except ValueError:
                raise InvalidParameter(field, f"JSON objects, one per line ({where} is not JSON)", line[:60]) from None
            if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in columns):
                raise InvalidParameter(field, f"records with {', '.join(columns)} strings ({where})",
                                       record if not isinstance(record, dict) else sorted(record))
            records.append((record, where))
    if not records:
        raise InvalidParameter(field, "at least one record", str(path))
    return records
