"""Visii, visual instruction inversion (Nguyen et al. 2023): an edit shown by before/after example pairs is learnt as
the token states c_T of an instruction model's caption, then applied to new images like a written instruction
(tasks/instruct.py with conditions/learned.py's ``LearnedCaption``).

c_T starts as the encoding of a plain instruction (``init``), or of the best of a list of candidate instructions
(``search``: a hard-prompt search scored by the same denoising loss at a few fixed timesteps). Only the states of the
instruction's own words are learnt; the start and end tokens and the padding keep their values. Each of ``steps``
iterations takes one pair (in turn) at its own timestep t_i (a fixed permutation of the training timesteps: each
iteration a distinct one, as the reference), with that pair's fixed noise ε, and minimises

    L = λ_mse·‖ε̂_CFG(x_t^after, t_i; before, c_T) − target‖² + λ_clip·(1 − cos(Δ, P·mean(c_T)))

ε̂_CFG the dual guidance of tasks/instruct.py (s_T, s_I) through the UNet, its three rows in one forward; target ε
(or v, or x_0, as the model predicts); Δ the mean normalised difference of the after and before CLIP image
embeddings over the pairs and P the CLIP text projection (the cosine term needs a CLIP model whose text tower is as
wide as the instruction model's text encoder: SD 1.x's is CLIP ViT-L/14's; without one the term is off, and the
result says so). AdamW, lr 1e-3 and the weights 4 and 0.1 as the reference; its loop runs 1000 iterations whatever
its settings say, ours runs ``steps``.
"""

import time
from dataclasses import asdict, dataclass, field, replace

import torch
from PIL import Image

from .. import validation as v
from ..conditions import ConditionSet, SourceImage
from ..conditions.fitting import fit_image
from ..conditions.learned import LearnedCaption
from ..denoiser import BackboneDenoiser, Step
from ..errors import InvalidParameter, ModelError
from ..guidance import Guided, dual
from ..io.images import to_tensor
from ..models.backbone import Backbone
from ..models.instruct import InstructChannels

FORMAT = 1


@dataclass(frozen=True)
class VisiiRequest:
    init: str = "make it look like this"  # the plain instruction c_T starts from
    candidates: tuple[str, ...] = ()  # a hard-prompt search over these instead (the best one by the loss)
    steps: int = 1000
    lr: float = 1e-3
    mse_weight: float = 4.0
    clip_weight: float = 0.1
    guidance: float = 7.5  # s_T of ε̂_CFG in the loss
    image_guidance: float = 1.5  # s_I
    seed: int = 0

    def check(self) -> "VisiiRequest":
        if not isinstance(self.init, str) or not self.init.strip():
            raise InvalidParameter("init", "an instruction of at least one word", self.init)
        if not isinstance(self.candidates, tuple):
            raise InvalidParameter("candidates", "a list of instructions", self.candidates)
        for text in self.candidates:
            if not isinstance(text, str) or not text.strip():
                raise InvalidParameter("candidates", "instructions of at least one word", text)
        v.integer("steps", self.steps, 1, 100_000)
        v.real("lr", self.lr, 1e-8, 1.0)
        v.real("mse-weight", self.mse_weight, 0.0, 1e4)
        v.real("clip-weight", self.clip_weight, 0.0, 1e4)
        v.real("guidance", self.guidance, -100.0, 100.0)
        v.real("image-guidance", self.image_guidance, -100.0, 100.0)
        v.seed("seed", self.seed)
        return self


@dataclass
class Learned:
    """A learnt instruction: states (1, T, D), their attention mask (1, T) or None, the learnt positions (T,) bool,
    and what made it (``info``: the model's identity, the init, the settings, the loss, the seconds)."""

    states: torch.Tensor
    mask: torch.Tensor | None
    learnt: torch.Tensor
    info: dict = field(default_factory=dict)

    def caption(self, text: str = "") -> LearnedCaption:
        return LearnedCaption(text, self.states, self.mask, self.info.get("sha256", ""))


def pair_tensors(backbone: Backbone, pairs: list[tuple[Image.Image, Image.Image]]) -> tuple[list, tuple[int, int]]:
    """Each (before, after) as image tensors (1, 3, H, W) in [-1, 1], at one size: the first before's, cut down to
    multiples of the VAE's factor. Every image must have the first one's size."""
    if not pairs:
        raise InvalidParameter("images", "at least one before/after pair", 0)
    first = pairs[0][0]
    for k, pair in enumerate(pairs):
        for name, im in zip(("before", "after"), pair):
            if im.size != first.size:
                raise InvalidParameter("images", f"before and after images of one size ({first.width}x{first.height},"
                                                 f" the first's)", f"{name} {k + 1} is {im.width}x{im.height}")
    f = backbone.vae_factor
    size = (first.width // f * f, first.height // f * f)
    if min(size) < max(8, f):
        raise InvalidParameter("images", f"images of at least {max(8, f)} pixels a side", first.size)
    return [tuple(to_tensor(fit_image(im.convert("RGB"), size)) for im in pair) for pair in pairs], size


def initial_caption(backbone: Backbone, text: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(states (1, T, D), mask (1, T) or None, learnt (T,) bool): ``text`` encoded; its words' positions learnt, the
    first and last real tokens (start, end) and the padding kept."""
    prompt = backbone.encode_prompts([text])
    real = len(backbone.tokenizer(text, truncation=True, max_length=backbone.prompt_length).input_ids)
    learnt = torch.zeros(prompt.tokens.shape[1], dtype=torch.bool)
    learnt[1:real - 1] = True
    if not learnt.any():
        raise InvalidParameter("init", "an instruction with at least one word token", text)
    return prompt.tokens.float(), None if prompt.mask is None else prompt.mask.float(), learnt


def learn_instruction(backbone: Backbone, pairs: list[tuple[Image.Image, Image.Image]], request: VisiiRequest,
                      clip=None, callback=None) -> Learned:
    """Visii (module docstring). ``clip``: a transformers CLIPModel for the cosine term (None: the term is off).
    ``callback(i, loss)`` after each iteration."""
    from ..schedulers import training_target

    request.check()
    if backbone.adapter(InstructChannels) is None:
        raise ModelError("model", "is not an instruction model: Visii learns an instruction for a model whose UNet "
                                  "hears the source image (InstructPix2Pix)")
    started = time.perf_counter()
    images, size = pair_tensors(backbone, pairs)
    b = backbone
    for module in (b.unet, b.vae, b.text_encoder):
        module.requires_grad_(False).eval()
    init = request.init
    if request.candidates:
        init = hard_prompt_search(backbone, images, size, request)
    states, mask, learnt = initial_caption(b, init)
    learnt = learnt.to(states.device)
    from ..schedulers import make_scheduler

    scheduler = make_scheduler("ddpm", b.scheduler_config)  # q(x_t | x_0): the training betas
    g = torch.Generator().manual_seed(request.seed)
    with torch.no_grad():
        clean = [b.encode_image(after).mode() * b.vae.config.scaling_factor for _, after in images]  # x_0 of each after
        noises = [torch.randn(x.shape, generator=g).to(x) for x in clean]  # fixed per pair
    count = scheduler.config.num_train_timesteps
    order = torch.randperm(count, generator=g)  # t_i: each iteration its own timestep
    direction, projection = (None, None) if clip is None or not request.clip_weight else _clip_direction(clip, pairs, b)
    if direction is not None:  # (CLIP loads on the CPU; the states live on the backbone's device)
        direction, projection = direction.to(b.device), projection.to(b.device)

    guided, inputs = _loss_plans(b, images, size, request, states, mask)
    delta = torch.zeros_like(states[:, learnt]).requires_grad_(True)  # what is learnt: c_T = init + delta
    optimiser = torch.optim.AdamW([delta], lr=request.lr)
    losses = []
    for i in range(request.steps):
        k = i % len(images)
        t = order[i % count].reshape(1)
        x_t = scheduler.add_noise(clean[k], noises[k], t).to(b.dtype)
        c_t = states.clone()
        c_t[:, learnt] = states[:, learnt] + delta
        prediction = guided(x_t, Step(i, request.steps, 0, 1, t.to(b.device)), _with_learned(inputs[k], c_t, mask))
        target = training_target(scheduler, b.prediction_type, clean[k], noises[k], t)
        loss = request.mse_weight * (prediction.float() - target.float()).square().mean()
        if direction is not None:
            text = projection(c_t[0, learnt].mean(0, keepdim=True))  # (1, E)
            cos = torch.cosine_similarity(text, direction, dim=-1).clamp(-1, 1)
            loss = loss + request.clip_weight * (1 - cos).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if callback is not None:
            callback(i, losses[-1])
    final = states.clone()
    final[:, learnt] = states[:, learnt] + delta.detach()
    tail = losses[-max(1, len(losses) // 10):]
    info = {"format": FORMAT, "model": b.identity(), "text_width": int(states.shape[-1]), "init": init,
            "searched": init if request.candidates else None, "request": asdict(request), "pairs": len(images),
            "size": list(size), "clip": direction is not None, "loss_first": losses[0],
            "loss_last": sum(tail) / len(tail),
            "seconds": round(time.perf_counter() - started, 2)}
    return Learned(final.cpu(), None if mask is None else mask.cpu(), learnt.cpu(), info)


def hard_prompt_search(backbone: Backbone, images: list, size: tuple[int, int], request: VisiiRequest,
                       probes: int = 8) -> str:
    """The candidate instruction whose plain encoding gives the lowest denoising loss on the pairs, averaged over
    ``probes`` fixed timesteps spread over the schedule (no gradients: a search over words, not states)."""
    from ..schedulers import make_scheduler
    from ..schedulers import training_target

    b = backbone
    scheduler = make_scheduler("ddpm", b.scheduler_config)
    count = scheduler.config.num_train_timesteps
    g = torch.Generator().manual_seed(request.seed + 1)
    timesteps = torch.linspace(count * 0.1, count * 0.9, probes).long()
    best, best_loss = None, float("inf")
    with torch.no_grad():
        clean = [b.encode_image(after).mode() * b.vae.config.scaling_factor for _, after in images]
        noises = [torch.randn(x.shape, generator=g).to(x) for x in clean]
        for text in request.candidates:
            states, mask, _ = initial_caption(b, text)
            guided, inputs = _loss_plans(b, images, size, request, states, mask)
            total = 0.0
            for k in range(len(images)):
                for j, t in enumerate(timesteps):
                    t = t.reshape(1)
                    x_t = scheduler.add_noise(clean[k], noises[k], t).to(b.dtype)
                    prediction = guided(x_t, Step(j, probes, 0, 1, t.to(b.device)), inputs[k])
                    target = training_target(scheduler, b.prediction_type, clean[k], noises[k], t)
                    total += float((prediction.float() - target.float()).square().mean())
            if total < best_loss:
                best, best_loss = text, total
    return best


def _loss_plans(b: Backbone, images: list, size: tuple[int, int], request: VisiiRequest, states, mask):
    """The guided denoiser and each pair's encoded dual-guidance inputs, the caption row holding ``states``."""
    guided = Guided(BackboneDenoiser(b, size))
    inputs = []
    for before, _ in images:
        source = SourceImage(before)
        image_only = ConditionSet.of(source)
        both = ConditionSet.of(source, LearnedCaption("", states, mask))
        inputs.append(guided.encode(dual(image_only, both, request.image_guidance, request.guidance), 1))
    return guided, inputs


def _with_learned(inputs, states: torch.Tensor, mask: torch.Tensor | None):
    """``inputs`` with the instruction row's context replaced by ``states`` (which carry the gradient)."""
    plan = inputs.plans[0]
    both = next(j for j, conds in enumerate(plan.sets()) if "caption" in conds and "source_image" in conds)
    rows = list(inputs.encoded[0])
    old = rows[both]
    width = states.shape[1]
    rows[both] = replace(old, context=torch.cat([states.to(old.context), old.context[:, width:]], 1))
    return replace(inputs, encoded=(tuple(rows),))


def _clip_direction(clip, pairs, backbone: Backbone):
    """(Δ (1, E): the mean of the normalised after − before image embeddings, P: the text projection). ``clip``:
    (CLIPModel, its image processor), decompose/embedding.py ``load_clip``."""
    clip, processor = clip
    width = clip.text_projection.in_features
    if width != backbone.text_encoder.config.hidden_size:
        raise ModelError("clip", f"has a text tower {width} wide; this instruction model's text encoder is "
                                 f"{backbone.text_encoder.config.hidden_size} wide (the cosine term compares them)")
    with torch.no_grad():
        diffs = []
        for before, after in pairs:
            pixels = processor(images=[before.convert("RGB"), after.convert("RGB")], return_tensors="pt")
            e = clip.visual_projection(clip.vision_model(pixel_values=pixels["pixel_values"]).pooler_output)  # (2, E)
            e = torch.nn.functional.normalize(e, dim=-1)
            diffs.append(torch.nn.functional.normalize(e[1] - e[0], dim=-1))
        direction = torch.nn.functional.normalize(torch.stack(diffs).mean(0, keepdim=True), dim=-1)
    return direction, clip.text_projection


def check_learned(learned_info: dict, backbone: Backbone, source: str) -> None:
    """A learnt instruction runs only on the model it was learnt on (its weights' identity)."""
    if learned_info.get("model") != backbone.identity():
        raise ModelError("learned", f"{source} was learnt on another model (its weights differ from this one's); "
                                    "learn it again with `recomposer visii` on this model")


# ---------------------------------------------------------------- the file

def learned_bytes(learned: Learned) -> bytes:
    """The learnt instruction as a safetensors file's bytes: states, mask, learnt positions, and its ``info`` as JSON
    in the metadata."""
    import json

    from safetensors.torch import save

    tensors = {"states": learned.states[0].float().contiguous(), "learnt": learned.learnt.to(torch.uint8)}
    if learned.mask is not None:
        tensors["mask"] = learned.mask[0].float().contiguous()
    return save(tensors, metadata={"recomposer_visii": json.dumps(learned.info)})


def save_learned(learned: Learned, path):
    """``learned_bytes`` as one file, all or nothing. Returns the path written."""
    from pathlib import Path

    from ..io.files import atomic_write

    data = learned_bytes(learned)
    return atomic_write(Path(path), lambda f: f.write(data))


def load_learned(path) -> Learned:
    """A file ``save_learned`` wrote, checked by its bytes (io/weights.py) and its shapes; ``info["sha256"]`` is the
    file's hash (what a result's provenance records)."""
    import hashlib
    import json

    from ..io.weights import check_safetensors, load_safetensors

    field = "learned"
    header = check_safetensors(path)
    try:
        info = json.loads((header.get("__metadata__") or {}).get("recomposer_visii", ""))
    except ValueError:
        info = None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise InvalidParameter(field, "an instruction file `recomposer visii` wrote", str(path))
    tensors = load_safetensors(path)
    states, learnt, mask = tensors.get("states"), tensors.get("learnt"), tensors.get("mask")
    if states is None or states.ndim != 2 or learnt is None or learnt.shape != states.shape[:1] or \
            (mask is not None and mask.shape != states.shape[:1]):
        raise InvalidParameter(field, "states (T, D), learnt (T,) and an optional mask (T,)", str(path))
    with open(path, "rb") as f:
        info["sha256"] = hashlib.sha256(f.read()).hexdigest()
    return Learned(states[None].float(), None if mask is None else mask[None].float(), learnt.bool(), info)
