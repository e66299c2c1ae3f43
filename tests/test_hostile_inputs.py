import torch; torch.set_num_threads(1)  # noqa: E702

# What a hostile-input probe found (issue 12), one class per section, each through the real CLI in a
# subprocess where the behaviour is the process's (prompts, imports, signals, files left behind), and
# in-process where a spy must see inside. Every subprocess run must end in one line on stderr, never a
# traceback, and never import, run or unpickle anything a model folder or a PNG brings.

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from safetensors.torch import load_file, save_file
from test_weights_safety import hostile_pickle, hostile_zip

from recomposer.cli import main

SRC = Path(__file__).resolve().parents[1] / "src" / "recomposer"
UNET = "unet/diffusion_pytorch_model.safetensors"
TEXT = "text_encoder/model.safetensors"


def cli(*args, cwd=None, stdin="", env=None, timeout=300):
    """`python -m recomposer ARGS` in a fresh process: (exit code, stdout, stderr)."""
    result = subprocess.run([sys.executable, "-m", "recomposer", *map(str, args)], cwd=cwd, input=stdin,
                            capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    return result.returncode, result.stdout, result.stderr


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def model(tiny_dir, tmp_path) -> Path:
    """A fresh copy of the tiny SD directory, to break."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "model"))


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    from ldm_checkpoint import write_ldm_checkpoint

    from recomposer.models.tiny import tiny_sd

    return write_ldm_checkpoint(tiny_sd(), tmp_path / "model.safetensors")


@pytest.fixture
def unpickler_spy(monkeypatch):
    """Records every call that reaches torch's unpicklers (torch.load's insides), whatever calls them."""
    import torch.serialization as ts

    calls = []
    for name in ("_load", "_legacy_load"):
        original = getattr(ts, name)
        monkeypatch.setattr(ts, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    return calls


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- 1. no code from a model folder, no prompt

def _automap(folder: Path, config: str, canary: Path) -> None:
    data = json.loads((folder / config).read_text())
    data.pop("tokenizer_class", None)  # what makes transformers go looking for the auto_map
    data["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None], "AutoModel": "evil.EvilModel"}
    (folder / config).write_text(json.dumps(data))
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(canary)!r}).touch()\n"
                                    "from transformers import CLIPTokenizer as EvilTokenizer\n")


@pytest.mark.parametrize("config", ["tokenizer/tokenizer_config.json", "text_encoder/config.json"])
def test_auto_map_is_refused_without_a_prompt_even_when_answered_yes(model, tmp_path, config):
    canary = tmp_path / "canary"
    _automap(model / Path(config).parent, Path(config).name, canary)
    code, out, err = cli("generate", "x", "--model", model, "--steps", 1, "-o", tmp_path / "o.png", stdin="y\ny\n")
    line = one_line(err)
    assert code == 2 and "custom code" in line and "auto_map" in line and config in line
    assert "[y/N]" not in out + err and not canary.exists() and not (tmp_path / "o.png").exists()


def test_auto_map_in_a_learned_backend_folder_is_refused(tmp_path, capsys):
    from recomposer.decompose.depth import TransformersDepth
    from recomposer.errors import UnsafeFile

    folder = tmp_path / "depth"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "dpt", "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(UnsafeFile, match="custom code"):
        TransformersDepth(folder)


def _index_naming(folder: Path, component: str, pair: list) -> None:
    index = json.loads((folder / "model_index.json").read_text())
    index[component] = pair
    (folder / "model_index.json").write_text(json.dumps(index))


def test_model_index_naming_a_module_beside_it_is_refused_unimported(model, tmp_path):
    canary = tmp_path / "canary"
    (model / "evilmod.py").write_text(f"import pathlib\npathlib.Path({str(canary)!r}).touch()\n")
    _index_naming(model, "unet", ["evilmod", "UNet2DConditionModel"])
    # run from inside the folder, so that the module is importable (sys.path[0] is the working folder)
    code, out, err = cli("generate", "x", "--model", ".", "--steps", 1, "-o", tmp_path / "o.png", cwd=model)
    line = one_line(err)
    assert code == 2 and "evilmod" in line and "unet" in line and "allowed" in line
    assert not canary.exists()


def test_model_index_naming_an_installed_module_is_refused_unimported(model, checkpoint, tmp_path):
    _index_naming(model, "text_encoder", ["this", "CLIPTextModel"])  # `import this` prints the Zen of Python
    for args in (("--model", model), ("--model", checkpoint, "--config", model)):
        code, out, err = cli("generate", "x", *args, "--steps", 1, "-o", tmp_path / "o.png")
        assert code == 2 and "'this'" in one_line(err) and "Beautiful is better" not in out + err


def test_custom_pipeline_class_is_refused(model, capsys):
    index = json.loads((model / "model_index.json").read_text())
    index["_class_name"] = ["pipeline", "MyPipeline"]
    (model / "model_index.json").write_text(json.dumps(index))
    code, out, err = run(capsys, "generate", "x", "--model", model, "--steps", 1, "-o", model / "o.png")
    assert code == 2 and "custom pipeline" in one_line(err)


# ---------------------------------------------------------------- 2. no unpickler is ever reached

def _shard(folder: Path, stem: str, target: str, payload: bytes | None) -> None:
    """Replace ``folder/stem.safetensors`` by an index mapping every tensor to ``target`` (holding ``payload``)."""
    weights = folder / f"{stem}.safetensors"
    state = load_file(weights)
    weights.unlink()
    if payload is not None:
        path = Path(target) if Path(target).is_absolute() else folder / target
        path.write_bytes(payload)
    index = {"metadata": {}, "weight_map": {name: target for name in state}}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index))


def _torch_pickle(folder_weights: Path) -> bytes:
    """A real torch.save of the folder's own tensors: loading it would succeed (what the probe exploited)."""
    import io

    buffer = io.BytesIO()
    torch.save(load_file(folder_weights), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("component,stem", [("unet", "diffusion_pytorch_model"), ("text_encoder", "model")])
@pytest.mark.parametrize("target", ["w.dat", "w.bin", "../../outside.bin", "ABSOLUTE"])
def test_shard_index_pointing_at_a_pickle_is_refused(model, tmp_path, capsys, unpickler_spy, component, stem, target):
    folder = model / component
    payload = _torch_pickle(folder / f"{stem}.safetensors")
    target = str(tmp_path / "abs.bin") if target == "ABSOLUTE" else target
    if target.startswith(".."):
        (model.parent / "outside.bin").write_bytes(payload)
        payload = None
    _shard(folder, stem, target, payload)
    code, out, err = run(capsys, "generate", "x", "--model", model, "--steps", 1, "-o", tmp_path / "o.png")
    line = one_line(err)
    assert code == 2 and ("outside its folder" in line or ".safetensors shards only" in line), line
    assert unpickler_spy == [] and not (tmp_path / "o.png").exists()


def test_shard_renamed_safetensors_holding_a_pickle_is_refused_by_its_bytes(model, tmp_path, capsys, unpickler_spy):
    canary = tmp_path / "canary"
    _shard(model / "unet", "diffusion_pytorch_model", "w.safetensors", hostile_pickle(canary))
    code, out, err = run(capsys, "generate", "x", "--model", model, "--steps", 1, "-o", tmp_path / "o.png")
    assert code == 2 and "pickle" in one_line(err) and unpickler_spy == [] and not canary.exists()


def test_depth_model_shard_pointing_at_a_pickle_is_refused(tmp_path, unpickler_spy):
    from recomposer.decompose.depth import TransformersDepth
    from recomposer.errors import UnsafeFile

    folder = tmp_path / "depth"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "dpt"}))
    save_file({"w": torch.zeros(2)}, folder / "model.safetensors")
    _shard(folder, "model", "w.bin", _torch_pickle(folder / "model.safetensors"))
    with pytest.raises(UnsafeFile, match="shards only"):
        TransformersDepth(folder)
    assert unpickler_spy == []


@pytest.mark.parametrize("name,kind", [("unet/diffusion_pytorch_model.bin", "pickle"),
                                       ("unet/diffusion_pytorch_model.bin", "zip"),
                                       ("vae/diffusion_pytorch_model.bin", "pickle"),
                                       ("text_encoder/pytorch_model.bin", "zip")])
def test_pickles_under_the_libraries_own_names_are_one_line(model, tmp_path, capsys, unpickler_spy, name, kind):
    canary = tmp_path / "canary"
    safe = "model.safetensors" if name.startswith("text_encoder") else "diffusion_pytorch_model.safetensors"
    (model / Path(name).parent / safe).unlink()
    (model / name).write_bytes(hostile_pickle(canary) if kind == "pickle" else hostile_zip(canary))
    code, out, err = run(capsys, "generate", "x", "--model", model, "--steps", 1, "-o", tmp_path / "o.png")
    line = one_line(err)
    assert code == 2 and "pickle-format" in line and Path(name).name in line
    assert unpickler_spy == [] and not canary.exists()


def test_safetensors_named_ckpt_loads_by_its_bytes_never_by_torch_load(checkpoint, model, tmp_path, capsys,
                                                                       unpickler_spy):
    ckpt = checkpoint.rename(checkpoint.with_suffix(".ckpt"))
    code, out, err = run(capsys, "generate", "x", "--model", ckpt, "--config", model, "--steps", 1, "-o",
                         tmp_path / "o.png")
    assert code == 0, err
    assert unpickler_spy == []


def test_config_folder_weights_are_never_read(checkpoint, model, tmp_path, capsys, unpickler_spy):
    canary = tmp_path / "canary"
    for weights in (UNET, TEXT, "vae/diffusion_pytorch_model.safetensors"):
        (model / weights).unlink()
    (model / "text_encoder" / "pytorch_model.bin").write_bytes(hostile_pickle(canary))
    (model / "unet" / "diffusion_pytorch_model.bin").write_bytes(hostile_zip(canary))
    code, out, err = run(capsys, "generate", "x", "--model", checkpoint, "--config", model, "--steps", 1, "-o",
                         tmp_path / "o.png")
    assert code == 0, err  # the configs are read; the weights all come from the checkpoint
    assert unpickler_spy == [] and not canary.exists()


def test_the_guard_refuses_an_unpickling_that_the_checks_would_miss(model, tmp_path, monkeypatch, unpickler_spy):
    from recomposer.errors import UnsafeFile
    from recomposer.models import library
    from recomposer.models.loading import load_diffusers_dir

    _shard(model / "unet", "diffusion_pytorch_model", "w.dat", _torch_pickle(model / UNET))
    monkeypatch.setattr(library, "checked_weights", lambda *args: [])  # as if a check were forgotten
    with pytest.raises(UnsafeFile, match="never unpickles"):
        load_diffusers_dir(model, torch.device("cpu"), torch.float32)
    assert unpickler_spy == []
    assert torch.load.__module__ == "torch.serialization"  # the guard is lifted afterwards


# ---------------------------------------------------------------- 2a + 3. provenance is untrusted input

@pytest.fixture
def made(tiny_dir, tmp_path, capsys) -> Path:
    code, out, err = run(capsys, "generate", "a cat", "--model", tiny_dir, "--steps", 1, "--seed", 3, "-o",
                         tmp_path / "made.png")
    assert code == 0, err
    return tmp_path / "made.png"


def _forge(png: Path, chunk: str, target: Path) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("recomposer", chunk)
    Image.open(png).save(target, pnginfo=info)
    return target


def _record(png: Path) -> dict:
    return json.loads(Image.open(png).text["recomposer"])


FORGERIES = {
    "list": lambda r: json.dumps([r]), "string": lambda r: json.dumps("x"), "null": lambda r: "null",
    "deep": lambda r: "[" * 50_000 + "]" * 50_000, "not json": lambda r: "{oops",
    "missing key": lambda r: json.dumps({k: v for k, v in r.items() if k != "model"}),
    "extra option": lambda r: json.dumps({**r, "invocation": {**r["invocation"],
                                                               "options": {**r["invocation"]["options"], "zzz": 1}}}),
    "unknown command": lambda r: json.dumps({**r, "invocation": {**r["invocation"], "command": "rm"}}),
    "options not an object": lambda r: json.dumps({**r, "invocation": {**r["invocation"], "options": [1]}}),
    "changed input": lambda r: json.dumps({**r, "invocation": {**r["invocation"], "inputs": {
        "model": {"path": r["invocation"]["options"]["model"], "sha256": "0" * 64}}}}),
    "legacy extra parameter": lambda r: json.dumps({**{k: v for k, v in r.items() if k != "invocation"},
                                                    "params": {**r["params"], "zzz": 1}}),
    "batch index 99": lambda r: json.dumps({**r, "batch_index": 99}),
    "batch index x": lambda r: json.dumps({**r, "batch_index": "x"}),
    "unknown model kind": lambda r: json.dumps({**r, "model": {**r["model"], "kind": "alien"}}),
    "model is a list": lambda r: json.dumps({**r, "model": [1]}),
    "bad steps": lambda r: json.dumps({**r, "invocation": {**r["invocation"],
                                                           "options": {**r["invocation"]["options"], "steps": "many"}}}),
    "input without hash": lambda r: json.dumps({**r, "inputs": {"image": {"path": "/etc/passwd"}}}),
}


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_forged_provenance_is_one_line(made, tmp_path, capsys, case):
    forged = _forge(made, FORGERIES[case](_record(made)), tmp_path / "forged.png")
    code, out, err = run(capsys, "recall", forged, "-o", tmp_path / "again.png")
    assert code == 2 and one_line(err) and not (tmp_path / "again.png").exists()


@pytest.mark.parametrize("layout", ["bin", "dat index"])
def test_provenance_pointing_at_a_pickled_model_is_refused(made, model, tmp_path, capsys, unpickler_spy, layout):
    if layout == "bin":
        payload = _torch_pickle(model / UNET)
        (model / UNET).unlink()
        (model / "unet" / "diffusion_pytorch_model.bin").write_bytes(payload)
    else:
        _shard(model / "unet", "diffusion_pytorch_model", "w.dat", _torch_pickle(model / UNET))
    record = _record(made)
    record["model"]["path"] = str(model)
    record["invocation"]["options"]["model"] = str(model)
    record["invocation"]["inputs"] = {}
    forged = _forge(made, json.dumps(record), tmp_path / "forged.png")
    code, out, err = run(capsys, "recall", forged, "-o", tmp_path / "again.png")
    assert code == 2 and ("pickle" in one_line(err) or "shards only" in err) and unpickler_spy == []


def test_recall_from_another_folder_finds_the_model(tiny_dir, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    local = Path(shutil.copytree(tiny_dir, tmp_path / "a" / "m"))
    code, out, err = cli("generate", "x", "--model", "m", "--steps", 1, "--seed", 1, "-o", "x.png", cwd=tmp_path / "a")
    assert code == 0, err
    assert _record(tmp_path / "a" / "x.png")["model"]["path"] == str(local.resolve())
    code, out, err = cli("recall", tmp_path / "a" / "x.png", "-o", "y.png", cwd=tmp_path / "b")
    assert code == 0 and "identical pixels" in out, err


# ---------------------------------------------------------------- 4. malformed weights are one line

def test_float8_nan_weights_are_one_line(model, tmp_path, capsys):
    state = load_file(model / UNET)
    name = next(k for k in state if k.endswith("weight") and state[k].ndim == 4)
    state[name] = torch.full(state[name].shape, float("nan")).to(torch.float8_e4m3fn)
    save_file(state, model / UNET)
    code, out, err = run(capsys, "generate", "x", "--model", model, "--steps", 1, "-o", tmp_path / "o.png")
    assert code == 2 and "NaN" in one_line(err)


@pytest.fixture
def parts(tmp_path) -> Path:
    from recomposer.models.bundled import WEIGHTS

    return Path(shutil.copytree(WEIGHTS, tmp_path / "parts"))


@pytest.mark.parametrize("case", ["vae list", "vae no scale", "composer no config", "composer list config",
                                  "composer absurd", "composer wrong shape", "unet json truncated"])
def test_malformed_parts_are_one_line(parts, tmp_path, capsys, case):
    edit = {
        "vae list": ("vae.json", lambda d: [d]),
        "vae no scale": ("vae.json", lambda d: {k: v for k, v in d.items() if k != "scaling_factor"}),
        "composer no config": ("composer.json", lambda d: {"steps": 1}),
        "composer list config": ("composer.json", lambda d: {"config": [1, 2]}),
        "composer absurd": ("composer.json", lambda d: {"config": {**d["config"], "palette_dim": 8192,
                                                                   "tokens_per_global": 64,
                                                                   "cross_attention_dim": 8192}}),
    }
    if case in edit:
        name, change = edit[case]
        data = change(json.loads((parts / name).read_text()))
        if isinstance(data, dict):
            data.pop("weights_sha256", None)
        (parts / name).write_text(json.dumps(data))
    elif case == "composer wrong shape":
        state = load_file(parts / "composer.safetensors")
        key = sorted(state)[0]
        state[key] = torch.zeros(3, 3, dtype=torch.float16)
        save_file(state, parts / "composer.safetensors")
        data = json.loads((parts / "composer.json").read_text())
        data.pop("weights_sha256", None)
        (parts / "composer.json").write_text(json.dumps(data))
    else:
        (parts / "unet.json").write_text('{"steps": 4')
    started = time.perf_counter()
    code, out, err = run(capsys, "compose", "--caption", "a red circle", "--model", parts, "--steps", 1, "-o",
                         tmp_path / "out")
    assert code == 2 and one_line(err), err
    assert time.perf_counter() - started < 60 and not (tmp_path / "out").exists()


def test_a_part_cut_off_between_its_two_files_is_refused(parts, tmp_path):
    from recomposer.errors import ModelError
    from recomposer.models.bundled import load_bundled_backbone, new_vae, write_part

    write_part(new_vae(1), "vae", parts, {"scaling_factor": 0.5})
    load_bundled_backbone(torch.device("cpu"), torch.float32, parts)  # a whole write loads
    (parts / "vae.safetensors").write_bytes((parts / "unet.safetensors").read_bytes())  # new weights, old JSON
    with pytest.raises(ModelError, match="cut short"):
        load_bundled_backbone(torch.device("cpu"), torch.float32, parts)


# ---------------------------------------------------------------- 5. no flat image is ever saved

@pytest.fixture
def flat_model(model) -> Path:
    state = load_file(model / "vae/diffusion_pytorch_model.safetensors")
    for name in state:
        if name.startswith("decoder.conv_out"):
            state[name].zero_()
    save_file(state, model / "vae/diffusion_pytorch_model.safetensors")
    return model


def test_a_flat_image_is_an_error_unless_asked_for(flat_model, tmp_path):
    code, out, err = cli("generate", "x", "--model", flat_model, "--steps", 1, "-o", tmp_path / "o.png")
    assert code == 2 and "flat colour" in one_line(err) and "--allow-flat" in err
    assert list(tmp_path.glob("*.png")) == []
    code, out, err = cli("generate", "x", "--model", flat_model, "--steps", 1, "--allow-flat", "-o", tmp_path / "o.png")
    assert code == 0 and (tmp_path / "o.png").exists(), err


# ---------------------------------------------------------------- 6. kills leave nothing behind

def default_sigint() -> None:
    """In the child: Ctrl-C does what it does at a terminal, even when these tests run in a background job
    (whose shell starts it with SIGINT ignored, which a child would inherit)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _start_and_catch_writing(args, folder: Path) -> subprocess.Popen:
    """Start the CLI, and return once a temp file or folder of its writing appears in ``folder``."""
    process = subprocess.Popen([sys.executable, "-m", "recomposer", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 240
    while not _temps(folder):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_write_leaves_no_temp(tmp_path, signum):
    process = _start_and_catch_writing(["world", "sample", 5, "-o", tmp_path / "scene", "--size", 2048], tmp_path)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode in (130, 143) and "Traceback" not in err, err
    assert _temps(tmp_path) == [] and not (tmp_path / "scene").exists()


def test_a_kill_during_a_write_is_cleaned_by_the_next_run(tmp_path):
    process = _start_and_catch_writing(["world", "sample", 5, "-o", tmp_path / "scene", "--size", 2048], tmp_path)
    process.kill()
    process.wait()
    assert _temps(tmp_path) != []  # SIGKILL: nothing can clean up
    code, out, err = cli("world", "sample", 6, "-o", tmp_path / "other", "--size", 32)
    assert code == 0, err
    assert _temps(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_a_live_writers_temp_is_left_alone(tmp_path):
    from recomposer.io.files import remove_stale_temps

    live = tmp_path / f".x.png.{os.getpid()}.abc.tmp"
    dead = tmp_path / ".x.png.999999999.abc.tmp"
    live.touch()
    dead.touch()
    remove_stale_temps(tmp_path)
    assert live.exists() and not dead.exists()


def test_folder_writes_fsync_every_file(tmp_path, monkeypatch):
    from recomposer.io.files import write_folder

    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_folder(tmp_path / "out", {"a.txt": "text", "b.png": Image.new("RGB", (4, 4)),
                                    "c": lambda folder: (folder / "c.json").write_text("{}")})
    names = {Path(p).name for p in synced}
    assert {"a.txt", "b.png", "c.json"} <= names


# ---------------------------------------------------------------- 7. one training run per folder

def test_a_second_training_run_into_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    args = ["train", "vae", "-o", out, "--steps", 100000, "--batch-size", 2, "--sample-every", 0, "--cpu"]
    first = subprocess.Popen([sys.executable, "-m", "recomposer", *map(str, args)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / ".lock").is_file() or not (out / ".lock").read_text().strip():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        code, _, err = cli(*args)
        assert code == 2 and "in use by another training run" in one_line(err) and str(first.pid) in err
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    from recomposer.training.lock import run_lock

    with run_lock(out):  # the lock ended with its holder
        pass


def test_the_lock_is_refused_in_process_too_and_released_after(tmp_path):
    from recomposer.errors import RecomposerError
    from recomposer.training.lock import release, run_lock

    code = ("import sys, time; from recomposer.training.lock import acquire; acquire(sys.argv[1]); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RecomposerError, match=f"process {holder.pid}"):
            with run_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path):
        pass
    release(tmp_path)


# ---------------------------------------------------------------- 8. hygiene

def test_commands_leave_nothing_in_the_system_temp_folder(tiny_dir, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code, out, err = cli("generate", "x", "--model", tiny_dir, "--steps", 1, "-o", tmp_path / "o.png",
                         env={"TMPDIR": str(tmp)})
    assert code == 0, err
    assert list(tmp.iterdir()) == []


def test_files_follow_the_users_umask(tmp_path):
    code = ("import os, sys; os.umask(0o077); from recomposer.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "train", "vae", "-o", str(tmp_path / "run"), "--steps", "1",
                             "--batch-size", "2", "--sample-every", "0", "--cpu"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    written = [p for p in (tmp_path / "run").rglob("*") if p.name != ".lock"]
    assert len(written) > 5
    loose = [str(p) for p in written if p.stat().st_mode & 0o077]
    assert loose == []


def test_a_run_that_cannot_fit_in_memory_is_refused_before_it_starts(tiny_dir, tmp_path, capsys, monkeypatch):
    import recomposer.models.memory as memory
    import recomposer.tasks.run as run_module

    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)  # a machine with 1 MiB free
    monkeypatch.setattr(run_module, "sample", lambda *a, **k: pytest.fail("sampling started"))
    code, out, err = run(capsys, "generate", "x", "--model", tiny_dir, "--steps", 1, "--width", 512, "--height",
                         512, "-o", tmp_path / "o.png")
    line = one_line(err)
    assert code == 2 and "GiB" in line and "size" in line


def test_out_of_memory_during_a_run_is_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    import recomposer.tasks.run as run_module

    def oom(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 8589934592 bytes")

    monkeypatch.setattr(run_module, "sample", oom)
    code, out, err = run(capsys, "generate", "x", "--model", tiny_dir, "--steps", 1, "-o", tmp_path / "o.png")
    assert code == 1 and "out of memory" in one_line(err) and not (tmp_path / "o.png").exists()


# ---------------------------------------------------------------- keeping them out for good (static checks)

def _source_lines():
    for path in sorted(SRC.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            yield path.relative_to(SRC).as_posix(), number, line


def test_only_the_library_door_calls_the_libraries_loaders():
    pattern = re.compile(r"\.(from_pretrained|from_single_file)\s*[(,]|"
                         r"create_diffusers_clip_model_from_ldm\s*[(,]")
    hits = [f"{path}:{n}" for path, n, line in _source_lines() if pattern.search(line) and path != "models/library.py"]
    assert hits == []


def test_every_library_load_in_the_door_is_guarded():
    door = (SRC / "models" / "library.py").read_text()
    calls = re.findall(r".*(?:from_pretrained|from_single_file|create_diffusers_clip_model_from_ldm)\b.*", door)
    loads = [line for line in calls if not line.lstrip().startswith(("#", "Nothing", "from diffusers"))
             and "``" not in line]
    assert loads and all("guarded(" in line for line in loads), loads


def test_remote_code_is_never_trusted():
    hits = [f"{path}:{n}" for path, n, line in _source_lines() if re.search(r"trust_remote_code\s*=\s*True", line)]
    assert hits == []
