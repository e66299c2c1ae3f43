"""The ``recomposer`` command.

Every user error is one line on stderr (``error: FIELD: what is allowed``) and a non-zero exit,
with no traceback and no output file. Results are PNGs carrying their provenance, which
``recomposer recall`` turns back into the same pixels.
"""

import secrets
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from .commands import control
from .commands.batch import batch_command
from .commands.serve import serve_command
from .commands.bench import bench_app
from .commands.compose import COMMANDS as COMPOSER_COMMANDS
from .commands.composite import composite_command
from .commands.decompose import decompose_command
from .commands.options import Config, Device, Dtype, Model, RecordedDevice, model_option
from .commands.instruct import instruct_command
from .commands.p2p import COMMANDS as P2P_COMMANDS
from .commands.pairs import make_pairs_command
from .commands.visii import visii_command
from .commands.train import train_app
from .commands.world import world_app
from .errors import Cancelled, InvalidParameter, RecomposerError
from .invocation import recorded

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  rich_markup_mode=None, help="Decompose images into conditions; recompose any mix into new images.")

@app.callback(invoke_without_command=True)
def _options(
    record_paths: Annotated[bool, typer.Option("--record-paths", help="Record inputs' absolute paths in provenance "
                                                                      "(default: their names and hashes only).")]
    = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    from . import __version__
    from .invocation import record_paths as recording

    if version:
        typer.echo(f"recomposer {__version__}")
        raise typer.Exit(0)
    recording.set(record_paths)


app.add_typer(world_app, name="world")
app.add_typer(train_app, name="train")
app.add_typer(bench_app, name="bench")
app.command("decompose")(decompose_command)
app.command("make-pairs")(make_pairs_command)
app.command("batch")(batch_command)
app.command("serve")(serve_command)
app.command("visii")(visii_command)
REPLAYABLE: dict = {**COMPOSER_COMMANDS, **P2P_COMMANDS, "instruct": instruct_command,
                     "composite": composite_command}  # recall makes them again
for _name, _command in REPLAYABLE.items():
    app.command(_name)(recorded(_name, _command))



def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    negative: Annotated[str, typer.Option("--negative", "-n", help="Negative prompt.")] = "",
    model: Model = None,
    config: Config = None,
    scheduler: Annotated[str, typer.Option(help="ddim, ddpm, pndm, euler, euler_a, heun, dpmpp_2m, "
                                                "dpmpp_2m_karras, unipc.")] = "dpmpp_2m",
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 20,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale, 0 to 100.")] = 7.5,
    guidance_rescale: Annotated[float, typer.Option(help="Guidance rescale φ, 0 to 1, as diffusers' guidance_rescale "
                                                         "(Lin et al. 2024: 0.7; default 0: none).")] = 0.0,
    guidance_start: Annotated[float, typer.Option(help="Share of the steps before guidance starts (the prompt alone "
                                                       "before; default 0).")] = 0.0,
    guidance_end: Annotated[float, typer.Option(help="Share of the steps after which guidance stops (the prompt alone "
                                                     "after; default 1; Kynkäänniemi et al. 2024).")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the first image (image k uses seed + k); "
                                                     "default: random, recorded in the PNG.")] = None,
    width: Annotated[Optional[int], typer.Option(help="Image width (multiple of the VAE factor).")] = None,
    height: Annotated[Optional[int], typer.Option(help="Image height (multiple of the VAE factor).")] = None,
    batch: Annotated[int, typer.Option(help="Number of images.")] = 1,
    image: Annotated[Optional[Path], typer.Option(help="Start image (img2img; inpainting with --mask).")] = None,
    strength: Annotated[Optional[float], typer.Option(help="Share of the schedule re-run on --image, (0, 1].")] = None,
    mask: Annotated[Optional[Path], typer.Option(help="Inpainting mask, white = repaint; as big as --image.")] = None,
    device: Device = "auto",
    dtype: Dtype = "fp32",
    allow_flat: Annotated[bool, typer.Option("--allow-flat", help="Keep images of one flat colour (otherwise an "
                                                                  "error: the model drew nothing).")] = False,
    output: Annotated[Path, typer.Option("--output", "-o", help="A .png file, or a folder for numbered files.")]
    = Path("outputs"),
    controlnet: control.ControlNets = None,
    control_image: control.ControlImages = None,
    control_scale: control.ControlScales = None,
    control_start: control.ControlStarts = None,
    control_end: control.ControlEnds = None,
    control_mask: control.ControlMasks = None,
    control_mode: control.ControlModes = None,
    guess_mode: control.GuessMode = False,
) -> None:
    """Generate images from a prompt (text-to-image, img2img, inpainting), with any ControlNets."""
    from .requests import GenerateRequest, readable

    from .invocation import resolve

    controls = control.control_requests(controlnet, control_image, control_scale, control_start, control_end,
                                        control_mask, control_mode, guess_mode)
    request = GenerateRequest(prompt=prompt, negative=negative, scheduler=scheduler, steps=steps, guidance=guidance,
                              guidance_rescale=guidance_rescale, guidance_start=guidance_start,
                              guidance_end=guidance_end, seed=secrets.randbelow(2**32) if seed is None else seed,
                              batch=batch, width=width, height=height, strength=strength, allow_flat=allow_flat,
                              controls=controls)
    request.check()  # before torch is imported or anything loads (--device, --dtype, --model: while parsing)
    resolve("seed", request.seed)
    if controls:
        resolve("controlnet", [c.net for c in controls])  # absolute: a replay from elsewhere finds the nets
    for field, path in (("image", image), ("mask", mask)):
        if path is not None:
            readable(field, path)
    from .io.output import check_output

    check_output(output, (image, mask, *(control_image or []), *(control_mask or [])))
    results = _run_generate(request, model, config, device, dtype, image, mask,
                            control_inputs=(list(control_image or []), list(control_mask or [])))
    for path in _save(results, output):
        typer.echo(str(path))


REPLAYABLE["generate"] = generate
app.command("generate")(recorded("generate", generate))


@app.command()
def recall(
    png: Annotated[Path, typer.Argument(help="A PNG made by recomposer.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the reproduction "
                                                                          "(default: beside it, -recall.png).")] = None,
    device: RecordedDevice = None,
    inputs: Annotated[Optional[Path], typer.Option("--inputs", help="A folder holding the inputs the PNG was made "
                                                                    "from (default: beside the PNG, or here).")]
    = None,
) -> None:
    """Re-run the command recorded in a PNG's provenance and check the pixels come out the same."""
    import numpy as np
    from PIL import Image

    from .io.files import temp_folder
    from .provenance import read_provenance

    record = read_provenance(png)
    target = output or png.with_name(png.stem + "-recall.png")
    invocation = record.get("invocation")
    if invocation is None:
        result = _recall_generate(record, png, device)
        (path,) = _save([result], target)
        made = np.asarray(result.image)
    else:
        search = [p for p in (inputs, png.resolve().parent, Path.cwd()) if p is not None]
        command, options = _replayable(invocation, png, device, search)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_folder(target)
        try:
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):  # the replay's own output lines are not ours
                recorded(invocation["command"], command)(**options, output=tmp / "out")
            made_path = _matching(tmp / "out", record, png)
            made = np.asarray(Image.open(made_path).convert("RGB"))
            import os

            os.replace(made_path, target)
            path = target
        finally:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    original = np.asarray(Image.open(png).convert("RGB"))
    same = original.shape == made.shape and np.array_equal(original, made)
    if same:
        typer.echo(f"{path}\nidentical pixels")
        return
    if original.shape != made.shape:
        raise RecomposerError("image", f"the replay made an image of another size ({made.shape[1]}x{made.shape[0]})")
    differ = np.abs(original.astype(int) - made.astype(int))
    typer.echo(f"{path}\npixels DIFFER from the original: {int((differ > 0).any(-1).sum())} of "
               f"{differ.shape[0] * differ.shape[1]} pixels, by at most {int(differ.max())} levels")
    raise typer.Exit(1)


@app.command()
def info(
    png: Annotated[Path, typer.Argument(help="A PNG written by recomposer.")],
) -> None:
    """Print what recomposer recorded in a PNG, as standard JSON: a result's provenance (what ``recall`` replays),
    or what a picture is (a grid, a contact sheet, a world layer, a condition's picture) and which command made
    it."""
    import json

    from PIL import Image

    from .errors import BadImage
    from .io.files import ABOUT
    from .provenance import CHUNK, read_provenance, standard

    try:
        with Image.open(png, formats=("PNG",)) as im:
            text = dict(getattr(im, "text", {}))
    except FileNotFoundError:
        raise BadImage("image", f"{png} does not exist") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage("image", f"{png} is not a readable PNG ({e})") from None
    if CHUNK in text:
        record = read_provenance(png)
    elif ABOUT in text:
        try:
            record = json.loads(text[ABOUT])
        except (ValueError, RecursionError):
            raise BadImage("image", f"{png} has a damaged {ABOUT} chunk (not JSON)") from None
    else:
        raise BadImage("image", f"{png} carries no recomposer record (not written by recomposer, or its text "
                                "chunks were stripped)")
    typer.echo(json.dumps(standard(record), indent=2, sort_keys=True, allow_nan=False))


def _replayable(invocation: object, png: Path, device: str | None, search: list[Path]):
    """The command function and its options from a (possibly forged) recorded invocation, its inputs found."""
    import typing

    from .invocation import OUTPUT, find_inputs

    if not isinstance(invocation, dict) or not isinstance(invocation.get("options"), dict) \
            or not isinstance(invocation.get("inputs", {}), dict):
        raise RecomposerError("image", f"{png} has provenance whose invocation is not a command with options")
    name = invocation.get("command")
    if name not in REPLAYABLE:
        raise RecomposerError("image", f"{png} records command {name!r}; recall replays: {', '.join(REPLAYABLE)}")
    command = REPLAYABLE[name]
    hints = typing.get_type_hints(command)
    options = dict(invocation["options"])
    if unknown := sorted(set(options) - set(hints) | ({OUTPUT} & set(options))):
        raise RecomposerError("image", f"{png} records options that {name} does not take: {unknown}")
    located, problems = find_inputs(invocation, search)
    if problems:
        raise RecomposerError("image", f"recall needs the inputs {png.name} was made from: " + "; ".join(problems))
    options.update({key: path for key, path in located.items() if key in options})
    for key, value in options.items():
        wants_path = "Path" in str(hints[key])
        if wants_path and isinstance(value, str):
            options[key] = Path(value)
        elif wants_path and isinstance(value, list):
            options[key] = [Path(v) for v in value]
    if device is not None and "device" in hints:
        options["device"] = device
    annotated = typing.get_type_hints(command, include_extras=True)
    for key, value in options.items():  # the checks the command line runs while parsing (commands/options.py)
        for info in getattr(annotated[key], "__metadata__", ()):
            if getattr(info, "callback", None) is not None:
                info.callback(value)
    return command, options


def _matching(folder: Path, record: dict, png: Path) -> Path:
    """The PNG of a replay's output that stands where the original stood (same batch index, seed and prompt)."""
    from .provenance import read_provenance

    keys = ("task", "batch_index", "seed", "prompt")
    for candidate in sorted(folder.rglob("*.png")):
        try:
            made = read_provenance(candidate)
        except RecomposerError:
            continue
        if all(made.get(k) == record.get(k) for k in keys):
            return candidate
    raise RecomposerError("image", f"the replay of {png.name} made no image in its place (batch index "
                                   f"{record.get('batch_index')})")


def _recall_generate(record: dict, png: Path, device: str | None):
    """A generate PNG written before invocations were recorded: replayed from its parameters."""
    import dataclasses

    from .requests import GenerateRequest

    if record.get("task") != "generate":
        raise RecomposerError("image", f"records task {record.get('task')!r} and no command; recall replays such "
                                       "PNGs for generate only")
    known = {f.name for f in dataclasses.fields(GenerateRequest)}
    if unknown := sorted(set(record["params"]) - known):
        raise RecomposerError("image", f"{png} records parameters that generate does not take: {unknown}")
    if "prompt" not in record["params"]:  # the one field without a default (the PNG's pixels check the rest)
        raise RecomposerError("image", f"{png} records no prompt")
    request = GenerateRequest(**record["params"])
    request.check()
    inputs = record["inputs"]
    for name in inputs:
        if name not in ("image", "mask"):
            raise RecomposerError("image", f"{png} records an input {name!r} that generate does not take")
    m = record["model"]
    if m["kind"] == "memory":
        raise RecomposerError("image", "was made with a model built in memory; it cannot be reloaded")
    results = _run_generate(request, m["path"] if m["kind"] != "bundled" else None, m["config"],
                            device or m["device"], m["dtype"],
                            _recorded_input(inputs, "image"), _recorded_input(inputs, "mask"),
                            expect_sha256=m["sha256"], expect_inputs=inputs)
    return results[record["batch_index"]]


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="A new folder for the demo's images and sheet.")]
    = Path("demo-out"),
    steps: Annotated[int, typer.Option(help="Sampling steps per image.")] = 20,
    model: model_option("A folder of bundled-format parts (default: the bundled model).") = None,
) -> None:
    """Decompose a shapes-world scene and a photo with the bundled model, recompose them (reconstruction,
    variations, a palette swap, mixed-source compositions) and write a contact sheet."""
    from .commands.demo import run_demo

    typer.echo(str(run_demo(output, steps, model)))


# --- helpers ---------------------------------------------------------------------------------


def _run_generate(request, model, config, device, dtype, image_path, mask_path, expect_sha256=None,
                  expect_inputs=None, control_inputs=((), ())):
    """Open inputs, load the model, check everything, then run."""
    from .io.images import open_image, open_mask
    from .models.device import resolve_device, resolve_dtype
    from .models.loading import load_bundled, load_model
    from .models.facts import check_fits, peek
    from .tasks.controls import load_controls
    from .tasks.generate import generate as run, pixel_hash, resolve

    image = open_image(image_path, "image") if image_path is not None else None
    mask = open_mask(mask_path, image.size, "mask") if mask_path is not None and image is not None else None
    if mask_path is not None and image is None:
        raise InvalidParameter("mask", "given together with --image", str(mask_path))
    if expect_inputs and image is not None and pixel_hash(image) != expect_inputs["image"]["sha256"]:
        raise RecomposerError("image", f"{image_path} is not the start image that was recorded (pixels differ)")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    shape = peek(model, config)  # sides and memory are checked from the configs, before the model loads
    if shape is not None:
        sized = resolve(shape, request, image, mask)
        check_fits(shape, sized.width, sized.height, sized.batch, 2, torch_device, torch_dtype)
    backbone = load_bundled(torch_device, torch_dtype) if model is None else load_model(
        model, torch_device, torch_dtype, config)
    if expect_sha256 is not None and backbone.identity() != expect_sha256:
        raise RecomposerError("model", "weights differ from those that made this image (sha256 mismatch)")
    hints, masks = control_inputs
    sized = resolve(backbone, request, image, mask)
    controls = load_controls(request.controls, hints, masks, (sized.width, sized.height), backbone)
    results = run(backbone, request, image=image, mask=mask, controls=controls)
    from .invocation import record_paths

    paths = {"image": image_path, "mask": mask_path, "control_image": hints, "control_mask": masks}

    def named(entry: dict, path) -> dict:
        return {**entry, "path": str(Path(path).resolve()) if record_paths.get() else Path(path).name}

    for r in results:  # recall finds its inputs again by name (or path, when asked) and checks them by hash
        r.provenance["inputs"] = {k: [named(e, p) for e, p in zip(v, paths[k])] if isinstance(v, list) else
                                  named(v, paths[k]) for k, v in r.provenance["inputs"].items()}
    return results


def _recorded_input(inputs: dict, name: str) -> Optional[Path]:
    if name not in inputs:
        return None
    if "path" not in inputs[name]:
        raise RecomposerError(name, f"the provenance records no path for the {name}; recall needs it")
    path = Path(inputs[name]["path"])
    if not path.is_file():
        raise RecomposerError(name, f"the recorded {name} {path} is gone; recall needs it")
    return path


def _save(results, output: Path) -> list[Path]:
    """The output policy (io/output.py): FILE.png (FILE-k.png for several), or seed-named files in a folder."""
    from .provenance import save_results

    return save_results(results, output)


def _quiet_libraries() -> None:
    """Library logging and progress bars off, through the variables they read at import (so that
    `recomposer --help` does not have to import them)."""
    import os
    import warnings

    for name, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("HF_HUB_OFFLINE", "1")):
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from .errors import Notice

    warnings.filterwarnings("once", category=Notice)
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, Notice):  # ours: one plain line
            print(f"warning: {message}", file=sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    if "transformers" in sys.modules:  # already imported (as in a test process): tell them directly
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    if "diffusers" in sys.modules:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()


class Terminated(BaseException):
    """SIGTERM, raised where Python runs next so that every ``finally`` and temp-file cleanup runs (R6)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns (and, as a script, exits with) the exit code."""
    _quiet_libraries()
    from .commands.terminal import progress_shown

    with _process_scope():
        try:
            with progress_shown():
                code = app(args=argv, prog_name="recomposer", standalone_mode=False)
            if code == 130:  # click turns Ctrl-C into Abort, and in non-standalone mode returns 130 for it
                typer.echo("cancelled", err=True)
            return code if isinstance(code, int) else 0
        except RecomposerError as e:
            typer.echo(f"error: {e}", err=True)
            return 2
        except Cancelled as e:
            typer.echo(f"cancelled: {e}", err=True)
            return 130
        except typer.Exit as e:
            return e.exit_code
        except (Terminated, typer.Abort, KeyboardInterrupt) as e:
            return _stopped(e)
        except typer.TyperException as e:  # usage errors: unknown option, a value that does not parse
            typer.echo(f"error: {e.format_message() if hasattr(e, 'format_message') else e}", err=True)
            return getattr(e, "exit_code", 2)
        except OSError as e:  # the operating system's word on a file or folder: one line, the path first
            where = e.filename if e.filename is not None else "file"
            typer.echo(f"error: {where}: {e.strerror or e.__class__.__name__}", err=True)
            return 2
        except Exception as e:
            if (interrupt := _interruption(e)) is not None:  # a signal that Python or a library re-raised
                return _stopped(interrupt)
            from .models.memory import is_out_of_memory

            if not (isinstance(e, (MemoryError, RuntimeError)) and is_out_of_memory(e)):
                raise
            typer.echo("error: memory: the run ran out of memory; nothing was saved (try a smaller size or batch)",
                       err=True)
            return 1


def _stopped(signal_error: BaseException) -> int:
    """SIGTERM says "terminated" and exits 143; Ctrl-C (or click's Abort for it) says "cancelled" and exits 130."""
    terminated = isinstance(signal_error, Terminated)
    typer.echo("terminated" if terminated else "cancelled", err=True)
    return 143 if terminated else 130


def _interruption(error: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or ``Terminated`` behind ``error``, if one is in its chain of causes: a signal that
    lands while Python creates a class (as an import does) comes out as a RuntimeError caused by it."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (KeyboardInterrupt, Terminated)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def _process_scope():
    """For one command: SIGTERM becomes ``Terminated``; torch's compile cache (which importing torch creates)
    goes into a temp folder of ours that is removed afterwards, so nothing is left in the system temp folder;
    training-folder locks the command took are released at its end."""
    import os
    import shutil
    import signal
    import tempfile
    import threading

    from .io.files import temp_folder

    def terminate(signum, frame):
        raise Terminated()

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    cache = None
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ and "torch" not in sys.modules:
        cache = temp_folder(Path(tempfile.gettempdir()) / "recomposer")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    try:
        yield
    finally:
        if "recomposer.training.lock" in sys.modules:  # training folders this command held
            sys.modules["recomposer.training.lock"].release_all()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)


def script() -> None:
    code = main()
    if code == 130:
        _exit_cancelled()
    sys.exit(code)


def _exit_cancelled() -> None:
    """Exit with 130 once Ctrl-C was handled. CPython ends its process by SIGINT itself (status −2, not 130)
    when it believes a KeyboardInterrupt escaped the program, and under load it did so after ``main`` had
    handled one and returned 130 (issue 15; seen about once in 20 runs of `world sample` cancelled while
    writing). So the exit handlers run here and the process ends with 130, past the interpreter's own verdict."""
    import atexit
    import os

    atexit._run_exitfuncs()  # what the interpreter would run on its way out (logging, multiprocessing, temp files)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(130)
