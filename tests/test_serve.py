"""`recomposer serve`'s HTTP API (server/app.py) over the job queue: jobs run on the bundled model with progress and
previews, submit is idempotent, a full queue answers 429, cancel works queued and running, a restart loses nothing,
an out-of-memory is a failed job and the next runs, no name reaches outside the server's folders, and requests that
change state from another origin are refused."""

import io
import json
import os
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from recomposer.server.app import Settings, create_app

FINAL = ("done", "failed", "cancelled")
OWN = "http://127.0.0.1:7860"


def client_of(app) -> TestClient:
    return TestClient(app, base_url=OWN)  # a loopback name: the server answers no other Host (DNS rebinding)


def wait(client, job_id, states=FINAL, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['state']}")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def server(tmp_path):
    with client_of(create_app(Settings(tmp_path / "data", inputs=(tmp_path / "inputs",)))) as client:
        yield client


@pytest.fixture
def idle(tmp_path):
    """The routes without workers: jobs stay queued."""
    with client_of(create_app(Settings(tmp_path / "data", capacity=3, workers=False))) as client:
        yield client


def test_a_generate_job_runs_with_progress_a_preview_and_provenance(server):
    job = server.post("/api/jobs", json={"task": "generate", "request": {"prompt": "a red circle", "steps": 80,
                                                                         "guidance": 3, "seed": 5}})
    assert job.status_code == 202 and job.json()["state"] == "queued"
    with server.stream("GET", f"/api/jobs/{job.json()['id']}/events") as stream:
        events = [line for line in stream.iter_lines() if line.startswith(("event:", "data:"))]
    kinds = [line.split(": ", 1)[1] for line in events if line.startswith("event:")]
    assert kinds[-1] == "end" and "progress" in kinds, kinds
    progress = [json.loads(e.split(": ", 1)[1]) for e, k in zip(events[1::2], kinds) if k == "progress"]
    assert any((p["preview"] or "").startswith("data:image/png;base64,") for p in progress)
    assert progress[-1]["total"] == 80
    done = json.loads(events[-1].split(": ", 1)[1])
    assert done["state"] == "done" and done["result"]["images"] == ["5.png"]
    image = server.get(f"/api/jobs/{done['id']}/files/5.png")
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (64, 64)
    record = server.get(f"/api/jobs/{done['id']}/provenance").json()[0]
    assert record["task"] == "generate" and record["params"]["seed"] == 5 and record["params"]["steps"] == 80


def test_decompose_then_compose_from_its_saved_conditions_and_another_image(server, tmp_path):
    from recomposer.world.render import render
    from recomposer.world.scene import sample_scene

    a, b = (Image.fromarray(render(sample_scene(s), 64).image) for s in (3, 4))
    names = [server.post("/api/uploads", files={"file": ("x.png", png(im), "image/png")}).json()["name"]
             for im in (a, b)]
    first = server.post("/api/jobs", json={"task": "decompose", "inputs": {"image": names[0]}}).json()
    first = wait(server, first["id"])
    assert first["state"] == "done", first["reason"]
    assert {"sketch.json", "sketch.png", "palette.json", "sheet.png"} <= set(first["result"]["files"])
    compose = server.post("/api/jobs", json={"task": "compose", "request": {"caption": "a red square", "steps": 4},
                                             "inputs": {"sketch": f"{first['id']}/sketch.json",
                                                        "palette": names[1]}}).json()
    done = wait(server, compose["id"])
    assert done["state"] == "done", done["reason"]
    kinds = list(done["result"]["provenance"][0]["conditions"])
    assert sorted(kinds) == ["caption", "palette", "sketch"]
    assert any(note.startswith("caption: this model barely follows") for note in done["result"]["notes"])
    again = wait(server, server.post("/api/jobs", json={"task": "compose", "request": {"caption": "a cat", "steps": 2},
                                                        "inputs": {"palette": names[1]}}).json()["id"])
    assert any(note.startswith("caption:") for note in again["result"]["notes"])  # each job its own notices


def test_frames_are_interpolated_between_two_images_under_a_shared_sketch(server):
    from recomposer.world.render import render
    from recomposer.world.scene import sample_scene

    names = [server.post("/api/uploads", files={"file": ("x.png", png(Image.fromarray(render(sample_scene(s), 64)
                                                                                      .image)), "image/png")}
                         ).json()["name"] for s in (3, 4)]
    job = server.post("/api/jobs", json={"task": "interpolate", "request": {"frames": 3, "steps": 3},
                                         "inputs": {"first": names[0], "last": names[1], "sketch": names[0]}}).json()
    done = wait(server, job["id"])
    assert done["state"] == "done" and len(done["result"]["images"]) == 3, done["reason"]
    assert {p["task"] for p in done["result"]["provenance"]} == {"interpolate"}
    assert all(p["seed"] == 0 for p in done["result"]["provenance"])  # one seed: the frames differ by their kinds
    fields = {f["name"]: f for f in server.get("/api/tasks").json()["interpolate"]["fields"]}
    assert "dpmpp_2m" in fields["scheduler"]["choices"] and fields["frames"]["default"] == 8


def test_an_inverted_photo_is_edited_by_prompt_to_prompt(server, photo):
    name = server.post("/api/uploads", files={"file": ("a.png", png(photo), "image/png")}).json()["name"]
    inverted = server.post("/api/jobs", json={"task": "invert", "inputs": {"image": name},
                                              "request": {"prompt": "a red cat", "method": "ddim", "steps": 4}}).json()
    inverted = wait(server, inverted["id"])
    assert inverted["state"] == "done" and "inversion.json" in inverted["result"]["files"], inverted["reason"]
    inversion = {"inversion": f"{inverted['id']}/inversion.json"}
    wrong = server.post("/api/jobs", json={"task": "p2p", "inputs": inversion, "request": {
        "source": "a red dog", "edited": "a blue dog", "steps": 4}}).json()
    edit = server.post("/api/jobs", json={"task": "p2p", "inputs": inversion, "request": {
        "source": "a red cat", "edited": "a blue cat", "steps": 4}}).json()
    wrong, edit = wait(server, wrong["id"]), wait(server, edit["id"])
    assert wrong["state"] == "failed" and wrong["reason"].startswith("source:")
    assert edit["state"] == "done" and len(edit["result"]["images"]) == 2, edit["reason"]


def test_visii_learns_an_instruction_that_instruct_then_applies(server):
    from recomposer.world.render import render
    from recomposer.world.scene import sample_scene

    before, after, other = (Image.fromarray(render(sample_scene(s), 64).image) for s in (3, 4, 5))
    names = {k: server.post("/api/uploads", files={"file": ("x.png", png(im), "image/png")}).json()["name"]
             for k, im in (("before", before), ("after", after), ("image", other))}
    learnt = server.post("/api/jobs", json={"task": "visii", "request": {"steps": 3},
                                            "inputs": {"before": names["before"], "after": names["after"]}}).json()
    learnt = wait(server, learnt["id"])
    assert learnt["state"] == "done" and "instruction.safetensors" in learnt["result"]["files"], learnt["reason"]
    sha = learnt["result"]["summary"]["sha256"]
    applied = server.post("/api/jobs", json={"task": "instruct", "request": {"instruction": "", "learned": sha,
                                                                             "steps": 3},
                                             "inputs": {"image": names["image"],
                                                        "learned": f"{learnt['id']}/instruction.safetensors"}})
    applied = wait(server, applied.json()["id"])
    assert applied["state"] == "done", applied["reason"]
    assert applied["result"]["provenance"][0]["params"]["learned"] == sha


def test_two_workers_serve_one_queue(tmp_path):
    """(On a GPU machine, one per device: --devices cuda:0,cuda:1; here two CPU workers.)"""
    with client_of(create_app(Settings(tmp_path / "data", devices=("cpu", "cpu")))) as client:
        ids = [client.post("/api/jobs", json={"task": "generate", "request": {"prompt": "x", "steps": 30,
                                                                              "seed": k}}).json()["id"]
               for k in range(4)]
        jobs = [wait(client, i) for i in ids]
    assert [j["state"] for j in jobs] == ["done"] * 4
    assert {j["worker"] for j in jobs} == {"worker-0-cpu", "worker-1-cpu"}


def test_submit_is_idempotent_by_key_and_a_full_queue_answers_429(idle):
    body = {"task": "generate", "request": {"prompt": "x"}, "key": "k1"}
    first, again = idle.post("/api/jobs", json=body).json(), idle.post("/api/jobs", json=body).json()
    assert first["id"] == again["id"]
    for k in range(2):
        assert idle.post("/api/jobs", json={**body, "key": f"k{k + 2}"}).status_code == 202
    other = idle.post("/api/jobs", json={**body, "request": {"prompt": "y"}})  # key k1, another job
    assert other.status_code == 409 and other.json()["error"]["field"] == "key"
    full = idle.post("/api/jobs", json={**body, "key": "k9"})
    assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1 and "full" in full.json()["error"][
        "message"]
    assert len(idle.get("/api/jobs").json()) == 3  # refused, never half-queued


def test_states_are_explicit_and_unknown_ids_say_so(idle):
    unknown = idle.get("/api/jobs/nope")
    assert unknown.status_code == 404 and unknown.json()["state"] == "unknown"
    assert idle.delete("/api/jobs/nope").status_code == 404
    job = idle.post("/api/jobs", json={"task": "p2p", "request": {"source": "a cat", "edited": "a dog"}}).json()
    cancelled = idle.delete(f"/api/jobs/{job['id']}").json()
    assert cancelled["state"] == "cancelled" and "before it ran" in cancelled["reason"]


def test_a_running_job_is_cancelled_within_a_step(server):
    job = server.post("/api/jobs", json={"task": "generate", "request": {"prompt": "x", "steps": 400}}).json()
    running = wait(server, job["id"], ("running",))
    while server.get(f"/api/jobs/{job['id']}").json()["step"] == 0 and running:
        time.sleep(0.05)
        running = server.app.state.live.get(job["id"])
        if running and running["step"] > 0:
            break
    server.delete(f"/api/jobs/{job['id']}")
    done = wait(server, job["id"])
    assert done["state"] == "cancelled" and "while it ran" in done["reason"]
    assert done["step"] < 400


def test_a_client_that_goes_away_frees_its_queued_job_when_it_asked(idle):
    tied = idle.post("/api/jobs", json={"task": "p2p", "request": {"source": "a cat", "edited": "a dog"},
                                        "release_on_disconnect": True}).json()
    kept = idle.post("/api/jobs", json={"task": "p2p", "request": {"source": "a cat", "edited": "a cow"}}).json()
    for job in (tied, kept):
        with idle.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
            next(stream.iter_lines())  # the client reads one event, then goes away
    end = time.monotonic() + 10
    while idle.get(f"/api/jobs/{tied['id']}").json()["state"] != "cancelled" and time.monotonic() < end:
        time.sleep(0.05)
    assert idle.get(f"/api/jobs/{tied['id']}").json()["state"] == "cancelled"
    assert idle.get(f"/api/jobs/{kept['id']}").json()["state"] == "queued"
    assert idle.delete("/api/clients/nobody").json() == {"cancelled": 0}


def test_a_restart_loses_no_job(tmp_path):
    settings = Settings(tmp_path / "data", workers=False)
    with client_of(create_app(settings)) as client:
        ids = [client.post("/api/jobs", json={"task": "generate", "request": {"prompt": f"x{k}"}}).json()["id"]
               for k in range(3)]
        client.app.state.queue.claim("a worker that dies")  # the first job was running when the process died
    with client_of(create_app(settings)) as client:
        jobs = [client.get(f"/api/jobs/{i}").json() for i in ids]
        assert [j["state"] for j in jobs] == ["queued"] * 3
        assert "re-queued" in jobs[0]["reason"] and jobs[0]["attempts"] == 1


def test_a_graceful_stop_puts_a_running_job_back_in_the_queue(tmp_path):
    from recomposer.jobs import JobQueue

    with client_of(create_app(Settings(tmp_path / "data"))) as client:
        job = client.post("/api/jobs", json={"task": "generate", "request": {"prompt": "x", "steps": 1000}}).json()
        wait(client, job["id"], ("running",))
        while client.app.state.live.get(job["id"]) and not client.app.state.live.get(job["id"])["step"]:
            time.sleep(0.05)
    again = JobQueue(tmp_path / "data" / "queue.sqlite").get(job["id"])  # after the server's shutdown
    assert (again.state, again.attempts) == ("queued", 0) and "server stopped" in again.reason


def test_out_of_memory_fails_the_job_with_its_reason_and_the_next_job_runs(server, monkeypatch):
    from recomposer.requests import P2PRequest
    from recomposer.tasks import registry

    def exhausted(model, request, paths, cancel=None, callback=None):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 1099511627776 bytes")

    monkeypatch.setitem(registry.TASKS, "oom", registry.Task(P2PRequest, (), (), exhausted, model="none"))
    failed = server.post("/api/jobs", json={"task": "oom", "request": {"source": "a", "edited": "b"}}).json()
    after = server.post("/api/jobs", json={"task": "generate", "request": {"prompt": "x", "steps": 2}}).json()
    failed, after = wait(server, failed["id"]), wait(server, after["id"])
    assert failed["state"] == "failed" and failed["reason"].startswith("out of memory on cpu")
    assert after["state"] == "done"


def test_bad_requests_are_refused_by_field_before_they_are_queued(server):
    cases = [({"task": "paint"}, "job.task"),
             ({"task": "generate", "request": {"prompt": "x", "stepz": 3}}, "job.request"),
             ({"task": "generate", "request": {"prompt": "x", "steps": 0}}, "steps"),
             ({"task": "instruct", "request": {"instruction": "x"}}, "job.inputs"),
             ({"task": "generate", "request": {"prompt": "x"}, "model": "/etc"}, "model"),
             ({"task": "generate", "request": {"prompt": "x"}, "key": 7}, "key"),
             ({"task": "generate", "request": {"prompt": "x", "controls": [{"net": "/tmp"}]},
               "inputs": {}}, "request.controls.0.net"),  # a ControlNet outside --models
             ({"task": "compose", "request": {"weights": [{"kind": "palette", "scale": "big"}]}}, "weight"),
             ({"task": "p2p", "request": {"source": "a", "edited": "b", "edit": [1]}}, "job.request.edit")]
    for body, field in cases:
        answer = server.post("/api/jobs", json=body)
        assert answer.status_code == 422 and field in answer.json()["error"]["field"] + answer.json()["error"][
            "message"], (body, answer.json())
    assert server.post("/api/jobs", content=b"{}", headers={"content-type": "text/plain"}).status_code == 422
    assert server.get("/api/jobs").json() == []


def test_a_depth_from_an_image_without_a_depth_model_fails_by_name(server, photo):
    name = server.post("/api/uploads", files={"file": ("a.png", png(photo), "image/png")}).json()["name"]
    job = server.post("/api/jobs", json={"task": "compose", "request": {"steps": 2}, "inputs": {"depth": name}})
    failed = wait(server, job.json()["id"])
    assert failed["state"] == "failed" and failed["reason"].startswith("inputs.depth:")
    refused = server.post("/api/jobs", json={"task": "compose", "request": {"steps": 2, "drawn": ["depth"]},
                                             "inputs": {"depth": name}})
    assert "grayscale" in wait(server, refused.json()["id"])["reason"]  # a colour picture is no depth map
    ramp = Image.fromarray((np.arange(64)[None].repeat(64, 0) * 4).astype(np.uint8), "L")
    ramp_name = server.post("/api/uploads", files={"file": ("d.png", png(ramp), "image/png")}).json()["name"]
    drawn = server.post("/api/jobs", json={"task": "compose", "request": {"steps": 2, "drawn": ["depth"]},
                                           "inputs": {"depth": ramp_name}})
    done = wait(server, drawn.json()["id"])
    assert done["state"] == "done", done["reason"]


def test_uploads_go_through_the_image_reader(server, photo):
    good = server.post("/api/uploads", files={"file": ("a.png", png(photo), "image/png")})
    assert good.status_code == 201 and good.json()["width"] == 32
    assert server.get(f"/api/uploads/{good.json()['name']}").status_code == 200
    bad = server.post("/api/uploads", files={"file": ("a.png", b"not an image at all", "image/png")})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "file"
    svg = server.post("/api/uploads", files={"file": ("a.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>",
                                                      "image/svg+xml")})
    assert svg.status_code == 422


def test_requests_that_change_state_from_another_origin_are_refused(server):
    body = {"task": "p2p", "request": {"source": "a cat", "edited": "a dog"}}
    assert server.post("/api/jobs", json=body, headers={"origin": "http://evil.example"}).status_code == 403
    assert server.post("/api/jobs", json=body, headers={"sec-fetch-site": "cross-site"}).status_code == 403
    assert server.post("/api/jobs", json=body, headers={"origin": OWN}).status_code == 202
    rebound = server.get("/api/jobs", headers={"host": "evil.example:7860"})  # a DNS name rebound to 127.0.0.1
    assert rebound.status_code == 421 and rebound.json()["error"]["field"] == "host"
    assert server.get("/api/jobs", headers={"origin": "http://evil.example"}).status_code == 200  # reading is not


TRAVERSALS = ["../secret.png", "../../secret.png", "..%2fsecret.png", "%2e%2e/secret.png", "..%252fsecret.png",
              "....//secret.png", "..\\secret.png", "/SECRET.PNG", "./../secret.png", "link/secret.png",
              "escape.png", "a\0.png", "", "x" * 2000]


def test_no_name_reaches_outside_the_server_folders(server, tmp_path, photo):
    """The issue's full sweep (>= 200 variants on every route that names a file) is benchmarks/serve.py; here a
    sample of each kind on each route."""
    secret = tmp_path / "secret.png"
    photo.save(secret)
    data = tmp_path / "data"
    os.symlink(tmp_path, data / "uploads" / "link")
    os.symlink(secret, data / "uploads" / "escape.png")
    names = TRAVERSALS + [str(secret), str(data / "uploads" / ".." / ".." / "secret.png")]
    for name in names:
        for route in (f"/api/uploads/{name}", f"/api/jobs/{'0' * 32}/files/{name}", f"/api/inputs/{name}"):
            if "\0" in name:
                continue  # (an HTTP client cannot send a NUL in a path; the job route below takes it)
            answer = server.get(route)
            assert answer.status_code in (404, 422) and answer.content != secret.read_bytes(), (route, answer)
        answer = server.post("/api/jobs", json={"task": "instruct", "request": {"instruction": "x"},
                                                "inputs": {"image": name}})
        assert answer.status_code == 422, name
    assert server.get("/api/jobs").json() == []


def test_an_inputs_folder_serves_its_images_by_name_and_nothing_else(server, tmp_path, photo):
    (tmp_path / "inputs").mkdir()
    photo.save(tmp_path / "inputs" / "cat.png")
    for name in ("cat.png", str(tmp_path / "inputs" / "cat.png")):
        assert server.get(f"/api/inputs/{name}").content == (tmp_path / "inputs" / "cat.png").read_bytes()
    assert server.get(f"/api/inputs/{tmp_path / 'data' / 'queue.sqlite'}").status_code == 422


def test_models_adapters_and_controlnets_are_listed_from_the_model_folders(tmp_path, tiny_dir):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_dir, models / "tiny-sd")
    (models / "nets" / "canny").mkdir(parents=True)
    (models / "nets" / "canny" / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
    with client_of(create_app(Settings(tmp_path / "data", models=(models,), workers=False))) as client:
        found = client.get("/api/models").json()
        job = client.post("/api/jobs", json={"task": "generate", "request": {"prompt": "x"},
                                             "model": str(models / "tiny-sd")})
    assert [m["label"] for m in found["models"]] == ["bundled", "tiny-sd"]
    assert found["models"][0]["adapters"] == ["composer", "controlnet", "instruct"]
    assert [n["label"] for n in found["controlnets"]] == ["canny"]
    assert job.status_code == 202


def test_the_api_docs_page_works_offline(idle):
    page = idle.get("/docs").text
    assert "openapi.json" in page and "cdn" not in page.lower() and "https://" not in page
    paths = idle.get("/openapi.json").json()["paths"]
    assert {"/api/jobs", "/api/jobs/{job_id}", "/api/uploads", "/api/models", "/api/tasks"} <= set(paths)


def test_serve_refuses_bad_options_before_it_binds(capsys):
    from recomposer.cli import main

    assert main(["serve", "--port", "0"]) != 0 and "port" in capsys.readouterr().err
    assert main(["serve", "--devices", "cpu,cpu"]) != 0 and "devices" in capsys.readouterr().err
    assert main(["serve", "--models", "/nonexistent-folder"]) != 0 and "models" in capsys.readouterr().err
