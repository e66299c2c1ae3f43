"""`recomposer p2p`, `recomposer invert`, `recomposer attention`: Prompt-to-Prompt edits, real-image inversion and
cross-attention maps (tasks/p2p.py, inversion.py). Every value is checked before a model loads."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InvalidParameter, RecomposerError
from ..io.output import check_new_folder
from .options import Config, Device, Dtype, Model

def _load(model, config, device, dtype):
    from ..models.loading import open_model

    return open_model(model, config, device, dtype)


def _pairs(field: str, items: list[str] | None) -> dict[str, float]:
    """WORD=NUMBER options -> {word: number}."""
    out = {}
    for item in items or ():
        word, _, number = item.partition("=")
        try:
            out[word.strip()] = float(number)
        except ValueError:
            raise InvalidParameter(field, "WORD=NUMBER", item) from None
        if not word.strip():
            raise InvalidParameter(field, "WORD=NUMBER", item)
    return out


def p2p_command(
    source_prompt: Annotated[str, typer.Argument(metavar="SOURCE_PROMPT", help="The source prompt (with --inversion: "
                                                 "the edited prompt; the source is the inverted image's).")],
    edited_prompt: Annotated[Optional[str], typer.Argument(metavar="EDITED_PROMPT", help="The edited prompt.")] = None,
    inversion: Annotated[Optional[Path], typer.Option("--inversion", help="An inversion folder (`recomposer invert`)"
                                                                          ": edit that real image.")] = None,
    model: Model = None, config: Config = None,
    scheduler: Annotated[str, typer.Option(help="Sampler (with --inversion: ddim).")] = "ddim",
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps (default 50; with --inversion: its own).")]
    = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance (default 7.5; with "
                                                           "--inversion: its own).")] = None,
    seed: Annotated[int, typer.Option(help="The seed both images start from.")] = 0,
    cross_replace: Annotated[float, typer.Option(help="Share of the steps taking the source's cross-attention "
                                                      "maps.")] = 0.8,
    cross_replace_word: Annotated[Optional[list[str]], typer.Option(help="WORD=SHARE: a word of the edited prompt "
                                                                         "with its own share; repeatable.")] = None,
    self_replace: Annotated[float, typer.Option(help="Share of the steps taking the source's self-attention "
                                                     "maps.")] = 0.4,
    self_max_queries: Annotated[int, typer.Option(help="Self-attention is injected in layers with at most this many "
                                                       "queries (16*16 = 256, or 32*32 = 1024 as the other "
                                                       "reference).")] = 256,
    reweight: Annotated[Optional[list[str]], typer.Option(help="WORD=C: scale a word's maps by C in (-2, 2); "
                                                               "repeatable.")] = None,
    blend: Annotated[Optional[list[str]], typer.Option(help="Local blend word (outside what the blend words attend "
                                                            "to, the source is kept); repeatable.")] = None,
    blend_threshold: Annotated[float, typer.Option(help="Local blend threshold on the normalised map.")] = 0.3,
    device: Device = "auto", dtype: Dtype = "fp32",
    output: Annotated[Path, typer.Option("--output", "-o", help="A new folder: source.png and edited.png.")]
    = Path("p2p"),
) -> None:
    """Prompt-to-Prompt: an image and its edit by an edited prompt (word swap, refinement, re-weighting, local
    blend), or an edit of an inverted real image."""
    from ..requests import Edit, P2PRequest, edit_kind, readable

    if inversion is None and edited_prompt is None:
        raise InvalidParameter("EDITED_PROMPT", "given (or --inversion INV with one prompt, the edited one)", None)
    if inversion is not None and edited_prompt is not None:
        raise InvalidParameter("EDITED_PROMPT", "omitted with --inversion (the source is the inverted image's "
                                                "prompt)", edited_prompt)
    from ..io.output import check_output

    check_output(output)
    edit = Edit(cross_replace=cross_replace, cross_replace_words=_pairs("cross-replace-word", cross_replace_word),
                self_replace=self_replace, self_max_queries=self_max_queries,
                reweight=_pairs("reweight", reweight), blend=tuple(blend or ()), blend_threshold=blend_threshold)
    info = None
    if inversion is not None:
        readable("inversion", inversion, folder=True)
        info = _read_inversion_info(inversion)
        source, edited = info.prompt, source_prompt
        steps, guidance = steps or info.steps, guidance if guidance is not None else info.guidance
    else:
        source, edited = source_prompt, edited_prompt
    request = P2PRequest(source, edited, scheduler=scheduler, steps=steps or 50,
                         guidance=7.5 if guidance is None else guidance, seed=seed, edit=edit).check()
    edit_kind(request.source, request.edited)  # the prompts' relation, before any model loads
    backbone = _load(model, config, device, dtype)
    loaded = None
    if inversion is not None:
        from ..inversion import Inversion

        loaded = Inversion.load(inversion, backbone)
    from ..tasks.p2p import prompt_to_prompt

    source_image, edited_image = prompt_to_prompt(backbone, request, loaded)
    _write_pair(output, {"source.png": source_image, "edited.png": edited_image})


def _read_inversion_info(folder: Path):
    import json

    from ..inversion import InversionInfo

    try:
        return InversionInfo(**json.loads((folder / "inversion.json").read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise RecomposerError("inversion", f"{folder} holds no inversion.json (`recomposer invert` writes one)") \
            from None
    except (ValueError, TypeError, OSError):
        raise RecomposerError("inversion", f"{folder / 'inversion.json'} is not an inversion record") from None


def _write_pair(output: Path, results: dict) -> None:
    """source.png and edited.png in the output folder (names that are taken become source-1.png, …), or
    FILE-0.png and FILE-1.png for ``-o FILE.png``."""
    from ..provenance import save_results

    for path in save_results(list(results.values()), output, [name.removesuffix(".png") for name in results],
                             grid=False):
        typer.echo(str(path))


def invert_command(
    image: Annotated[Path, typer.Argument(help="The image to invert (fitted to the model's size).")],
    prompt: Annotated[str, typer.Option("--prompt", help="What the image shows (the edit's source prompt).")],
    method: Annotated[str, typer.Option(help="ddim, null-text, negative-prompt or direct.")] = "null-text",
    steps: Annotated[int, typer.Option(help="DDIM steps (edits of this inversion use the same).")] = 50,
    guidance: Annotated[float, typer.Option(help="Guidance the edits will use (null-text optimises for it).")]
    = 7.5,
    inner: Annotated[int, typer.Option(help="Null-text: at most this many Adam steps per sampling step.")] = 10,
    model: Model = None, config: Config = None, device: Device = "auto", dtype: Dtype = "fp32",
    output: Annotated[Path, typer.Option("--output", "-o", help="A new folder for the inversion.")]
    = Path("inversion"),
) -> None:
    """Invert a real image (DDIM, null-text, negative-prompt or direct inversion) so that `recomposer p2p --inversion`
    can edit it; writes inversion.safetensors + inversion.json."""
    from ..requests import InvertRequest, readable

    request = InvertRequest(prompt, method, steps, guidance, inner).check()
    readable("image", image)
    check_new_folder(output)
    from ..io.images import open_image

    picture = open_image(image, "image")
    backbone = _load(model, config, device, dtype)
    from ..tasks.p2p import invert_picture

    invert_picture(backbone, picture, request).save(output)
    typer.echo(str(output))


def attention_command(
    prompt: Annotated[str, typer.Argument(help="The prompt whose tokens' maps to draw.")],
    model: Model = None, config: Config = None,
    scheduler: Annotated[str, typer.Option(help="Sampler.")] = "ddim",
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 20,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance.")] = 7.5,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    device: Device = "auto", dtype: Dtype = "fp32",
    output: Annotated[Path, typer.Option("--output", "-o", help="A new folder: image.png, one map per word and "
                                                                "resolution, and a sheet.")] = Path("maps"),
) -> None:
    """Each word's cross-attention map, averaged over the layers of each resolution and over the steps, beside the
    image it made."""
    from ..requests import MapsRequest

    request = MapsRequest(prompt, scheduler, steps, guidance, seed).check()
    check_new_folder(output)
    backbone = _load(model, config, device, dtype)
    from ..io.files import write_folder
    from ..provenance import write_png
    from ..tasks.p2p import attention_maps, map_picture

    result, maps, words = attention_maps(backbone, request)
    side = result.image.width
    files = {"image.png": lambda folder: write_png(folder / "image.png", result.image, result.provenance)}
    tiles = [("image", result.image)]
    for (h, w), stack in sorted(maps.items(), reverse=True):
        for k, word in enumerate(words):
            picture = map_picture(stack[k], side)
            files[f"{h}x{w}-{k:02d}-{_safe(word)}.png"] = picture
            tiles.append((f"{word} {h}x{w}", picture.convert("RGB")))
    from ..io.sheets import titled_row

    files["sheet.png"] = titled_row(tiles, tile=128, nearest=True)
    write_folder(output, files)
    typer.echo(str(output))


def _safe(word: str) -> str:
    return "".join(c for c in word if c.isalnum()) or "token"


COMMANDS = {"p2p": p2p_command, "invert": invert_command, "attention": attention_command}
