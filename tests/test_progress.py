import torch; torch.set_num_threads(1)  # noqa: E702

import io
import subprocess
import sys

import pytest

from recomposer.commands.terminal import Plain, progress_shown
from recomposer.models.facts import ModelShape, check_fits, peek
from recomposer.progress import listening, stage


def test_stages_cost_nothing_without_a_listener():
    with stage("sampling", total=3) as advance:
        advance(1)  # nobody listens: no output, no error


def test_off_a_terminal_a_few_plain_lines_and_a_summary(tiny_dir, tmp_path):
    """Through the real CLI: stderr is a pipe, so plain lines with no control codes, then one summary line."""
    done = subprocess.run([sys.executable, "-m", "recomposer", "generate", "a red circle", "--model", str(tiny_dir),
                           "--steps", "3", "--seed", "1", "-o", str(tmp_path / "a.png")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "\x1b" not in done.stderr and "\r" not in done.stderr
    assert lines[0].startswith("loading model: ") and lines[1].startswith("sampling: 3 steps in ")
    assert lines[-1].startswith("done in ") and "sampling" in lines[-1]


def test_a_failing_command_says_one_line_even_after_a_stage_ended():
    stream = io.StringIO()
    with pytest.raises(RuntimeError):
        with progress_shown(stream):
            with stage("loading model"):
                pass
            raise RuntimeError("later")
    assert stream.getvalue() == ""


def test_long_stages_report_their_count_and_eta():
    stream = io.StringIO()
    plain = Plain(stream, every=0.0)
    with listening(plain):
        with stage("training", total=10) as advance:
            for k in range(1, 4):
                advance(k, f"loss {k}")
    text = stream.getvalue()
    assert "training: 3/10" in text and "left" in text and "loss 3" in text


def test_a_stage_run_many_times_in_a_row_is_one_plain_line():
    stream = io.StringIO()
    plain = Plain(stream)
    with listening(plain):
        for _ in range(12):
            with stage("decomposing", total=6) as advance:
                advance(6, "blobs")
        with stage("sampling", total=4) as advance:
            advance(4)
    lines = plain.summary().splitlines()
    assert lines[0].startswith("decomposing: 12 runs, 72 steps in ") and lines[1].startswith("sampling: 4 steps in ")
    assert lines[2].startswith("done in ") and len(lines) == 3


def test_sizes_are_checked_from_the_configs_before_loading(tiny_dir, tmp_path):
    shape = peek(str(tiny_dir))
    assert shape is not None and shape.vae_factor == 2 and peek(str(tmp_path / "nothing")) is None
    bundled = peek(None)
    assert bundled.vae_factor == 4 and bundled.native_size == 64
    code = subprocess.run([sys.executable, "-m", "recomposer", "generate", "x", "--model", str(tiny_dir),
                           "--width", "33", "-o", str(tmp_path / "b.png")], capture_output=True, text=True,
                          timeout=300)
    assert code.returncode == 2 and code.stderr.strip() == "error: width: must be a multiple of 2 in [8, 4096] (got 33)"


def test_a_size_that_cannot_fit_is_refused_before_anything_loads(tmp_path):
    shape = ModelShape(8, 512, 128, 320)  # Stable Diffusion's VAE and UNet widths
    assert shape.memory(4096, 4096, 1, 2) > 30 * 2**30 > 2 * 2**30 > shape.memory(512, 512, 1, 2)
    with pytest.raises(Exception, match="size: .* 4096x4096 x 1 needs about .* GiB"):
        check_fits(shape, 4096, 4096, 1, 2, torch.device("cpu"), torch.float32)
    check_fits(shape, 64, 64, 1, 2, torch.device("cpu"), torch.float32)
    done = subprocess.run([sys.executable, "-m", "recomposer", "generate", "x", "--width", "2048", "--height",
                           "2048", "--batch", "64", "-o", str(tmp_path / "c.png")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: size: must be a size and batch that fit in memory")
    assert "loading model" not in done.stderr and not (tmp_path / "c.png").exists()


def test_a_run_with_a_time_limit_shows_the_limit_not_an_eta_to_its_steps(tmp_path):
    """--max-minutes with a huge --steps: the line counts steps and says when the limit stops the run; an ETA to
    --steps (thousands of hours) would be wrong."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from train_helper import batches, config, step_fn, tiny_model

    from recomposer.training import train

    stream = io.StringIO()
    with listening(Plain(stream, every=0.0)):
        train(config(tmp_path, steps=1_000_000, max_minutes=0.001), tiny_model(), step_fn, batches)
    text = stream.getvalue()
    assert "training: 1" in text and "--max-minutes stops it in" in text, text
    assert "/1000000" not in text and " h " not in text, text
