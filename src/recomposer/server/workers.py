"""One worker thread per device, all claiming from one queue (jobs.py): several GPUs serve one queue.

A worker loops: claim the oldest queued job, check it again (its files may have gone since it was queued), run it
(tasks/registry.py) with a cancel check and a step callback, write its files into ``results/<job id>/`` whole or
not at all (io/files.write_folder), then record it done, failed (with the reason a user can act on) or cancelled.

What the queue file does not hold lives in ``Live``: each running job's step and its latest preview (x̂₀ of the
first sample, decoded with the model's own VAE), and the cancel flags, so a cancel takes effect before the next
step and progress costs no write per step. Previews are rationed by time: a decode runs only when the time since
the last one is at least ``PREVIEW_SHARE``⁻¹ times what a decode costs (and 0.5 s), so they take ≤ 2% of a job.

A server that stops gracefully stops its running jobs before their next step and puts them back in the queue (a
server killed outright leaves them ``running``: the next start's ``JobQueue.recover`` re-queues them).

The notices a task gives (a condition the model barely follows, a size off its own) go into the job's result record
(``route_notices``), each job its own.

Out of memory (CUDA's, or the CPU allocator's) fails the job with that reason; the worker frees the cache and takes
the next job (RELIABILITY R10). Any other unexpected error fails the job with its type and message, never the worker.
"""

import io
import logging
import threading
import time
import traceback
from pathlib import Path

import torch

from ..errors import Cancelled, RecomposerError
from ..jobs import JobQueue
from ..tasks.registry import Files, Models, job_files, parse_job, run_job
from .confine import Roots

PREVIEW_SHARE = 0.02
PREVIEW_EVERY = 0.5  # seconds, at least (and the first after as long)
PROGRESS_EVERY = 0.5  # seconds between progress writes to the queue file
log = logging.getLogger("recomposer.serve")
_job_notes = threading.local()  # the notices of the job this thread runs


def route_notices() -> None:
    """Every Notice a task gives (a weak condition, a size off the model's own) goes to the job that ran it, each
    time (not once per process as on the command line); other warnings go where they went."""
    import warnings

    from ..errors import Notice

    warnings.filterwarnings("always", category=Notice)
    previous = warnings.showwarning
    if getattr(previous, "routes_notices", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        notes = getattr(_job_notes, "notes", None)
        if notes is not None and issubclass(category, Notice):
            if str(message) not in notes:
                notes.append(str(message))
        else:
            previous(message, category, filename, lineno, file, line)

    show.routes_notices = True
    warnings.showwarning = show


class Live:
    """Running jobs' progress, previews and cancel flags, shared by the workers and the routes (thread-safe). An event
    stream ``watch``es a job: its asyncio event is set (on the stream's own loop) when the job starts or ends;
    progress is read at the stream's own pace (a wake per step would take interpreter time from the job itself)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running: dict[str, dict] = {}
        self.cancels: set[str] = set()
        self.watchers: dict[str, list] = {}

    def start(self, job_id: str, device: str) -> None:
        with self.lock:
            self.running[job_id] = {"step": 0, "total": 0, "preview": None, "version": 0, "device": device}
        self._notify(job_id)

    def update(self, job_id: str, **values) -> None:
        with self.lock:
            if job_id in self.running:
                self.running[job_id].update(values)
                self.running[job_id]["version"] += 1

    def get(self, job_id: str) -> dict | None:
        with self.lock:
            return dict(self.running[job_id]) if job_id in self.running else None

    def end(self, job_id: str) -> None:
        """After the job's final state is in the queue file."""
        with self.lock:
            self.running.pop(job_id, None)
            self.cancels.discard(job_id)
        self._notify(job_id)

    def cancel(self, job_id: str) -> None:
        with self.lock:
            self.cancels.add(job_id)

    def cancelled(self, job_id: str) -> bool:
        with self.lock:
            return job_id in self.cancels

    def watch(self, job_id: str, loop, event) -> None:
        with self.lock:
            self.watchers.setdefault(job_id, []).append((loop, event))

    def watched(self, job_id: str) -> bool:
        with self.lock:
            return bool(self.watchers.get(job_id))

    def unwatch(self, job_id: str, event) -> None:
        with self.lock:
            left = [w for w in self.watchers.get(job_id, []) if w[1] is not event]
            if left:
                self.watchers[job_id] = left
            else:
                self.watchers.pop(job_id, None)

    def _notify(self, job_id: str) -> None:
        with self.lock:
            watchers = list(self.watchers.get(job_id, ()))
        for loop, event in watchers:
            loop.call_soon_threadsafe(event.set)


class Worker(threading.Thread):
    """Runs the queue's jobs on one device until ``stop``."""

    def __init__(self, queue: JobQueue, live: Live, roots: Roots, results: Path, device: str, dtype: str = "fp32",
                 index: int = 0):
        super().__init__(name=f"worker-{index}-{device}", daemon=True)
        self.queue, self.live, self.roots, self.results = queue, live, roots, Path(results)
        self.device, self.dtype = device, dtype
        self.models = Models(device, dtype)
        self.wake, self.stopping = threading.Event(), threading.Event()
        self.threads = torch.get_num_threads()  # OpenMP's count is per thread: a new thread would take the default

    def run(self) -> None:
        torch.set_num_threads(self.threads)
        while not self.stopping.is_set():
            try:
                job = self.queue.claim(self.name)
                if job is None:
                    self.wake.wait(0.5)
                    self.wake.clear()
                    continue
                self.execute(job)
            except Exception:  # noqa: BLE001 (the queue file itself failed: locked, disk full; the worker lives on)
                log.error("worker %s: %s", self.name, traceback.format_exc())
                self.stopping.wait(2.0)

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def execute(self, job) -> None:
        self.live.start(job.id, self.device)
        _job_notes.notes = []
        try:
            body = {k: v for k, v in job.request.items() if k != "digest"}  # (the submitted body's hash: app.py)
            parsed = parse_job(body, "job", locate=self.roots.find)
            model = self.models.get(parsed)
            report = Reporter(self, job.id, getattr(model, "backbone", model))
            results = run_job(parsed, self.models, callback=report,
                              cancel=lambda: self.live.cancelled(job.id) or report.cancel_asked or
                              self.stopping.is_set())
            self.queue.finish(job.id, self.store(job.id, results))
        except Cancelled:
            if self.live.cancelled(job.id) or self.queue.get(job.id).cancel_requested:
                self.queue.cancelled(job.id)
            else:  # the server is stopping: the job waits for the next start, never silently cancelled
                self.queue.requeue(job.id, "re-queued: the server stopped while it ran")
        except RecomposerError as e:
            self.queue.fail(job.id, str(e))
        except Exception as e:  # noqa: BLE001 (a job's failure is the job's, never the worker's)
            if out_of_memory(e):
                self.release_memory()
                self.queue.fail(job.id, f"out of memory on {self.device}: {first_line(e)} (try a smaller batch or "
                                        "size)")
            else:
                log.error("job %s failed:\n%s", job.id, traceback.format_exc())
                self.queue.fail(job.id, f"internal error ({type(e).__name__}: {first_line(e)})")
        finally:
            _job_notes.notes = None
            self.live.end(job.id)

    def store(self, job_id: str, results) -> dict:
        """The job's files in results/<id>/ (all or none; a re-queued job's earlier attempt is replaced), and the
        result record: file names, images and each image's provenance."""
        import shutil

        from ..io.files import write_folder

        files = job_files(results)
        folder = self.results / job_id
        if folder.exists():
            shutil.rmtree(folder)
        write_folder(folder, files)
        notes = list(_job_notes.notes or [])  # what the task said of its result (RELIABILITY: never silent)
        if isinstance(results, Files):
            names = sorted(p.name for p in folder.rglob("*") if p.is_file())
            return {"files": names, "images": [n for n in names if n.endswith(".png")], "summary": results.summary,
                    "notes": notes}
        return {"files": sorted(files), "images": list(files), "provenance": [r.provenance for r in results],
                "notes": notes}

    def release_memory(self) -> None:
        self.models.loaded.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class Reporter:
    """The step callback of one job: progress into Live (and, now and then, into the queue file), previews of x̂₀."""

    def __init__(self, worker: Worker, job_id: str, backbone):
        self.worker, self.job_id, self.backbone = worker, job_id, backbone
        self.last_preview, self.decode_time, self.last_write = time.monotonic(), 0.0, 0.0
        self.cancel_asked = False  # the queue file says so (a cancel that came as the job was claimed)

    def __call__(self, state) -> None:
        step, total, now = state.step.index + 1, state.step.count, time.monotonic()
        values = {"step": step, "total": total}
        due = now - self.last_preview >= max(PREVIEW_EVERY, self.decode_time / PREVIEW_SHARE)
        if due and self.backbone is not None and getattr(state, "x0", None) is not None:
            started = time.monotonic()
            values["preview"] = preview_png(self.backbone, state.x0[:1])
            self.decode_time, self.last_preview = time.monotonic() - started, time.monotonic()
        self.worker.live.update(self.job_id, **values)
        if now - self.last_write >= PROGRESS_EVERY or step == total:
            self.cancel_asked = self.worker.queue.progress(self.job_id, step, total)
            self.last_write = now


def preview_png(backbone, x0: torch.Tensor) -> bytes:
    """x̂₀ (1, C, h, w) decoded by the model's VAE, as PNG bytes."""
    from ..io.images import to_pil

    with torch.no_grad():
        pixels = backbone.decode(x0.to(backbone.dtype)).float().nan_to_num(0.0)
    buffer = io.BytesIO()
    to_pil(pixels.clamp(-1, 1))[0].save(buffer, format="PNG")
    return buffer.getvalue()


def out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]
