"""The shapes world encoded once for a backbone: a sharded, memory-mapped cache every trainer reads.

Everything a training step needs that does not change between epochs is computed here, once, in
parallel and resumably: the VAE posterior's moments, the caption's token states and sentence
embedding, the image embedding, and the Composer conditions as compact ground truth (label map,
sketch bits, depth, intensity, palette, the masked-image box). What does change, condition dropout,
the posterior sample, the noise and the timestep, stays a pure function of the step (the trainers
draw it from the step's generator), so a cached run follows the same path as an uncached one.

Layout of a cache folder:

    manifest.json              the CacheSpec it was built for (what a trainer checks before reading)
    shard-000000.safetensors   rows [0, shard_size): one safetensors file, tensors named as in SHARD_TENSORS
    shard-000001.safetensors   ...

Row r is world seed r (the training stream's seeds; the evaluation split is never cached). A shard is
written whole (temp file, fsync, rename) and carries the spec's digest and its row range in its
metadata, so a resumed build keeps the shards that are complete and right and rebuilds the rest; a
truncated or foreign shard is found by its bytes and never half-read (``WorldCache.open`` refuses it,
``build`` rebuilds it). Shards are read through ``numpy.memmap`` over the safetensors data, so a
batch costs a few page reads and no decoding.
"""

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from .. import validation as v
from ..conditions import Caption, ConditionSet, Depth, Instances, MaskedImage, Palette, Sketch
from ..decompose.intensity import intensity
from ..errors import InvalidParameter, ModelError
from ..io.files import atomic_write
from ..io.weights import check_safetensors
from ..world.dataset import EVAL_SEED_BASE, WorldSample, make_sample
from ..world.scene import WorldConfig

FORMAT = 1  # bumped when the layout of a shard changes
LOCAL_KINDS = ("sketch", "instances", "depth", "intensity", "masked_image")
_DTYPES = {"F16": np.float16, "F32": np.float32, "U8": np.uint8, "I16": np.int16, "I32": np.int32, "I64": np.int64}


@dataclass(frozen=True)
class CacheSpec:
    """What a cache was built for. A trainer refuses a cache whose spec differs from its own, naming the field."""

    format: int  # FORMAT
    world: str  # fingerprint of the world: its config and the renders and captions of probe scenes
    size: int  # render side in pixels
    vae: str  # sha256 of the VAE's encoder weights (with its scaling factor): a new decoder keeps a cache valid
    text_encoder: str  # sha256 of the text encoder's weights, its prompt length and padding rule
    image_encoder: str | None  # identity of the image encoder (None: no image embeddings)
    scenes: int  # rows: world seeds 0 .. scenes - 1
    shard_size: int  # rows per shard

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def differences(self, other: "CacheSpec") -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    @property
    def shards(self) -> int:
        return math.ceil(self.scenes / self.shard_size)


def world_fingerprint(config: WorldConfig, size: int) -> str:
    """sha256 over the world's config and what it makes of a few probe seeds: a world whose code changed
    what it renders or says changes this, whatever its version number says."""
    digest = hashlib.sha256(json.dumps(asdict(config.check()), sort_keys=True, default=str).encode())
    for seed in range(4):
        sample = make_sample(seed, config, size)
        digest.update(sample.rendered.image.tobytes() + sample.rendered.labels.tobytes() + sample.caption.encode())
    return digest.hexdigest()


def spec_for(backbone, image_encoder, size: int, scenes: int, shard_size: int,
             world: WorldConfig = WorldConfig()) -> CacheSpec:
    """The spec of a cache for ``backbone`` (+ its Composer image encoder), as a trainer of it needs it."""
    from ..models.local import weights_sha256

    v.multiple_of("size", size, backbone.vae_factor, 16, 1024)
    v.integer("scenes", scenes, 1, EVAL_SEED_BASE)
    v.integer("shard_size", shard_size, 1, 1 << 20)
    encoder = torch.nn.ModuleList([backbone.vae.encoder, backbone.vae.quant_conv])
    vae = f"{weights_sha256(encoder)}:{backbone.vae.config.scaling_factor!r}"
    text = f"{weights_sha256(backbone.text_encoder)}:{backbone.max_text_tokens}:{backbone.mask_padding}"
    return CacheSpec(FORMAT, world_fingerprint(world, size), size, vae, text,
                     image_encoder.identity if image_encoder is not None else None, scenes, shard_size)


# ---------------------------------------------------------------- rows: one scene, encoded

def world_conditions(sample: WorldSample, image_encoder=None) -> ConditionSet:
    """Every Composer condition of a shapes-world sample, from its exact ground truth.

    Caption, palette, sketch, instances (from the label map) and depth as rendered; intensity with RGB
    weights drawn from ``decompose.intensity.WEIGHT_SET``, and a masked image whose mask is a random
    box with sides in [S/4, 3S/4] (ours: the paper does not describe its masks), both from a generator
    seeded by the sample's seed alone. The image embedding only with an ``image_encoder``.
    """
    from PIL import Image

    rng = np.random.default_rng([sample.seed, 2])  # independent of the scene's and the caption's draws
    r = sample.rendered
    size = r.image.shape[0]
    grey = intensity(r.image, rng=rng)
    h, w = (int(rng.integers(size // 4, 3 * size // 4 + 1)) for _ in range(2))
    y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    mask = torch.zeros(1, 1, size, size)
    mask[..., y:y + h, x:x + w] = 1
    image = torch.from_numpy(r.image).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # (1, 3, S, S)
    conds = [Caption(sample.caption), Palette(sample.palette), Sketch(r.sketch), Instances(r.masks),
             Depth(r.depth), grey, MaskedImage(image, mask)]
    if image_encoder is not None:
        conds.append(image_encoder(Image.fromarray(r.image)))
    return ConditionSet(tuple(conds))



def encode_scenes(backbone, image_encoder, seeds: range, size: int, world: WorldConfig = WorldConfig()) -> dict:
    """The cached tensors of world seeds ``seeds`` (numpy arrays, row-major), exactly as the uncached
    trainer computes them (``world_conditions``, Backbone.encode_prompts, the VAE's posterior)."""
    samples = [make_sample(seed, world, size) for seed in seeds]
    sets = [world_conditions(s, image_encoder) for s in samples]
    images = torch.stack([s.tensors()["image"] for s in samples])  # (N, 3, S, S)
    with torch.no_grad():
        posterior = backbone.vae.encode(images.to(backbone.device, backbone.vae.dtype)).latent_dist
        prompts = backbone.encode_prompts([s.caption for s in samples])
    tokens, lengths = _real_tokens(prompts)
    boxes = np.array([_box(conds["masked_image"].mask) for conds in sets], np.int16)
    rows = {
        "seed": np.array(list(seeds), np.int64),
        "latent_mean": _row_major(posterior.mean),
        "latent_std": _row_major(posterior.std),
        "tokens": tokens.astype(np.float16),
        "token_lengths": lengths.astype(np.int32),
        "sentence": _row_major(prompts.sentence),
        "image": np.stack([s.rendered.image for s in samples]),  # (N, S, S, 3) uint8
        "labels": np.stack([conds["instances"].label_map() for conds in sets]).astype(np.uint8),
        "sketch": np.stack([conds["sketch"].lines for conds in sets]).astype(np.uint8),
        "depth": np.stack([conds["depth"].values for conds in sets]).astype(np.float16),
        "intensity": np.stack([conds["intensity"].values for conds in sets]).astype(np.float16),
        "palette": np.stack([conds["palette"].histogram for conds in sets]).astype(np.float32),
        "box": boxes,
    }
    if image_encoder is not None:
        rows["image_embedding"] = np.stack([conds["image_embedding"].vector for conds in sets]).astype(np.float16)
    return rows


def _row_major(tensor: torch.Tensor) -> np.ndarray:
    """fp16 numpy, row-major: the VAE's convolutions may hand back channels-last tensors, and an array keeping
    that layout would give the uncached trainer channels-last latents (another, slower kernel path on CPUs)."""
    return np.ascontiguousarray(tensor.float().cpu().numpy(), dtype=np.float16)


def _real_tokens(prompts) -> tuple[np.ndarray, np.ndarray]:
    """Token states of the real tokens only, concatenated (sum L_i, D), and each prompt's L_i."""
    states = prompts.tokens.float().cpu().numpy()  # (N, T, D)
    if prompts.mask is None:  # the encoder attends to every position (SD's CLIP): keep them all
        return states.reshape(-1, states.shape[-1]), np.full(len(states), states.shape[1])
    lengths = prompts.mask.sum(1).long().cpu().numpy()  # real tokens come first
    return np.concatenate([row[:n] for row, n in zip(states, lengths)]), lengths


def _box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(y, x, h, w) of a box mask (1, 1, S, S)."""
    ys, xs = torch.nonzero(mask[0, 0], as_tuple=True)
    y, x = int(ys.min()), int(xs.min())
    return y, x, int(ys.max()) - y + 1, int(xs.max()) - x + 1


# ---------------------------------------------------------------- building

def build(folder: str | Path, spec: CacheSpec, make_encoders: Callable, workers: int = 1,
          world: WorldConfig = WorldConfig(), progress: Callable[[int, int], None] | None = None) -> Path:
    """Build (or finish building) the cache ``spec`` in ``folder``: shards that are complete and of this
    spec are kept, the rest are (re)built, ``workers`` processes at a time. ``make_encoders()`` returns
    (backbone, image_encoder) in a worker; it must be picklable (a module-level function or a partial)."""
    folder = Path(folder)
    v.integer("workers", workers, 1, 64)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        old = read_spec(folder)
        if old != spec:
            raise InvalidParameter("output", f"a new folder, or one holding a cache of this spec ({folder} was "
                                             f"built for another {', '.join(old.differences(spec))})", str(folder))
    else:
        atomic_write(manifest, lambda f: f.write((json.dumps(asdict(spec), indent=2) + "\n").encode()))
    todo = [k for k in range(spec.shards) if not _shard_ok(folder, spec, k)]
    done = spec.shards - len(todo)
    if progress:
        progress(done, spec.shards)
    if workers == 1 or len(todo) <= 1:
        state = _WorkerState(make_encoders)
        for k in todo:
            _write_shard(folder, spec, k, state, world)
            done += 1
            if progress:
                progress(done, spec.shards)
        return folder
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no forked torch threads
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                                initargs=(make_encoders,)) as pool:
        for _ in pool.map(_build_in_worker, [(str(folder), spec, k, world) for k in todo]):
            done += 1
            if progress:
                progress(done, spec.shards)
    return folder


class _WorkerState:
    def __init__(self, make_encoders: Callable):
        self.backbone, self.image_encoder = make_encoders()


_STATE: _WorkerState | None = None


def _init_worker(make_encoders: Callable) -> None:
    global _STATE
    torch.set_num_threads(1)
    _STATE = _WorkerState(make_encoders)


def _build_in_worker(job) -> int:
    folder, spec, k, world = job
    _write_shard(Path(folder), spec, k, _STATE, world)
    return k


def _write_shard(folder: Path, spec: CacheSpec, k: int, state: _WorkerState, world: WorldConfig) -> None:
    from safetensors.numpy import save

    first, last = k * spec.shard_size, min((k + 1) * spec.shard_size, spec.scenes)
    parts = [encode_scenes(state.backbone, state.image_encoder, range(a, min(a + 64, last)), spec.size, world)
             for a in range(first, last, 64)]
    rows = {name: np.ascontiguousarray(np.concatenate([p[name] for p in parts])) for name in parts[0]}
    meta = {"format": str(FORMAT), "spec": spec.digest(), "first": str(first), "rows": str(last - first)}
    data = save(rows, metadata=meta)
    atomic_write(shard_path(folder, k), lambda f: f.write(data))


def shard_path(folder: Path, k: int) -> Path:
    return folder / f"shard-{k:06d}.safetensors"


def _shard_ok(folder: Path, spec: CacheSpec, k: int) -> bool:
    try:
        _shard_header(folder, spec, k)
    except (ModelError, InvalidParameter, ValueError):
        return False
    return True


def _shard_header(folder: Path, spec: CacheSpec, k: int) -> dict:
    """The header of shard k, checked by its bytes (a truncated file fails here) and against the spec."""
    path = shard_path(folder, k)
    if not path.is_file():
        raise ModelError("cache", f"{path} is missing; run `recomposer world cache` again to finish the cache")
    try:
        header = check_safetensors(path)
    except ValueError as e:
        raise ModelError("cache", f"{path} is damaged ({e.args[0] if e.args else e}); run `recomposer world cache` "
                                  "again to rebuild it") from None
    meta = header.get("__metadata__", {})
    first, rows = k * spec.shard_size, min((k + 1) * spec.shard_size, spec.scenes) - k * spec.shard_size
    if meta.get("spec") != spec.digest() or meta.get("first") != str(first) or meta.get("rows") != str(rows):
        raise ModelError("cache", f"{path} belongs to another cache; run `recomposer world cache` again to rebuild it")
    return header


def read_spec(folder: str | Path) -> CacheSpec:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise ModelError("cache", f"{folder} is not a world cache (no manifest.json); build one with "
                                  "`recomposer world cache`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return CacheSpec(**data)
    except (ValueError, TypeError):
        raise ModelError("cache", f"{path} is not a cache manifest") from None


# ---------------------------------------------------------------- reading

class WorldCache:
    """A built cache, opened for reading: ``rows(indices)`` gathers rows from the memory-mapped shards."""

    def __init__(self, folder: str | Path, expected: CacheSpec | None = None):
        self.folder = Path(folder)
        self.spec = read_spec(self.folder)
        if expected is not None:  # any number of rows will do; a trainer without an image encoder takes any
            expected = replace(expected, scenes=self.spec.scenes, shard_size=self.spec.shard_size,
                               image_encoder=expected.image_encoder or self.spec.image_encoder)
            if differ := self.spec.differences(expected):
                raise ModelError("cache", f"{self.folder} was built for another {', '.join(differ)} than this "
                                          "training run's; build a cache for it (`recomposer world cache`)")
        self._shards = [self._map(k) for k in range(self.spec.shards)]

    def __len__(self) -> int:
        return self.spec.scenes

    def _map(self, k: int) -> dict[str, np.ndarray]:
        header = _shard_header(self.folder, self.spec, k)
        path = shard_path(self.folder, k)
        start = 8 + int.from_bytes(path.open("rb").read(8), "little")
        arrays = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            shape = tuple(info["shape"])
            arrays[name] = np.memmap(path, dtype=_DTYPES[info["dtype"]], mode="r", offset=start + begin,
                                     shape=shape) if end > begin else np.zeros(shape, _DTYPES[info["dtype"]])
        arrays["token_offsets"] = np.concatenate([[0], np.cumsum(arrays["token_lengths"], dtype=np.int64)])
        return arrays

    def rows(self, indices: np.ndarray) -> dict:
        """Rows ``indices`` (any order), as ``encode_scenes`` returns them: every per-row array stacked
        (B, ...) in that order, the token states concatenated (sum L_i, D) with their ``token_lengths``.
        One gather per array and shard."""
        indices = np.asarray(indices, np.int64)
        if indices.ndim != 1 or not len(indices) or indices.min() < 0 or indices.max() >= len(self):
            raise InvalidParameter("rows", f"indices in [0, {len(self)})", indices)
        shard_of, local = np.divmod(indices, self.spec.shard_size)
        out: dict = {}
        tokens = [None] * len(indices)
        for k in np.unique(shard_of).tolist():
            pick = np.nonzero(shard_of == k)[0]
            shard, rows = self._shards[k], local[pick]
            for name, array in shard.items():
                if name in ("tokens", "token_offsets"):
                    continue
                if name not in out:
                    out[name] = np.empty((len(indices), *array.shape[1:]), array.dtype)
                out[name][pick] = array[rows]
            offsets = shard["token_offsets"]
            for i, r in zip(pick.tolist(), rows.tolist()):
                tokens[i] = shard["tokens"][offsets[r]:offsets[r + 1]]
        out["tokens"] = np.concatenate(tokens)
        return out


def permutation(count: int, epoch: int, seed: int) -> np.ndarray:
    """The order rows are visited in during ``epoch``: a fresh permutation per epoch, a pure function of
    (count, epoch, seed)."""
    return np.random.default_rng([seed, epoch, count]).permutation(count)


def batch_rows(index: int, batch_size: int, count: int, seed: int) -> np.ndarray:
    """The rows of micro-batch ``index``: positions index·B … index·B + B − 1 of the endless sequence of
    per-epoch permutations (a batch may straddle two epochs)."""
    positions = np.arange(index * batch_size, (index + 1) * batch_size)
    epochs = positions // count
    rows = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        chosen = epochs == epoch
        rows[chosen] = permutation(count, int(epoch), seed)[positions[chosen] % count]
    return rows
