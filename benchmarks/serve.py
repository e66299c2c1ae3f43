"""The server's figures (issue 19), each against 127.0.0.1 only, bounded in count and time, on the bundled model.

    python benchmarks/serve.py [--threads 1] [--small 1000] [-o benchmarks/results/serve.json]

1. overhead     a generate job through the API (POST, then its event stream until the end event, as the web app
                follows a job; from a client process of its own) against the same task called directly
                (tasks/registry.run_job on the same loaded model, its images written as a job's are), interleaved,
                median of 15 each.
2. polling      50 client threads (in a process of their own) poll job states while jobs run; a submitter offers
                3x the queue's capacity at once: p50/p99 status latency, 429s counted, every accepted job checked
                to finish.
3. restart      a `recomposer serve` process with 6 jobs (1 running, 5 queued) is killed (SIGKILL), started again on
                the same data folder: each job's state after the restart, then all run to the end.
4. memory       the server's resident memory after 100 and after ``--small`` small jobs (1 step each), then a job
                forced out of memory (the process's address space capped 1.5 GB above its use) and the next job.
5. confinement  >= 200 traversal variants (.., encoded, double-encoded, backslashes, symlinks, letter case, absolute
                paths, NUL, long names) sent raw (no client-side path normalisation) to every route that names a
                file: uploads, job files, --inputs files, a job's inputs and its model. Counted: answers that carried the secret's
                bytes, jobs queued with a path outside the roots, files created outside the data folder.
"""

import argparse
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

FINAL = ("done", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """Raw HTTP on one connection (paths are sent exactly as given)."""

    def __init__(self, port: int):
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if body is not None else {}
        for attempt in range(2):
            try:
                self.connection.request(method, path, body=data, headers=headers)
                response = self.connection.getresponse()
                return response.status, dict(response.getheaders()), response.read()
            except (http.client.HTTPException, OSError):
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt:
                    raise
        raise AssertionError

    def json(self, method: str, path: str, body: dict | None = None):
        status, _, raw = self.call(method, path, body)
        return status, json.loads(raw) if raw else None

    def follow(self, job_id: str) -> dict:
        """The job's final state, read from its event stream (as the web app follows a job)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        connection.request("GET", f"/api/jobs/{job_id}/events")
        response, event = connection.getresponse(), None
        for line in response:
            text = line.decode().strip()
            if text.startswith("event: "):
                event = text[7:]
            elif text.startswith("data: ") and event == "end":
                connection.close()
                return json.loads(text[6:])
        raise AssertionError(f"the stream of {job_id} ended without its end event")

    def wait(self, job_id: str, timeout: float = 600) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            _, job = self.json("GET", f"/api/jobs/{job_id}")
            if job["state"] in FINAL:
                return job
            time.sleep(0.005)
        raise TimeoutError(job_id)


def in_process_server(data: Path, capacity: int = 100, inputs: tuple = ()):
    import uvicorn

    from recomposer.server.app import Settings, create_app

    port = free_port()
    app = create_app(Settings(data, capacity=capacity, inputs=inputs))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, port, app


def stop(server, thread) -> None:
    server.should_exit = True
    thread.join(60)


GENERATE = {"task": "generate", "request": {"prompt": "a red circle above a blue square", "steps": 20, "guidance": 3}}


def api_client(port: int, orders, answers) -> None:
    """The API's side of the overhead figure, in a process of its own (as a browser or a script is): for each job
    it is sent, submit it and follow its event stream to the end; answer the seconds that took."""
    client = Client(port)
    while (job := orders.get()) is not None:
        started = time.perf_counter()
        done = client.follow(client.json("POST", "/api/jobs", job)[1]["id"])
        answers.put((time.perf_counter() - started, done["state"]))


def overhead(data: Path, repeats: int = 15) -> dict:
    import multiprocessing

    from recomposer.io.files import write_folder
    from recomposer.tasks.registry import job_files, parse_job, run_job

    server, thread, port, app = in_process_server(data)
    worker = app.state.workers[0]
    context = multiprocessing.get_context("spawn")
    orders, answers = context.Queue(), context.Queue()
    client = context.Process(target=api_client, args=(port, orders, answers))
    client.start()
    orders.put(GENERATE)  # warm: the model loads once, in the worker
    answers.get()
    direct, api = [], []
    for k in range(repeats):
        job = {**GENERATE, "request": {**GENERATE["request"], "seed": k}}
        started = time.perf_counter()
        results = run_job(parse_job(job), worker.models)
        write_folder(data.parent / "direct" / str(k), job_files(results))  # as the CLI and a job store them
        direct.append(time.perf_counter() - started)
        orders.put(job)
        seconds, state = answers.get()
        assert state == "done", state
        api.append(seconds)
    orders.put(None)
    client.join()
    stop(server, thread)
    return {"direct_s": statistics.median(direct), "api_s": statistics.median(api),
            "ratio": statistics.median(api) / statistics.median(direct), "repeats": repeats,
            "job": GENERATE, "goal": "<= 1.05"}


def poll_clients(port: int, jobs: list[str], clients: int, seconds: float, out) -> None:
    """``clients`` threads polling job states for ``seconds`` (run in its own process: the server's interpreter is
    not shared with its clients)."""
    latencies, errors = [], []
    end = time.monotonic() + seconds

    def poll(k: int) -> None:
        client = Client(port)
        while time.monotonic() < end:
            started = time.perf_counter()
            status, _ = client.json("GET", f"/api/jobs/{jobs[k % len(jobs)]}")
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors.append(status)
            time.sleep(0.02)

    threads = [threading.Thread(target=poll, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((latencies, errors))


def polling(data: Path, clients: int = 50, capacity: int = 10, seconds: float = 20.0) -> dict:
    import multiprocessing

    server, thread, port, app = in_process_server(data, capacity)
    submitter = Client(port)
    small = {"task": "generate", "request": {"prompt": "a blue square", "steps": 4, "guidance": 3}}
    submitter.wait(submitter.json("POST", "/api/jobs", small)[1]["id"])  # warm
    accepted, refused = [], 0
    for k in range(3 * capacity):
        status, body = submitter.json("POST", "/api/jobs", {**small, "request": {**small["request"], "seed": k}})
        if status == 202:
            accepted.append(body["id"])
        elif status == 429:
            refused += 1
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=poll_clients, args=(port, accepted, clients, seconds, out))
    process.start()
    latencies, errors = out.get()
    process.join()
    final = [submitter.wait(job)["state"] for job in accepted]
    stop(server, thread)
    ordered = sorted(latencies)
    return {"clients": clients, "capacity": capacity, "offered": 3 * capacity, "accepted": len(accepted),
            "refused_429": refused, "polls": len(latencies), "poll_errors": len(errors),
            "p50_ms": 1000 * ordered[len(ordered) // 2], "p99_ms": 1000 * ordered[int(len(ordered) * 0.99)],
            "finished": {s: final.count(s) for s in set(final)}, "lost": len(accepted) - len(final) +
            sum(s not in FINAL for s in final)}


def restart(data: Path) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "recomposer", "serve", "--data", str(data), "--port", str(port)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start():
        process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                Client(port).call("GET", "/api/health")
                return process
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("the server did not start")

    process = start()
    client = Client(port)
    ids = [client.json("POST", "/api/jobs", {"task": "generate", "request": {"prompt": "a red circle", "steps": 60,
                                                                            "seed": k}})[1]["id"] for k in range(6)]
    while client.json("GET", f"/api/jobs/{ids[0]}")[1]["state"] != "running":
        time.sleep(0.05)
    before = [client.json("GET", f"/api/jobs/{i}")[1]["state"] for i in ids]
    process.send_signal(signal.SIGKILL)
    process.wait()
    process = start()
    client = Client(port)
    after = [client.json("GET", f"/api/jobs/{i}")[1] for i in ids]
    final = [client.wait(i)["state"] for i in ids]
    process.terminate()
    process.wait(60)
    return {"before_kill": before, "after_restart": [a["state"] for a in after],
            "reasons": [a["reason"] for a in after], "finally": final,
            "lost": sum(s not in FINAL for s in final)}


def memory(data: Path, small_jobs: int) -> dict:
    server, thread, port, app = in_process_server(data, capacity=small_jobs + 10)
    client = Client(port)
    me = psutil.Process()
    job = {"task": "generate", "request": {"prompt": "a small green heart", "steps": 1, "guidance": 3,
                                           "allow_flat": True}}
    marks = {}
    for k in range(small_jobs):
        done = client.wait(client.json("POST", "/api/jobs", {**job, "request": {**job["request"], "seed": k}})[1]["id"])
        assert done["state"] == "done", done
        if k + 1 in (100, small_jobs):
            marks[k + 1] = me.memory_info().rss / 2**20
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (me.memory_info().vms + 1536 * 2**20, hard))
    try:
        big = {"task": "generate", "request": {"prompt": "x", "steps": 2, "batch": 64, "width": 512, "height": 512}}
        oom = client.wait(client.json("POST", "/api/jobs", big)[1]["id"])
        after = client.wait(client.json("POST", "/api/jobs", job)[1]["id"])
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    stop(server, thread)
    first, last = marks[100], marks[small_jobs]
    return {"jobs": small_jobs, "rss_mib_after_100": first, f"rss_mib_after_{small_jobs}": last,
            "growth": last / first - 1, "oom_job": {"state": oom["state"], "reason": oom["reason"]},
            "next_job": after["state"]}


def variants(secret: Path, outside: Path) -> list[str]:
    """Names that try to reach ``secret`` (outside the roots) from inside them."""
    bases = ["secret.png", "SECRET.PNG", "Secret.png"]
    ups = ["../", "../../", "../../../", "..\\", "..\\..\\", "....//", "..;/", ".../", "./../", "/..", "%2e%2e/",
           "%2e%2e%2f", "..%2f", "%2e%2e%5c", "%252e%252e%252f", "..%252f", "%c0%ae%c0%ae/", "..%c0%af",
           "%uff0e%uff0e/", "．．/"]
    names = [up * depth + base for up in ups for depth in (1, 2, 3) for base in bases]
    names += [str(secret), str(secret).upper(), "//" + str(secret), str(outside) + "/secret.png",
              "file://" + str(secret), "http://127.0.0.1/secret.png", "link/secret.png", "link/../link/secret.png",
              "escape.png", "ESCAPE.PNG", "a\0.png", "../secret.png\0.png", "secret.png%00", "", ".", "..", "/",
              "x" * 5000, "~/" + secret.name, "$HOME/secret.png", "results/../../secret.png",
              "uploads/../../secret.png"]
    return names


def confinement(data: Path) -> dict:
    from urllib.parse import quote

    root = data.parent
    secret = root / "secret.png"
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(secret)
    (root / "inputs").mkdir(exist_ok=True)  # an --inputs folder beside the secret
    Image.new("RGB", (8, 8), (4, 5, 6)).save(root / "inputs" / "mine.png")
    server, thread, port, app = in_process_server(data, inputs=(root / "inputs",))
    client = Client(port)
    os.symlink(root, data / "uploads" / "link")
    os.symlink(secret, data / "uploads" / "escape.png")
    secret_bytes = secret.read_bytes()
    before = {p for p in root.rglob("*") if data not in p.parents and p != data}
    names = variants(secret, root)
    leaks, queued, answers, requests = [], 0, {}, 0
    job_id = "0" * 32
    for name in names:
        raw = name.replace("\0", "%00")
        for path in (f"/api/uploads/{raw}", f"/api/jobs/{job_id}/files/{raw}", f"/api/inputs/{raw}",
                     f"/api/uploads/{quote(name)}", f"/api/jobs/{job_id}/files/{quote(name)}",
                     f"/api/inputs/{quote(name)}"):
            if any(c in path for c in " \r\n"):
                path = path.replace(" ", "%20")
            try:
                status, _, body = client.call("GET", path)
            except (http.client.HTTPException, OSError, UnicodeEncodeError):
                status, body = "refused by the client", b""
            requests += 1
            answers[status] = answers.get(status, 0) + 1
            if secret_bytes in body:
                leaks.append(path)
        for body in ({"task": "instruct", "request": {"instruction": "x"}, "inputs": {"image": name}},
                     {"task": "composite", "inputs": {"background": name, "mask": name}},
                     {"task": "compose", "inputs": {"sketch": name}},
                     {"task": "generate", "request": {"prompt": "x"}, "model": name}):
            status, reply = client.json("POST", "/api/jobs", body)
            requests += 1
            answers[status] = answers.get(status, 0) + 1
            if status == 202:
                queued += 1
                client.json("DELETE", f"/api/jobs/{reply['id']}")
    after = {p for p in root.rglob("*") if data not in p.parents and p != data}
    stop(server, thread)
    return {"variants": len(names), "requests": requests, "answers": {str(k): v for k, v in answers.items()},
            "secret_read": len(leaks), "leaks": leaks, "jobs_queued_outside": queued,
            "files_created_outside": sorted(str(p) for p in after - before)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--only", default="overhead,polling,restart,memory,confinement")
    parser.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results/serve.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {"threads": args.threads, "cpu": psutil.cpu_count(), "torch": torch.__version__}
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    try:
        for name in args.only.split(","):
            started = time.monotonic()
            if name == "memory":
                report[name] = memory(work / name / "data", args.small)
            else:
                report[name] = globals()[name](work / name / "data")
            report[name]["seconds"] = round(time.monotonic() - started, 1)
            print(name, json.dumps(report[name], default=str)[:600], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
