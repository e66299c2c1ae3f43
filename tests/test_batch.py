"""`recomposer batch`: a file of task requests (the API's job JSON) checked before anything runs, run with
provenance, resumed by content, and split across two processes under `accelerate launch`."""

import json
import os
import subprocess
import sys

import pytest

from recomposer.cli import main
from recomposer.provenance import read_provenance


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def jobs(tmp_path, tiny_dir, photo):
    photo.save(tmp_path / "photo.png")
    mask = photo.convert("L").point(lambda p: 255 if p > 120 else 0)
    mask.save(tmp_path / "mask.png")
    lines = [{"task": "generate", "request": {"prompt": "a red circle", "steps": 2, "seed": 1}, "model": str(tiny_dir)},
             {"task": "generate", "request": {"prompt": "a cat", "steps": 2, "strength": 0.5},
              "inputs": {"image": "photo.png"}, "model": str(tiny_dir)},
             {"task": "composite", "request": {"steps": 2, "resamples": 0}, "model": str(tiny_dir),
              "inputs": {"background": "photo.png", "mask": "mask.png"}},
             {"task": "p2p", "request": {"source": "a red cat", "edited": "a blue cat", "steps": 2},
              "model": str(tiny_dir)}]
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path, lines


def test_a_batch_runs_with_provenance_and_resumes_by_content(capsys, tmp_path, jobs):
    path, lines = jobs
    code, out, err = run(capsys, "batch", path, "-o", tmp_path / "out")
    assert code == 0, err
    folders = sorted((tmp_path / "out").iterdir())
    assert len(folders) == 4 and all((f / "job.json").is_file() for f in folders)
    record = json.loads((folders[0] / "job.json").read_text())
    assert read_provenance(folders[0] / record["files"][0])["task"] == "generate"
    assert read_provenance(folders[2] / json.loads((folders[2] / "job.json").read_text())["files"][0])["task"] \
        == "composite"
    code, out, err = run(capsys, "batch", path, "-o", tmp_path / "out")
    assert code == 0 and "job " not in err, err  # everything finished: nothing runs again
    lines[0]["request"]["seed"] = 2  # an edited job is another job
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, out, err = run(capsys, "batch", path, "-o", tmp_path / "out")
    assert code == 0 and err.count("job ") == 1 and "job 1/4" in err, err


def test_a_job_that_fails_fails_alone_and_runs_again_next_time(capsys, tmp_path, jobs):
    path, lines = jobs
    bad = {"task": "p2p", "request": {"source": "a red cat", "edited": "a cat", "steps": 2}, "model": lines[0]["model"]}
    path.write_text(json.dumps(bad) + "\n" + json.dumps(lines[0]) + "\n")  # (word counts: neither swap nor refine)
    code, out, err = run(capsys, "batch", path, "-o", tmp_path / "out")
    assert code != 0 and "job 1/2 failed: edited:" in err and "job 2/2: " in err, err
    assert "1 job(s) failed (jobs 1" in err
    code, out, err = run(capsys, "batch", path, "-o", tmp_path / "out")
    assert code != 0 and "job 1/2 failed" in err and "job 2/2" not in err  # the finished one is not run again


@pytest.mark.parametrize("line, field", [
    ({"task": "paint"}, "line 2.task"),
    ({"task": "generate", "request": {"prompt": "x", "stepz": 2}}, "line 2.request"),
    ({"task": "instruct", "request": {"instruction": "x"}}, "line 2.inputs"),
    ({"task": "composite", "inputs": {"background": "nope.png", "mask": "mask.png"}}, "line 2.inputs.background"),
])
def test_a_bad_line_stops_the_batch_before_anything_runs(capsys, tmp_path, jobs, line, field):
    path, lines = jobs
    path.write_text(json.dumps(lines[0]) + "\n" + json.dumps(line) + "\n")
    code, out, err = run(capsys, "batch", path, "-o", tmp_path / "out")
    assert code != 0 and field in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_two_processes_share_the_batch(tmp_path, jobs):
    path, _ = jobs
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # (accelerate's --cpu means one process; --multi_gpu on a machine without GPUs runs gloo processes on the CPU)
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "recomposer", "batch", str(path), "-o", str(tmp_path / "out"), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads((f / "job.json").read_text()) for f in sorted((tmp_path / "out").iterdir())]
    assert len(records) == 4 and {r["process"] for r in records} == {0, 1}
