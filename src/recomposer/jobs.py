"""One persistent, bounded job queue (SQLite, WAL) for everything that runs tasks for someone else: the HTTP API,
the web app and ``recomposer batch`` (issue 19). Workers in other threads or processes share it through the file.

A job is a task request (its kind, e.g. "generate", and the request's JSON) with an explicit state:

    queued ──claim──> running ──finish──> done
       │                 ├──fail────────> failed     (with its reason)
       └──cancel──> cancelled <──cancel── (a running job stops within one step: ``cancel_requested``)

and ``unknown`` for an id the queue never had (never an empty answer that could mean either).

- ``submit`` is idempotent by the client's key: the same key returns the same job, whatever its state. Beyond
  ``capacity`` queued jobs it raises ``QueueFull`` with a retry-after estimate: a job is refused, never dropped.
- ``claim`` hands the oldest queued job to one worker (an immediate transaction: two workers never get one job).
- ``release(client)`` cancels a client's queued jobs (a client that went away and asked for it).
- ``requeue``: a running job back in the queue, with the reason (its server is stopping gracefully).
- ``recover``, called by the one process that owns the queue when it starts (the server; never by a worker that
  joins a live queue): a job left ``running`` by a process that died is queued again (up to ``max_attempts``), else
  failed with the reason, never silently lost and never silently cancelled.
"""

import json
import sqlite3
import threading
from contextlib import closing
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .errors import RecomposerError

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    key TEXT UNIQUE,
    client TEXT,
    kind TEXT NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL,
    worker TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    reason TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created);
"""


class QueueFull(RecomposerError):
    """The queue holds ``capacity`` queued jobs: try again after ``retry_after`` seconds (HTTP 429)."""

    def __init__(self, capacity: int, retry_after: float):
        super().__init__("queue", f"is full ({capacity} jobs waiting); try again in {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    request: dict
    state: str  # one of STATES, or "unknown"
    key: str | None = None
    client: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    step: int = 0
    total: int = 0
    result: dict | None = None
    reason: str | None = None
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    worker: str | None = None  # the worker that claimed it last

    def as_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class JobQueue:
    """The queue in the SQLite file ``path`` (created if new). Opening it changes no job: see ``recover``."""

    def __init__(self, path: str | Path, capacity: int = 100, max_attempts: int = 2):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise RecomposerError("capacity", f"must be a whole number >= 1, got {capacity!r}")
        self.path, self.capacity, self.max_attempts = Path(path), capacity, max_attempts
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        """This thread's connection to the file (opened once per thread: a status poll costs a query, not a
        connect)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        return db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # explicit transactions only
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA synchronous=NORMAL")  # with WAL: a commit survives the process dying, not a power cut
        return db

    def _transaction(self):
        return _Immediate(self._db())

    # --- clients ----------------------------------------------------------------------------------
    def submit(self, kind: str, request: dict, key: str | None = None, client: str | None = None) -> Job:
        """A new queued job, or the job this ``key`` already names (whatever its state)."""
        if not isinstance(kind, str) or not kind:
            raise RecomposerError("kind", "must name a task")
        text = json.dumps(request, sort_keys=True)
        with self._transaction() as db:
            if key is not None:
                row = db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    return _job(row)
            waiting = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
            if waiting >= self.capacity:
                raise QueueFull(self.capacity, self._retry_after(db, waiting))
            job_id = uuid.uuid4().hex
            db.execute("INSERT INTO jobs (id, key, client, kind, request, state, created) VALUES (?, ?, ?, ?, ?, "
                       "'queued', ?)", (job_id, key, client, kind, text, time.time()))
            return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def get(self, job_id: str) -> Job:
        """The job, or a Job in state ``unknown`` for an id this queue never had."""
        row = self._db().execute("SELECT * FROM jobs WHERE id = ?", (str(job_id),)).fetchone()
        return _job(row) if row is not None else Job(str(job_id), "", {}, "unknown")

    def jobs(self, states: tuple[str, ...] = STATES, limit: int = 100) -> list[Job]:
        marks = ",".join("?" * len(states))
        rows = self._db().execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created DESC LIMIT ?",
                                  (*states, limit)).fetchall()
        return [_job(r) for r in rows]

    def cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once; a running one is asked to stop (its worker sees it within a step)."""
        with self._transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None and row["state"] == "queued":
                db.execute("UPDATE jobs SET state = 'cancelled', finished = ?, reason = 'cancelled before it ran' "
                           "WHERE id = ?", (time.time(), job_id))
            elif row is not None and row["state"] == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return self.get(job_id)

    def release(self, client: str) -> int:
        """Cancel every queued job of ``client`` (it went away and asked for it); how many."""
        with self._transaction() as db:
            cursor = db.execute("UPDATE jobs SET state = 'cancelled', finished = ?, reason = 'its client went away' "
                                "WHERE client = ? AND state = 'queued'", (time.time(), client))
            return cursor.rowcount

    # --- workers ----------------------------------------------------------------------------------
    def claim(self, worker: str) -> Job | None:
        """The oldest queued job, now running for ``worker``; None when nothing waits."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY created LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', worker = ?, attempts = attempts + 1, started = ?, "
                       "step = 0 WHERE id = ?", (worker, time.time(), row["id"]))
            return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())

    def progress(self, job_id: str, step: int, total: int) -> bool:
        """Record progress; True when the job has been asked to stop (the worker then raises Cancelled)."""
        db = self._db()
        db.execute("UPDATE jobs SET step = ?, total = ? WHERE id = ? AND state = 'running'", (step, total, job_id))
        row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def finish(self, job_id: str, result: dict) -> Job:
        return self._end(job_id, "done", result=json.dumps(result))

    def fail(self, job_id: str, reason: str) -> Job:
        return self._end(job_id, "failed", reason=str(reason))

    def cancelled(self, job_id: str) -> Job:
        return self._end(job_id, "cancelled", reason="cancelled while it ran")

    def _end(self, job_id: str, state: str, result: str | None = None, reason: str | None = None) -> Job:
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state = ?, result = ?, reason = ?, finished = ? WHERE id = ? AND "
                       "state = 'running'", (state, result, reason, time.time(), job_id))
        return self.get(job_id)

    def requeue(self, job_id: str, reason: str) -> Job:
        """A running job back in the queue (its server is stopping gracefully), with the reason; the attempt it was
        on is not counted (it did not fail)."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state = 'queued', worker = NULL, reason = ?, step = 0, total = 0, attempts = "
                       "attempts - 1 WHERE id = ? AND state = 'running'", (reason, job_id))
        return self.get(job_id)

    def by_key(self, key: str) -> Job | None:
        """The job submitted with the client's ``key``, if any."""
        row = self._db().execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
        return _job(row) if row is not None else None

    def recover(self) -> list[Job]:
        """Jobs a dead process left running: queued again while they have attempts left, else failed, each with
        its reason. Only for the queue's owner at start-up, while no worker of the file is alive."""
        with self._transaction() as db:
            rows = db.execute("SELECT id, attempts, cancel_requested FROM jobs WHERE state = 'running'").fetchall()
            for row in rows:
                if row["cancel_requested"]:  # its cancel was asked for: it is not run again
                    db.execute("UPDATE jobs SET state = 'cancelled', finished = ?, reason = 'cancelled while it ran "
                               "(the server stopped before it ended)' WHERE id = ?", (time.time(), row["id"]))
                elif row["attempts"] < self.max_attempts:
                    db.execute("UPDATE jobs SET state = 'queued', worker = NULL, step = 0, total = 0, reason = ? "
                               "WHERE id = ?", (f"re-queued: the server stopped while it ran (attempt "
                                                f"{row['attempts']})", row["id"]))
                else:
                    db.execute("UPDATE jobs SET state = 'failed', finished = ?, reason = ? WHERE id = ?",
                               (time.time(), f"the server stopped while it ran, {row['attempts']} times",
                                row["id"]))
        return [self.get(r["id"]) for r in rows]

    def _retry_after(self, db, waiting: int) -> float:
        """Seconds until a slot is likely free: the recent mean job time × the jobs ahead / the running workers."""
        rows = db.execute("SELECT finished - started FROM jobs WHERE state = 'done' ORDER BY finished DESC LIMIT "
                          "20").fetchall()
        mean = sum(r[0] for r in rows) / len(rows) if rows else 10.0
        running = max(1, db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'running'").fetchone()[0])
        return max(1.0, mean * max(1, waiting - self.capacity + 1) / running)


class _Immediate:
    """``with`` a connection inside BEGIN IMMEDIATE … COMMIT (ROLLBACK on error)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, trace) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _job(row: sqlite3.Row) -> Job:
    return Job(row["id"], row["kind"], json.loads(row["request"]), row["state"], row["key"], row["client"],
               row["attempts"], bool(row["cancel_requested"]), row["step"], row["total"],
               json.loads(row["result"]) if row["result"] else None, row["reason"], row["created"], row["started"],
               row["finished"], row["worker"])
