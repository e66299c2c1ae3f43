"""The job queue: explicit states (unknown included), idempotent submit, a bound that refuses and never drops,
cancel of queued and running jobs, one job per claim under contention, and restart survival."""

import threading

import pytest

from recomposer.jobs import JobQueue, QueueFull


@pytest.fixture
def queue(tmp_path):
    return JobQueue(tmp_path / "jobs.sqlite", capacity=3)


def test_a_job_goes_through_its_states(queue):
    job = queue.submit("generate", {"prompt": "a red circle"})
    assert job.state == "queued" and queue.get(job.id).request == {"prompt": "a red circle"}
    running = queue.claim("w1")
    assert running.id == job.id and running.state == "running" and running.attempts == 1
    assert queue.claim("w2") is None
    assert queue.progress(job.id, 3, 20) is False and queue.get(job.id).step == 3
    done = queue.finish(job.id, {"images": ["a.png"]})
    assert done.state == "done" and done.result == {"images": ["a.png"]} and done.finished >= done.started
    assert queue.get("no-such-id").state == "unknown"


def test_submit_is_idempotent_by_key_and_bounded(queue):
    first = queue.submit("generate", {"prompt": "x"}, key="client-1")
    assert queue.submit("generate", {"prompt": "other"}, key="client-1").id == first.id
    queue.submit("generate", {}, key="client-2")
    queue.submit("generate", {})
    with pytest.raises(QueueFull) as full:
        queue.submit("generate", {})
    assert full.value.retry_after >= 1
    assert len(queue.jobs(("queued",))) == 3  # nothing dropped, nothing half-added
    assert queue.submit("generate", {}, key="client-2").state == "queued"  # a known key still answers when full


def test_cancel_a_queued_and_a_running_job_and_release_a_client(queue):
    waiting = queue.submit("generate", {}, client="c")
    running = queue.submit("generate", {})
    queue.claim("w")  # the oldest: ``waiting``
    assert queue.cancel(running.id).state == "cancelled"
    asked = queue.cancel(waiting.id)
    assert asked.state == "running" and asked.cancel_requested and queue.progress(waiting.id, 1, 10) is True
    assert queue.cancelled(waiting.id).state == "cancelled"
    other = queue.submit("generate", {}, client="gone")
    assert queue.release("gone") == 1 and queue.get(other.id).state == "cancelled"


def test_one_job_per_claim_under_contention(tmp_path):
    queue = JobQueue(tmp_path / "jobs.sqlite", capacity=100)
    for k in range(40):
        queue.submit("generate", {"k": k})
    claimed, lock = [], threading.Lock()

    def worker(name):
        mine = JobQueue(tmp_path / "jobs.sqlite", capacity=100)
        while (job := mine.claim(name)) is not None:
            with lock:
                claimed.append(job.id)
            mine.finish(job.id, {})

    threads = [threading.Thread(target=worker, args=(f"w{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 40 and len(set(claimed)) == 40


def test_a_restart_requeues_or_fails_running_jobs_with_their_reason(tmp_path):
    path = tmp_path / "jobs.sqlite"
    queue = JobQueue(path, max_attempts=2)
    first, second = queue.submit("generate", {}), queue.submit("generate", {})
    queue.claim("w")
    after = JobQueue(path, max_attempts=2)  # the server came back; ``first`` was running
    assert after.get(first.id).state == "running"  # opening the file changes nothing
    assert [j.id for j in after.recover()] == [first.id]
    job = after.get(first.id)
    assert job.state == "queued" and "stopped while it ran" in job.reason and after.get(second.id).state == "queued"
    after.claim("w")
    again = JobQueue(path, max_attempts=2)  # and died again while it ran: no third try
    again.recover()
    job = again.get(first.id)
    assert job.state == "failed" and "2 times" in job.reason
    assert {j.state for j in again.jobs()} == {"failed", "queued"}  # nothing lost


def test_a_cancel_asked_for_survives_a_crash_and_a_graceful_requeue_costs_no_attempt(tmp_path):
    queue = JobQueue(tmp_path / "q.sqlite", max_attempts=2)
    a, b = queue.submit("generate", {"n": 1}), queue.submit("generate", {"n": 2})
    queue.claim("w"), queue.claim("w")
    queue.cancel(a.id)  # asked while it ran; then the process dies
    queue.progress(b.id, 3, 10)
    queue.requeue(b.id, "re-queued: the server stopped while it ran")  # a graceful stop
    again = queue.get(b.id)
    assert (again.state, again.attempts, again.step, again.total) == ("queued", 0, 0, 0)
    queue.claim("w")
    recovered = {j.id: j for j in JobQueue(tmp_path / "q.sqlite").recover()}
    assert recovered[a.id].state == "cancelled" and "server stopped" in recovered[a.id].reason
    assert recovered[b.id].state == "queued" and recovered[b.id].attempts == 1
