"""The HTTP API and the web app, one FastAPI app over one job queue (issue 19). The OpenAPI schema is at
/openapi.json, drawn as a page at /docs (our own page, offline: FastAPI's loads Swagger UI from a CDN).

    GET    /api/tasks                   every task: its request fields (name, type, default) and its inputs
    POST   /api/jobs                    {task, request, inputs, model, key?, client?, release_on_disconnect?} -> 202
    GET    /api/jobs                    the history, newest first
    GET    /api/jobs/{id}               its state (queued, running, done, failed, cancelled; 404 "unknown")
    GET    /api/jobs/{id}/events        server-sent events: progress (step, total, preview), then the final state
    GET    /api/jobs/{id}/files/{name}  a file of a finished job (images carry their provenance)
    GET    /api/jobs/{id}/provenance    each image's provenance record
    DELETE /api/jobs/{id}               cancel: a queued job at once, a running one before its next step
    DELETE /api/clients/{client}        cancel a client's queued jobs
    POST   /api/uploads                 an image (multipart, field ``file``) through the one image reader -> its name
    GET    /api/uploads/{name}          an uploaded image
    GET    /api/inputs/{name}           an image of an ``--inputs`` folder (by a name inside it)
    GET    /api/models                  models, adapters and ControlNets found under the ``--models`` folders

Inputs and models are names inside the server's folders (server/confine.py): uploads, finished jobs' files,
``--inputs`` folders, ``--models`` folders; no URL is ever fetched. Requests that change state and come from
another origin (an ``Origin`` other than this server's, or ``Sec-Fetch-Site: cross-site``) are refused (403).
Errors are JSON: ``{"error": {"field": ..., "message": ...}}``; a full queue is 429 with ``Retry-After``.
"""

import asyncio
import base64
import hashlib
import json
import os
import time
from urllib.parse import urlsplit
from dataclasses import MISSING, asdict, dataclass, fields, is_dataclass
from pathlib import Path

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from ..errors import InvalidParameter, RecomposerError
from ..jobs import FINAL, JobQueue, QueueFull
from ..tasks.controls import BUNDLED
from ..tasks.registry import TASKS, parse_job
from .confine import Roots
from .workers import Live, Worker, route_notices

STATIC = Path(__file__).parent / "static"
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY = 2**20  # bytes of a job's JSON
EVENTS_PER_S = 10  # progress events a stream sends at most


@dataclass
class Settings:
    data: Path  # the queue file, uploads/ and results/
    models: tuple[Path, ...] = ()  # folders searched for models, adapters, ControlNets
    inputs: tuple[Path, ...] = ()  # folders whose files jobs may read
    devices: tuple[str, ...] = ("cpu",)  # one worker each
    hosts: tuple[str, ...] | None = LOOPBACK_HOSTS  # Host headers served (DNS rebinding); None: any (0.0.0.0)
    dtype: str = "fp32"
    capacity: int = 100  # queued jobs before 429
    workers: bool = True  # start the workers (tests of the routes alone say False)


def create_app(settings: Settings) -> FastAPI:
    data = Path(settings.data)
    settings.models = tuple(Path(os.path.realpath(p)) for p in settings.models)  # as jobs name them
    (data / "uploads").mkdir(parents=True, exist_ok=True)
    (data / "results").mkdir(parents=True, exist_ok=True)
    queue = JobQueue(data / "queue.sqlite", capacity=settings.capacity)
    roots = Roots(uploads=data / "uploads", results=data / "results",
                  **{f"inputs{k}": p for k, p in enumerate(settings.inputs)})
    model_roots = Roots(**{f"models{k}": p for k, p in enumerate(settings.models)})
    live = Live()
    workers = [Worker(queue, live, roots, data / "results", device, settings.dtype, k)
               for k, device in enumerate(settings.devices)]
    tied: set[str] = set()  # queued jobs to cancel when their event stream closes

    async def lifespan(app):
        route_notices()
        app.state.recovered = queue.recover()  # jobs a dead server left running: re-queued or failed, with reasons
        if settings.workers:
            for worker in workers:
                worker.start()
        yield
        for worker in workers:
            worker.stop()
        for worker in workers:
            if worker.is_alive():
                await asyncio.to_thread(worker.join, 60)

    app = FastAPI(title="recomposer", summary="Every recomposer task over one persistent job queue.",
                  lifespan=lifespan, docs_url=None, redoc_url=None)  # /docs is ours: Swagger UI loads from a CDN
    app.state.queue, app.state.live, app.state.workers, app.state.settings = queue, live, workers, settings

    @app.middleware("http")
    async def same_origin_only(request: Request, call_next):
        host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
        if settings.hosts is not None and host not in settings.hosts:  # a rebound DNS name reaching a local server
            return error(421, "host", "one of this server's own names: " + ", ".join(settings.hosts), host)
        if request.method in STATE_CHANGING:
            origin = request.headers.get("origin")
            own = f"{request.url.scheme}://{request.headers.get('host', '')}"
            if (origin is not None and origin != own) or request.headers.get("sec-fetch-site") == "cross-site":
                return error(403, "origin", f"requests that change state come from this server's own pages ({own})",
                             origin or "cross-site")
        return await call_next(request)

    @app.exception_handler(RecomposerError)
    async def refused(request: Request, e: RecomposerError):
        return error(422, getattr(e, "field", "request"), str(e))

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):  # (logged with its traceback by the server)
        return error(500, "server", f"internal error ({type(e).__name__}); the server's log has the details")

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, e: RequestValidationError):
        first = (e.errors() or [{}])[0]
        field = ".".join(str(part) for part in first.get("loc", ("request",)))
        return error(422, field, first.get("msg", "malformed request"))

    @app.get("/api/tasks")
    def tasks() -> dict:
        """Every task: its request fields (name, type, default), its inputs, and what it runs on."""
        return {name: {"fields": describe(task.request), "inputs": list(task.inputs), "required": list(task.required),
                       "model": task.model} for name, task in TASKS.items()}

    @app.post("/api/jobs", status_code=202)
    async def submit(request: Request):
        """Queue a job: {task, request, inputs, model}, and optionally key (idempotent submit), client and
        release_on_disconnect. 202 with the job; 422 naming the bad field; 429 with Retry-After when full."""
        body = await json_body(request)
        extra = {k: body.pop(k) for k in ("key", "client", "release_on_disconnect") if k in body}
        for name in ("key", "client"):
            if name in extra and (not isinstance(extra[name], str) or not 0 < len(extra[name]) <= 200):
                raise InvalidParameter(name, "a string of 1 to 200 characters", extra[name])
        if not isinstance(extra.get("release_on_disconnect", False), bool):
            raise InvalidParameter("release_on_disconnect", "true or false", extra["release_on_disconnect"])
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if "key" in extra and (known := await asyncio.to_thread(queue.by_key, extra["key"])) is not None:
            if known.request.get("digest") != digest:  # the same key for another job: never a silent mix-up
                return error(409, "key", "a new key: this one names another job", extra["key"])
            return JSONResponse(shown(known), status_code=202)
        job = {**await asyncio.to_thread(check, body), "digest": digest}
        try:
            queued = await asyncio.to_thread(queue.submit, job["task"], job, extra.get("key"), extra.get("client"))
        except QueueFull as e:
            return error(429, "queue", str(e), headers={"Retry-After": str(int(e.retry_after + 0.999))})
        if extra.get("release_on_disconnect"):
            tied.add(queued.id)
        for worker in workers:
            worker.wake.set()
        return JSONResponse(shown(queued), status_code=202)

    def check(body: dict) -> dict:
        """The job, every field checked and every name resolved inside the server's folders (server/confine.py)."""
        model = body.get("model")
        if model is not None:  # a folder (diffusers, parts) or a single .safetensors file, inside --models
            single = isinstance(model, str) and model.lower().endswith(".safetensors")
            body = {**body, "model": str(model_roots.find(model, "model", folder=not single))}
        request = body.get("request") or {}
        if isinstance(request, dict) and isinstance(request.get("controls"), list):  # each net inside --models too
            nets = [dict(c, net=str(model_roots.find(c.get("net"), f"request.controls.{k}.net", folder=True)))
                    if isinstance(c, dict) and not str(c.get("net", "")).startswith(BUNDLED) else c
                    for k, c in enumerate(request["controls"])]
            body = {**body, "request": {**request, "controls": nets}}
        parsed = parse_job(body, "job", locate=roots.find)
        return {"task": parsed.task, "request": body.get("request") or {}, "model": parsed.model,
                "inputs": {k: str(p) for k, p in parsed.inputs.items()}}

    @app.get("/api/jobs")
    def history(limit: int = 50) -> list:
        """The jobs, newest first, with their requests, states, reasons and results."""
        return [shown(j) for j in queue.jobs(limit=max(1, min(limit, 500)))]

    @app.get("/api/jobs/{job_id}")
    def status(job_id: str):
        """One job's state: queued, running (with step and total), done, failed (with the reason), cancelled;
        404 with state "unknown" for an id this queue never had."""
        job = queue.get(job_id)
        return JSONResponse(shown(job), status_code=404 if job.state == "unknown" else 200)

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str, request: Request):
        """Server-sent events: progress (at most 10 a second, each with the latest preview of x̂₀), then the final
        state at once."""

        async def stream():
            changed, seen, last, sent = asyncio.Event(), -1, None, 0.0
            live.watch(job_id, asyncio.get_running_loop(), changed)
            try:
                while True:
                    now = live.get(job_id)
                    wait = 1 / EVENTS_PER_S if now is not None else 1.0
                    if now is not None and now["version"] != seen:
                        due = sent + 1 / EVENTS_PER_S - time.monotonic()
                        if due <= 0:
                            seen, sent = now["version"], time.monotonic()
                            yield sse("progress", progress(now))
                        else:
                            wait = due
                    elif now is None:
                        job = await asyncio.to_thread(queue.get, job_id)
                        if job.state in FINAL or job.state == "unknown":
                            yield sse("end", shown(job))
                            return
                        if job.state != last:
                            last = job.state
                            yield sse("state", shown(job))
                    if await request.is_disconnected():
                        return
                    try:
                        await asyncio.wait_for(changed.wait(), timeout=wait)
                    except asyncio.TimeoutError:
                        pass
                    changed.clear()
            finally:
                live.unwatch(job_id, changed)
                if job_id in tied and not live.watched(job_id):  # its client went away (no stream left on it)
                    tied.discard(job_id)
                    # (not awaited: a stream closed by its client is being cancelled; the executor runs it anyway)
                    asyncio.get_running_loop().run_in_executor(None, release_if_queued, job_id)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    def release_if_queued(job_id: str) -> None:
        if queue.get(job_id).state == "queued":
            queue.cancel(job_id)

    @app.get("/api/jobs/{job_id}/files/{name:path}")
    def result_file(job_id: str, name: str):
        """A file of a finished job (its images carry their provenance)."""
        path = roots.find(f"{job_id}/{name}", "name", only=("results",))
        return FileResponse(path, headers={"Cache-Control": "no-store"})

    @app.get("/api/jobs/{job_id}/provenance")
    def provenance(job_id: str):
        """Each image's provenance record (409 until the job is done)."""
        job = queue.get(job_id)
        if job.state != "done":
            return error(404 if job.state == "unknown" else 409, "job", f"is {job.state}, not done", job_id)
        return (job.result or {}).get("provenance", [])

    @app.delete("/api/jobs/{job_id}")
    def cancel(job_id: str):
        """Cancel: a queued job at once, a running one before its next step."""
        job = queue.get(job_id)
        if job.state == "unknown":
            return JSONResponse(shown(job), status_code=404)
        after = queue.cancel(job_id)
        if after.state == "running":  # (claimed between the two reads too: the worker sees the flag)
            live.cancel(job_id)
        return shown(after)

    @app.delete("/api/clients/{client}")
    def release(client: str):
        """Cancel every queued job of a client."""
        return {"cancelled": queue.release(client)}

    @app.post("/api/uploads", status_code=201)
    async def upload(file: UploadFile = File(...)):
        """An image (multipart field ``file``), read by the command line's image reader (format allow-list, pixel
        cap); stored as PNG under its content hash, which is its name for a job's inputs."""
        from ..io.images import MAX_BYTES, open_image

        raw = await file.read(MAX_BYTES + 1)
        image = await asyncio.to_thread(open_image, raw, "file")  # format allow-list, pixel cap, as the CLI reads
        name = hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()[:32] + ".png"
        target = data / "uploads" / name
        if not target.exists():
            from ..io.files import save_png

            await asyncio.to_thread(save_png, image, target, {"what": "an image uploaded to recomposer serve"})
        return JSONResponse({"name": name, "width": image.width, "height": image.height}, status_code=201)

    @app.get("/api/uploads/{name}")
    def uploaded(name: str):
        """An uploaded image."""
        return FileResponse(roots.find(name, "name", only=("uploads",)))

    @app.get("/api/inputs/{name:path}")
    def input_file(name: str):
        """An image of an ``--inputs`` folder (a reused job's input, shown in the page), by a name inside it."""
        inputs = tuple(k for k in roots.folders if k.startswith("inputs"))
        if not inputs:
            return error(404, "name", "a file of an --inputs folder (this server has none)", name)
        return FileResponse(roots.find(name, "name", only=inputs))

    @app.get("/api/models")
    def models() -> dict:
        """Models, adapters and ControlNets found under the --models folders (and the bundled model)."""
        from .catalogue import catalogue

        return catalogue(settings.models)

    @app.get("/api/health")
    def health() -> dict:
        """The workers and the number of queued jobs."""
        return {"workers": [{"device": w.device, "alive": w.is_alive()} for w in workers],
                "queued": len(queue.jobs(("queued",), limit=10_000))}

    @app.get("/docs", include_in_schema=False)
    def docs():
        return FileResponse(STATIC / "docs.html")

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="app")
    return app


def error(status: int, field: str, message: str, given: object = None, headers: dict | None = None) -> JSONResponse:
    body = {"field": field, "message": message, **({"given": str(given)[:200]} if given is not None else {})}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


async def json_body(request: Request) -> dict:
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise InvalidParameter("content-type", "application/json", request.headers.get("content-type"))
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise InvalidParameter("body", f"at most {MAX_BODY} bytes of JSON", f"{len(raw)} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidParameter("body", "a JSON object", "not JSON (or nested too deeply)") from None
    if not isinstance(body, dict):
        raise InvalidParameter("body", "a JSON object", type(body).__name__)
    return body


def shown(job) -> dict:
    """A job as the API shows it (the request as submitted; inputs by the names the client gave are resolved)."""
    out = job.as_json()
    out.pop("client", None)
    return out


def progress(now: dict) -> dict:
    preview = now["preview"]
    return {"state": "running", "step": now["step"], "total": now["total"],
            "preview": None if preview is None else "data:image/png;base64," + base64.b64encode(preview).decode()}


def sse(event: str, payload: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(payload, default=str)}\n\n"


def choices() -> dict[str, tuple]:
    """The fields whose values come from a fixed list, by name (a form shows them as a menu)."""
    from ..requests import COMPOSITE_APPLICATIONS, CONTROL_MODES, INVERSION_METHODS
    from ..schedulers import NAMES

    return {"scheduler": NAMES, "application": tuple(COMPOSITE_APPLICATIONS), "method": INVERSION_METHODS,
            "space": ("x0", "xt"), "mode": CONTROL_MODES}


def describe(cls) -> list[dict]:
    """A request dataclass's fields for a form: name, type, default (JSON), required, and the allowed values of a
    field that has a fixed list."""
    menus = choices()
    out = []
    for f in fields(cls):
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        default = asdict(default) if is_dataclass(default) else default
        kind = f.type.__name__ if isinstance(f.type, type) else str(f.type).replace("typing.", "")
        out.append({"name": f.name, "type": kind.replace("recomposer.requests.", ""), "default": default,
                    "required": f.default is MISSING and f.default_factory is MISSING,
                    **({"choices": list(menus[f.name])} if f.name in menus else {})})
    return out
