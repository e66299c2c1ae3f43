"""One output policy for every command that writes images.

- ``-o FILE.png``: that file (a batch: FILE-0.png, FILE-1.png, …); an existing file of that name is replaced
  (atomically: a reader sees the old file or the new one); any other extension is refused.
- ``-o DIR`` (anything without an extension, or an existing folder): the folder, created if needed; files are
  named by their seed (``SEED.png``, or a command's own names) and never overwrite: a taken name becomes
  ``SEED-1.png``, ``SEED-2.png``, ….
- An output path that is one of the command's own input files is refused before anything runs.
- A batch of more than one image also gets a grid beside it (FILE-grid.png, or DIR/SEED-grid.png).
- A command that writes a set of files (decompose, invert, attention, demo, world sample, bench) writes a new
  folder: ``-o DIR`` must not exist yet and must not look like a file (a name with an extension).
Nothing here imports torch: the plan is checked with the request, before a model loads.
"""

from pathlib import Path

from ..errors import InvalidParameter

IMAGE_SUFFIX = ".png"


def is_file_target(output: Path) -> bool:
    return bool(output.suffix) and not output.is_dir()


def check_output(output: Path, inputs: tuple = (), field: str = "output") -> Path:
    """Refuse an output that cannot follow the policy (another extension, a file where a folder is wanted, one
    of the inputs), before anything runs."""
    output = Path(output)
    if is_file_target(output):
        if output.suffix.lower() != IMAGE_SUFFIX:
            raise InvalidParameter(field, "a .png file or a folder (recomposer writes PNGs with their provenance)",
                                   str(output))
        if output.parent.exists() and not output.parent.is_dir():
            raise InvalidParameter(field, "a path whose folder is a folder", str(output))
    elif output.exists() and not output.is_dir():
        raise InvalidParameter(field, "a folder (this path is a file without a .png extension)", str(output))
    for given in inputs:
        if given is not None and Path(given).exists() and _same(Path(given), output):
            raise InvalidParameter(field, "a path other than the command's own inputs", str(output))
    return output


def check_new_folder(output: Path, inputs: tuple = (), field: str = "output") -> Path:
    """Refuse, before anything runs, an output that cannot become a new folder of files (module docstring)."""
    output = Path(output)
    if output.exists():
        raise InvalidParameter(field, "a new folder (this command writes a set of files)", f"{output} exists")
    if output.suffix:
        raise InvalidParameter(field, "a new folder, named without an extension (this command writes a set of "
                                      "files)", str(output))
    return check_output(output, inputs, field)


def output_paths(output: Path, stems: list[str], field: str = "output") -> list[Path]:
    """The paths results with names ``stems`` (seeds, or a command's own names) go to (module docstring)."""
    output = check_output(output, field=field)
    if is_file_target(output):
        output.parent.mkdir(parents=True, exist_ok=True)
        if len(stems) == 1:
            return [output]
        return [output.with_name(f"{output.stem}-{k}{IMAGE_SUFFIX}") for k in range(len(stems))]
    output.mkdir(parents=True, exist_ok=True)
    taken: set[Path] = set()
    paths = []
    for stem in stems:
        path, n = output / f"{stem}{IMAGE_SUFFIX}", 1
        while path.exists() or path in taken:
            path, n = output / f"{stem}-{n}{IMAGE_SUFFIX}", n + 1
        taken.add(path)
        paths.append(path)
    return paths


def grid_path(paths: list[Path]) -> Path:
    """Where a batch's grid goes: beside its first image."""
    first = paths[0]
    stem = first.stem.rsplit("-", 1)[0] if first.stem.rsplit("-", 1)[-1].isdigit() else first.stem
    path, n = first.with_name(f"{stem}-grid{IMAGE_SUFFIX}"), 1
    while path.exists():
        path, n = first.with_name(f"{stem}-grid-{n}{IMAGE_SUFFIX}"), n + 1
    return path


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and a.samefile(b))
    except OSError:
        return False
