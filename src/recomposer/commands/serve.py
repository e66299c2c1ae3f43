"""`recomposer serve`: the HTTP API (OpenAPI docs at /docs) and the web app on one origin, over one job queue.

    recomposer serve                                     # http://127.0.0.1:7860, one CPU worker, data in ./serve-data
    recomposer serve --devices cuda:0,cuda:1 --models ~/models --inputs ~/pictures --port 8000

``--data`` holds the queue (SQLite), uploads and results: a restart on the same folder finds every job in a stated
state (a job that was running is queued again, or failed with its reason). Binding beyond loopback prints a
warning: the server has no accounts, and anyone who reaches it can run jobs and read its folders' images.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import Dtype

LOOPBACK = ("127.0.0.1", "localhost", "::1")
ANY = ("0.0.0.0", "::")  # every interface: any Host header is served (the warning says what that means)


def serve_command(
    host: Annotated[str, typer.Option(help="Address to bind (beyond loopback: a warning).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 7860,
    data: Annotated[Path, typer.Option(help="Folder for the queue, uploads and results (kept across "
                                            "restarts).")] = Path("serve-data"),
    models: Annotated[Optional[list[Path]], typer.Option("--models", help="A folder of models, adapters and "
                                                                          "ControlNets (repeatable).")] = None,
    inputs: Annotated[Optional[list[Path]], typer.Option("--inputs", help="A folder whose images jobs may read "
                                                                          "(repeatable).")] = None,
    devices: Annotated[str, typer.Option(help="Comma-separated devices, one worker each: cpu, cuda:0,cuda:1, "
                                              "mps.")] = "cpu",
    dtype: Dtype = "fp32",
    capacity: Annotated[int, typer.Option(help="Queued jobs before new ones are refused (429).")] = 100,
) -> None:
    """Start the HTTP API and the web app (one process, one queue, one worker per device)."""
    from .. import validation as v
    from ..errors import InvalidParameter
    from ..models.device import resolve_device

    v.integer("port", port, 1, 65535)
    v.integer("capacity", capacity, 1, 1_000_000)
    chosen = tuple(d.strip() for d in devices.split(",") if d.strip())
    if not chosen or len(set(chosen)) < len(chosen):
        raise InvalidParameter("devices", "distinct comma-separated devices (cpu, cuda:N, mps)", devices)
    for device in chosen:
        resolve_device(device)  # refused now, by name, if this machine lacks it
    for field, folders in (("models", models or []), ("inputs", inputs or [])):
        for folder in folders:
            if not folder.is_dir():
                raise InvalidParameter(field, "an existing folder", str(folder))
    if host not in LOOPBACK:
        typer.echo(f"warning: binding {host} serves this machine's queue and folders to anyone who can reach it "
                   "(there are no accounts); 127.0.0.1 keeps it to this machine", err=True)
    import uvicorn

    from ..server.app import Settings, create_app

    hosts = LOOPBACK if host in LOOPBACK else None if host in ANY else LOOPBACK + (host,)  # Host headers served
    app = create_app(Settings(Path(data), tuple(models or ()), tuple(inputs or ()), chosen, hosts, dtype, capacity))
    typer.echo(f"recomposer serve: http://{host}:{port}/ (API docs at /docs), data in {data}", err=True)
    # (open event streams would hold a graceful stop for as long as their jobs run: they get 3 s)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
