"""`recomposer batch REQUESTS.jsonl -o OUT/`: any list of task requests (the API's job JSON, tasks/registry.py), run
resumably, and split across processes, GPUs and nodes under `accelerate launch`.

    recomposer batch jobs.jsonl -o out/
    accelerate launch --multi_gpu --num_processes 2 -m recomposer batch jobs.jsonl -o out/   # (CPUs too: gloo)

Every line is checked before anything loads. Job k's files go to OUT/NNNNN-<hash>/ (images with their provenance),
the folder written whole with its ``job.json`` (io/files.write_folder): a job whose folder exists is finished, and a
re-run skips it (the hash is the job's content: task, request, model and the bytes of its inputs, so an edited line
or input runs again). Under accelerate, process r takes its share of the unfinished jobs
(``PartialState.split_between_processes``).
"""

import json
from pathlib import Path
from typing import Annotated

import typer

from .options import Device, Dtype


def batch_command(
    requests: Annotated[Path, typer.Argument(help="A JSONL file: one job per line, {task, request, inputs, "
                                                  "model} (inputs relative to the file's folder).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="A folder (new, or one an earlier batch of these "
                                                                "jobs wrote: finished jobs are skipped).")],
    device: Device = "auto", dtype: Dtype = "fp32",
) -> None:
    """Run a file of task requests, resumably; under `accelerate launch`, split across processes."""
    from ..errors import InvalidParameter
    from ..requests import readable
    from ..tasks.registry import parse_job

    readable("requests", requests)
    if output.exists() and not output.is_dir():
        raise InvalidParameter("output", "a folder", str(output))
    jobs = []
    for number, line in enumerate(requests.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            raise InvalidParameter("requests", f"JSON objects, one per line (line {number} is not JSON)",
                                   line[:60]) from None
        jobs.append(parse_job(data, f"line {number}", requests.parent))
    if not jobs:
        raise InvalidParameter("requests", "at least one job", str(requests))
    folders = [output / f"{k:05d}-{job.digest()[:16]}" for k, job in enumerate(jobs)]
    todo = [k for k, folder in enumerate(folders) if not (folder / "job.json").is_file()]

    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    run_device = str(state.device) if device == "auto" else device  # (each process its own GPU)
    with state.split_between_processes(todo) as mine:
        failed = _run(jobs, folders, list(mine), run_device, dtype, state.process_index)
    state.wait_for_everyone()
    if state.is_main_process:
        typer.echo(str(output))
    if failed:  # every other job ran; these run again on the next run of the batch
        from ..errors import RecomposerError

        raise RecomposerError("requests", f"{len(failed)} job(s) failed (jobs {', '.join(map(str, failed))} in the "
                                          "file's order; each said why above); a re-run of the batch retries them")


def _run(jobs, folders, mine: list[int], device: str, dtype: str, rank: int) -> list[int]:
    """Run this process's jobs; the numbers (1-based) of those that failed, each said on stderr."""
    import shutil

    from ..errors import RecomposerError
    from ..io.files import write_folder
    from ..tasks.registry import Models, job_files, run_job

    models, failed = Models(device, dtype), []
    for k in mine:
        folder = folders[k]
        if folder.exists():  # a job cut short before its job.json (an older batch): made again, whole
            shutil.rmtree(folder)
        try:
            files = job_files(run_job(jobs[k], models))
        except RecomposerError as e:  # one job's bad input or result fails that job, not the batch
            typer.echo(f"job {k + 1}/{len(jobs)} failed: {e}", err=True)
            failed.append(k + 1)
            continue
        record = {"index": k, "task": jobs[k].task, "digest": jobs[k].digest(), "process": rank,
                  "files": sorted(files)}
        write_folder(folder, {**files, "job.json": json.dumps(record, indent=2) + "\n"})  # all files or none
        typer.echo(f"job {k + 1}/{len(jobs)}: {folder}", err=True)
    return failed
