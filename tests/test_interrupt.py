"""Ctrl-C while a command works (issue 15, item 1): every long command stops between two steps, prints
``cancelled``, exits 130 and leaves no output behind. Each runs as a real process whose stderr is a terminal
(a pseudo-terminal), so it shows its progress bars; the signal is sent once its bar for the long stage shows."""

import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from recomposer.cli import Terminated, main


def interrupted(args, stage: bytes, cwd) -> tuple[int, str]:
    """Run ``recomposer ARGS``, send SIGINT once ``stage`` shows on its terminal, and return (exit code, stderr)."""
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "recomposer", *map(str, args)], stdout=subprocess.DEVNULL,
                               stderr=slave, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as at a terminal,
    # even when the tests run in a background job (its shell starts it with SIGINT ignored; children inherit that)
    os.close(slave)
    seen, deadline = b"", time.monotonic() + 180
    try:
        while stage not in seen:
            assert process.poll() is None, seen.decode(errors="replace")
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            if select.select([master], [], [], 0.1)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:  # the terminal closed: the process ended before its long stage
                    process.wait(timeout=60)
                    raise AssertionError(f"exited {process.returncode} before {stage!r}: {seen.decode(errors='replace')}")
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    return code, seen.decode(errors="replace")


@pytest.fixture
def inputs(tmp_path):
    from recomposer.world.dataset import make_sample

    Image.fromarray(make_sample(1, size=64).rendered.image).save(tmp_path / "a.png")
    Image.fromarray(make_sample(2, size=64).rendered.image).save(tmp_path / "b.png")
    Image.fromarray(make_sample(3, size=2048).rendered.image).save(tmp_path / "big.png")  # seconds to decompose
    return tmp_path


COMMANDS = {  # each long enough that the signal lands inside its long stage
    "generate": (["generate", "a red circle", "--steps", 1000, "--seed", 0, "-o", "out/"], b"sampling"),
    "compose": (["compose", "--caption", "a red circle", "--steps", 1000, "--seed", 0, "-o", "out/"], b"sampling"),
    "interpolate": (["interpolate", "a.png", "b.png", "--steps", 1000, "--seed", 0, "-o", "out/"], b"sampling"),
    "decompose": (["decompose", "big.png", "-o", "out/", "--caption", "x"], b"decomposing"),
    "train": (["train", "vae", "-o", "out", "--steps", 100000, "--sample-every", 0], b"training"),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_ctrl_c_says_cancelled_exits_130_and_leaves_nothing(inputs, name):
    args, stage = COMMANDS[name]
    code, err = interrupted(args, stage, inputs)
    assert code == 130, err
    assert "cancelled" in err and "Traceback" not in err, err
    if name != "train":  # a training run keeps its checkpoints by design; an image command writes nothing
        assert not (inputs / "out").exists() or not any((inputs / "out").iterdir())


class _SignalInClassCreation:
    """A descriptor whose ``__set_name__`` is where the signal lands: Python 3.11 re-raises what it raises as
    ``RuntimeError: Error calling __set_name__`` (caused by it), as when Ctrl-C hits an import."""

    def __init__(self, signal_error: BaseException):
        self.signal_error = signal_error

    def __set_name__(self, owner, name):
        raise self.signal_error


@pytest.mark.parametrize(("signal_error", "code", "word"), [(KeyboardInterrupt, 130, "cancelled"),
                                                            (Terminated, 143, "terminated")])
def test_a_signal_that_python_re_raised_as_another_error_is_still_a_cancel(tmp_path, monkeypatch, capsys,
                                                                           signal_error, code, word):
    from recomposer.commands import world

    def write_folder(folder, files):
        type("Imported", (), {"attribute": _SignalInClassCreation(signal_error())})

    monkeypatch.setattr(world, "write_folder", write_folder)
    assert main(["world", "sample", "5", "-o", str(tmp_path / "scene"), "--size", "64"]) == code
    err = capsys.readouterr().err
    assert err.strip() == word and not (tmp_path / "scene").exists()


def test_an_error_with_no_signal_behind_it_still_shows_its_traceback(tmp_path, monkeypatch):
    from recomposer.commands import world

    def write_folder(folder, files):
        raise RuntimeError("a bug")

    monkeypatch.setattr(world, "write_folder", write_folder)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["world", "sample", "5", "-o", str(tmp_path / "scene"), "--size", "64"])
