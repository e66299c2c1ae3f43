"""`recomposer make-pairs`: InstructPix2Pix's training pairs made with Prompt-to-Prompt (tasks/make_pairs.py).

    recomposer make-pairs -o pairs/ --count 500                           # the shapes world's edits, bundled model
    recomposer make-pairs -o pairs/ --triplets edits.jsonl --model sd15/  # your (caption, instruction, edited caption)
    recomposer make-pairs -o pairs/ --captions captions.txt --lm gpt2/ --model sd15/

OUT gets images/NNNNN-before.png and -after.png (with provenance) and a metadata.jsonl line per pair, written after
its two images: input_image, edit_prompt, edited_image (diffusers' train_instruct_pix2pix columns, what
`recomposer train instruct --data OUT` reads), caption, edited_caption, seed, index. A run stopped part-way resumes
when given the same folder and settings: pairs already listed are kept, the rest are made.
"""

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InvalidParameter, RecomposerError
from .options import Device, Dtype, model_option

RUN_FILE = "pairs-run.json"


def make_pairs_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="A new folder (or one an earlier make-pairs run "
                                                                "with the same settings left part-way).")],
    count: Annotated[Optional[int], typer.Option(help="Pairs to make (default: one per triplet; 100 from the "
                                                      "world).")] = None,
    triplets: Annotated[Optional[Path], typer.Option(help="A JSONL file of caption / instruction / edited_caption "
                                                          "records. Default: the shapes world's edits.")] = None,
    captions: Annotated[Optional[Path], typer.Option(help="A text file of captions, one per line, for --lm to "
                                                          "write edits of.")] = None,
    lm: Annotated[Optional[Path], typer.Option(help="A local transformers causal language model folder that "
                                                    "writes an instruction and edited caption per --captions "
                                                    "line.")] = None,
    model: model_option("The model that draws the pairs. Default: the bundled model.") = None,
    steps: Annotated[int, typer.Option(help="Prompt-to-Prompt sampling steps (DDIM).")] = 50,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 7.5,
    size: Annotated[Optional[int], typer.Option(help="Image side in pixels (default: the model's native size).")]
    = None,
    seed: Annotated[int, typer.Option(help="Pair k is drawn from seed + k (and world scenes start at seed).")] = 0,
    device: Device = "auto", dtype: Dtype = "fp32",
) -> None:
    """Make InstructPix2Pix training pairs with Prompt-to-Prompt: before and after differ by the edit alone."""
    from .. import validation as v
    from ..requests import P2PRequest, readable
    from ..tasks.make_pairs import read_triplets

    # 1. Every parameter, before anything loads.
    if count is not None:
        v.integer("count", count, 1, 10_000_000)
    P2PRequest("a", "b", steps=steps, guidance=guidance, seed=seed).check()
    if size is not None:
        v.integer("size", size, 8, 4096)
    if (captions is None) != (lm is None):
        raise RecomposerError("lm", "--captions and --lm together (the LM writes an edit of each caption)")
    if triplets is not None and lm is not None:
        raise RecomposerError("triplets", "one source of triplets: --triplets, or --captions with --lm")
    source = "triplets" if triplets is not None else "lm" if lm is not None else "world"
    given = read_triplets(triplets) if triplets is not None else None
    lines = None
    if captions is not None:
        readable("captions", captions)
        readable("lm", lm, folder=True)
        lines = [line.strip() for line in captions.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise InvalidParameter("captions", "a file with at least one caption", str(captions))
    settings = {"source": source, "triplets": _file_record(triplets), "captions": _file_record(captions),
                "lm": str(lm.resolve()) if lm else None,
                "model": str(Path(model).resolve()) if model else "bundled", "steps": steps, "guidance": guidance,
                "size": size, "seed": seed}
    done, lines_done = _resume(output, settings)

    # 2. The triplets, the model, then each pair.
    from ..provenance import write_png
    from ..tasks.make_pairs import lm_triplets, make_pair, world_triplets
    from .p2p import _load

    if source == "lm":
        given, skipped = lm_triplets(lines, lm, seed=seed)
        typer.echo(f"the language model wrote {len(given)} usable edits ({skipped} replies skipped)", err=True)
        if not given:
            raise RecomposerError("lm", f"{lm} wrote no edit Prompt-to-Prompt can draw (a word swap or an added "
                                        "phrase) for any caption")
    if given is not None:
        count = min(count or len(given), len(given))
        chosen = given[:count]
    else:
        import itertools

        count = count or 100
        chosen = list(itertools.islice(world_triplets(seed), count))
    backbone = _load(model, None, device, dtype)
    _begin(output, settings, lines_done)
    images = output / "images"
    with (output / "metadata.jsonl").open("a", encoding="utf-8") as metadata:
        for index, triplet in enumerate(chosen):
            if index in done:
                continue
            before, after = make_pair(backbone, triplet, seed + index, steps, guidance, size)
            names = [f"{index:05d}-{side}.png" for side in ("before", "after")]
            for name, result in zip(names, (before, after)):
                write_png(images / name, result.image, result.provenance)
            record = {"input_image": f"images/{names[0]}", "edit_prompt": triplet.instruction,
                      "edited_image": f"images/{names[1]}", "caption": triplet.caption,
                      "edited_caption": triplet.edited_caption, "seed": seed + index, "index": index}
            metadata.write(json.dumps(record) + "\n")
            metadata.flush()
            os.fsync(metadata.fileno())
            typer.echo(f"pair {index + 1}/{count}: {triplet.instruction}", err=True)
    typer.echo(str(output))


def _file_record(path: Path | None) -> dict | None:
    """A source file as a run records it: where it is and what it holds (an edited file is another run)."""
    import hashlib

    if path is None:
        return None
    return {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _resume(output: Path, settings: dict) -> tuple[set[int], list[str]]:
    """(the indices an earlier run in ``output`` finished, its metadata lines to keep), checked before anything is
    written: a new folder, or one whose run had these settings. A line cut short by a crash is dropped (its pair is
    made again)."""
    from ..io.output import check_new_folder

    run = output / RUN_FILE
    if not run.is_file():
        check_new_folder(output)
        return set(), []
    try:
        old = json.loads(run.read_text(encoding="utf-8"))
    except ValueError:
        raise RecomposerError("output", f"{run} is not valid JSON; choose a new folder") from None
    for key, value in settings.items():
        if old.get(key) != value:
            raise RecomposerError(key, f"was {old.get(key)!r} in the run in {output}, now {value!r}; resume with the "
                                       "same or choose a new folder")
    done, lines = set(), []
    path = output / "metadata.jsonl"
    for line in (path.read_text(encoding="utf-8").splitlines(keepends=True) if path.is_file() else []):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and isinstance(record, dict) and isinstance(record.get("index"), int):
            done.add(record["index"])
            lines.append(line)
    return done, lines


def _begin(output: Path, settings: dict, lines: list[str]) -> None:
    """The folder as a run in progress: its settings, and its metadata as the finished pairs alone."""
    from ..io.files import atomic_write

    (output / "images").mkdir(parents=True, exist_ok=True)
    atomic_write(output / RUN_FILE, lambda f: f.write((json.dumps(settings, indent=2) + "\n").encode()))
    atomic_write(output / "metadata.jsonl", lambda f: f.write("".join(lines).encode()))
