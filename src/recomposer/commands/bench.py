"""`recomposer bench ...`: the controllability benchmark and the speed harness, each writing a new folder of
report.json + report.md (+ PNG plots for controllability).

    recomposer bench controllability [-o bench-controllability] [--quick | --scenes N ...] [--model PARTS]
    recomposer bench speed [-o bench-speed] [--quick] [--repeats N] [--threads N] [--device auto|cpu|cuda]

``--quick`` is the CI size (seconds to a minute on one CPU thread); the full runs are what the README's
figures come from (benchmarks/controllability.py and benchmarks/speed.py call the same code).
"""

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InvalidParameter
from ..progress import stage
from .options import model_option

bench_app = typer.Typer(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
                        help="Measure controllability and speed (reports in a new folder).")


@bench_app.command("controllability")
def controllability(
    output: Annotated[Path, typer.Option("--output", "-o", help="A new folder for the report.")]
    = Path("bench-controllability"),
    quick: Annotated[bool, typer.Option("--quick", help="The CI size: 2 scenes, 6 steps (under a minute).")]
    = False,
    scenes: Annotated[Optional[int], typer.Option(help="Held-out scenes (default 40; quick 2).")] = None,
    held_out_scenes: Annotated[Optional[int], typer.Option(help="Scenes with held-out attribute combinations "
                                                                "(default 40; quick 1).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampler steps per image (default 20; quick 6).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="The sampler, as compose's --scheduler (default "
                                                          "dpmpp_2m).")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Composer guidance w (default 3).")] = None,
    guidance_rescale: Annotated[Optional[float], typer.Option(help="Guidance rescale φ, 0 to 1 (default 0: none; "
                                                                  "Lin et al. 2024 use 0.7).")] = None,
    guidance_interval: Annotated[Optional[str], typer.Option(help="START:END, shares of the steps inside which "
                                                                  "guidance holds (default 0:1, all).")] = None,
    control_scale: Annotated[Optional[float], typer.Option(help="The bundled ControlNet's conditioning scale in its "
                                                               "rows (default 1.5, a bundled net's default).")] = None,
    control_mode: Annotated[Optional[str], typer.Option(help="Its mode there: control (default, a bundled net's: "
                                                             "guidance amplifies the hint, as it does the adapter's), "
                                                             "balanced (diffusers': with the hint alone and no caption "
                                                             "its rows are alike and guidance does nothing), prompt "
                                                             "or guess.")] = None,
    model: model_option("A diffusers Composer model directory or a folder of bundled-format parts (default: the "
                        "bundled model).") = None,
    adapter: Annotated[Optional[str], typer.Option("--adapter", help="A Composer adapter .safetensors for "
                                                                     "--model.")] = None,
) -> None:
    """Generate from every condition alone, in pairs and from mixed sources on held-out scenes; judge each
    with the shapes-world analyser beside its floor (no condition) and ceiling (the scene's own render)."""
    from dataclasses import replace

    from ..evaluation.controllability import QUICK, BenchConfig

    base = QUICK if quick else BenchConfig()
    given = {"scenes": scenes, "held_out_scenes": held_out_scenes, "steps": steps, "scheduler": scheduler,
             "guidance": guidance, "guidance_rescale": guidance_rescale, "control_scale": control_scale,
             "control_mode": control_mode}
    if guidance_interval is not None:
        given["guidance_interval"] = _interval(guidance_interval)
    config = replace(base, **{k: value for k, value in given.items() if value is not None}).check()
    _check_new(output)

    from ..models.analyser import load_bundled_analyser
    from ..evaluation.controllability import generations, run
    from ..evaluation.report import bars, example_grid, figures, markdown
    from ..io.files import write_folder
    from ..tasks.composer import load_composer

    composer = load_composer(model, adapter)
    net = _bundled_controlnet(composer)
    with stage("generating", total=generations(config, net.kinds if net else ())) as advance:
        report, examples = run(composer, load_bundled_analyser(), config, lambda done, total: advance(done), net)
    files = {"report.json": _json(report), "report.md": markdown(report), "bars.png": bars(report),
             "figures.json": _json(figures(report))}  # shipped beside the weights as benchmark.json
    if examples:
        files["examples.png"] = example_grid(examples)
    typer.echo(str(write_folder(output, files)))
    typer.echo(markdown(report), err=True)


@bench_app.command("edits")
def edits(
    output: Annotated[Path, typer.Option("--output", "-o", help="A new folder for the report.")] = Path("bench-edits"),
    quick: Annotated[bool, typer.Option("--quick", help="The CI size: 2 scenes per kind, 4 steps.")] = False,
    scenes: Annotated[Optional[int], typer.Option(help="Held-out scenes tried per edit kind (default 40).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampler steps per edit (default 20).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="The sampler, as instruct's --scheduler (default "
                                                          "euler_a).")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Text guidance s_T (default 7.5).")] = None,
    image_guidance: Annotated[Optional[float], typer.Option(help="Image guidance s_I (default 1.5).")] = None,
    guidance_rescale: Annotated[Optional[float], typer.Option(help="Guidance rescale φ, 0 to 1 (default 0: "
                                                                  "none).")] = None,
    visii_scenes: Annotated[Optional[int], typer.Option(help="Scenes a learnt instruction is applied to (default "
                                                             "20; 0: no Visii figures).")] = None,
    visii_steps: Annotated[Optional[int], typer.Option(help="Visii iterations per learnt instruction (default "
                                                            "1000).")] = None,
    model: model_option("An instruction model: a diffusers InstructPix2Pix directory or parts with an instruct part "
                        "(default: the bundled instruction model).") = None,
) -> None:
    """Edit held-out scenes by the world's instructions and judge each edit with the analyser beside its floor (the
    unedited scene) and ceiling (the world's own edit); Visii learnt from one pair, applied to other scenes."""
    from dataclasses import replace

    from ..evaluation.edits import QUICK_EDITS, EditBenchConfig

    base = QUICK_EDITS if quick else EditBenchConfig()
    given = {"scenes": scenes, "steps": steps, "scheduler": scheduler, "guidance": guidance,
             "image_guidance": image_guidance, "guidance_rescale": guidance_rescale, "visii_scenes": visii_scenes,
             "visii_steps": visii_steps}
    config = replace(base, **{k: value for k, value in given.items() if value is not None}).check()
    _check_new(output)

    from ..evaluation.edits import markdown, run
    from ..io.files import write_folder
    from ..models.analyser import load_bundled_analyser
    from ..models.loading import open_instruction_model

    backbone = open_instruction_model(model, None, "cpu", "fp32")
    report = run(backbone, load_bundled_analyser(), config)
    typer.echo(str(write_folder(output, {"report.json": _json(report), "report.md": markdown(report)})))
    typer.echo(markdown(report), err=True)


@bench_app.command("speed")
def speed(
    output: Annotated[Path, typer.Option("--output", "-o", help="A new folder for the report.")] = Path("bench-speed"),
    quick: Annotated[bool, typer.Option("--quick", help="The CI size (seconds).")] = False,
    repeats: Annotated[Optional[int], typer.Option(help="Timed runs per figure; the median is reported (>= 5).")]
    = None,
    threads: Annotated[int, typer.Option(help="CPU threads torch uses.")] = 1,
    device: Annotated[str, typer.Option(help="auto (CUDA where present), cpu or cuda.")] = "auto",
) -> None:
    """Time our loop against diffusers' pipeline and raw UNet forwards, multi-term guidance against one batched
    forward, decomposition, a training step against a plain diffusers step, and the shapes world."""
    from dataclasses import replace

    from ..evaluation.speed import QUICK_SPEED, SpeedConfig, markdown, run

    base = QUICK_SPEED if quick else SpeedConfig()
    config = replace(base, threads=threads, device=device,
                     **({"repeats": repeats} if repeats is not None else {})).check()
    _check_new(output)

    from ..io.files import write_folder

    report = run(config)
    typer.echo(str(write_folder(output, {"report.json": _json(report), "report.md": markdown(report)})))
    typer.echo(markdown(report), err=True)


def _bundled_controlnet(composer):
    """The ControlNet part of a bundled-format model (its hint kinds judged beside the adapter), or None."""
    from ..evaluation.controllability import NetUnderTest
    from ..models.bundled import WEIGHTS, has_part
    from ..models.controlnet import load_bundled_controlnet

    b = composer.backbone
    if b.source.kind != "bundled":
        return None
    folder = Path(b.source.path) if b.source.path else WEIGHTS
    if not has_part("controlnet", folder):
        return None
    return NetUnderTest(*load_bundled_controlnet(folder, b.device, b.dtype))


def _interval(text: str) -> tuple[float, float]:
    """START:END of --guidance-interval, checked as a request's (0 <= START < END <= 1)."""
    from ..requests import check_interval

    try:
        start, end = (float(x) for x in text.split(":"))
    except ValueError:
        raise InvalidParameter("guidance-interval", "START:END, two shares of the steps such as 0.1:0.8", text)
    check_interval(start, end)
    return start, end


def _check_new(output: Path) -> None:
    from ..io.output import check_new_folder

    check_new_folder(output)


def _json(report: dict) -> str:
    """JSON with infinite figures (a PSNR of identical pixels) written as the string "inf"."""
    def clean(x):
        if isinstance(x, float) and math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if isinstance(x, dict):
            return {k: clean(value) for k, value in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(value) for value in x]
        return x

    return json.dumps(clean(report), indent=2) + "\n"
