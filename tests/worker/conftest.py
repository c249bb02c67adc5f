"""A real Celery worker (subprocess) on real Redis (db 15, or TEST_CELERY_BROKER_URL) against the test database.

The worker must see the rows the test writes, so:
- SQLite: the test database is a file (set below, before pytest-django creates it), and
  worker tests use `django_db(transaction=True)` so rows are committed;
- PostgreSQL: the worker connects to the test database pytest-django created (`test_<name>`).
The worker's `DATABASE_URL` is built from `connection.settings_dict` after the test
database exists, so both work. Media and model store are session temp folders shared by
the test process and the worker. Workers get the test-only job gate
(`services.TEST_GATE_ENV`, the `job_gate` fixture) to hold a job at a progress checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from django.conf import settings

REPO = Path(__file__).resolve().parents[2]
TEST_BROKER_URL = os.environ.get("TEST_CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")

# SQLite: a file test database the worker subprocess can open (in-memory is per process).
_db = settings.DATABASES["default"]
if _db["ENGINE"].endswith("sqlite3"):
    _db.setdefault("TEST", {})
    if not _db["TEST"].get("NAME"):
        _db["TEST"]["NAME"] = str(
            Path(tempfile.gettempdir()) / f"platform-test-{os.getpid()}.sqlite3"
        )
    # The worker writes concurrently: take the write lock at BEGIN and wait for it, instead
    # of failing with "database is locked" when a read lock cannot be upgraded.
    _db.setdefault("OPTIONS", {}).update({"transaction_mode": "IMMEDIATE", "timeout": 30})

# The test process sends tasks to the test broker too.
from worker.celery import app as celery_app  # noqa: E402

celery_app.conf.broker_url = TEST_BROKER_URL
celery_app.conf.result_backend = TEST_BROKER_URL


def database_url(settings_dict: dict) -> str:
    """A DATABASE_URL for the (test) database described by Django's `settings_dict`."""
    engine = settings_dict["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{Path(settings_dict['NAME']).resolve()}"
    if "postgresql" in engine:
        user = quote(settings_dict.get("USER") or "")
        password = settings_dict.get("PASSWORD") or ""
        auth = f"{user}:{quote(password)}@" if password else (f"{user}@" if user else "")
        host = settings_dict.get("HOST") or "127.0.0.1"
        port = settings_dict.get("PORT") or 5432
        return f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"
    raise RuntimeError(f"worker tests do not support database engine {engine}")


@dataclass
class WorkerProcess:
    """`celery -A worker worker` as a subprocess; started, killed and restarted by tests."""

    env: dict[str, str]
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "worker",
                "-Q",
                "gpu,cpu",
                "--pool=prefork",
                "--concurrency=1",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"test-{uuid.uuid4().hex[:8]}@%h",
                *self.extra_args,
            ],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                if b" ready." in fh.read():
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"worker not ready within {timeout_s} s:\n{self.log_tail()}")

    def child_pids(self) -> list[int]:
        """Pids of the pool processes (the ones that run tasks)."""
        if self.process is None:
            return []
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except FileNotFoundError:
            return []

    def kill_main(self) -> None:
        """SIGKILL the whole worker (main process and pool) at once."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


@pytest.fixture(scope="session")
def worker_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("worker")
    dirs = {
        "media": root / "media",
        "models": root / "models",
        "gates": root / "gates",
        "logs": root,
    }
    for path in dirs.values():
        path.mkdir(exist_ok=True)
    return dirs


@pytest.fixture(scope="session")
def worker_env(django_db_setup, django_db_blocker, orthanc_server, worker_dirs) -> dict[str, str]:
    """Environment of a worker that sees the test database, test broker, Orthanc and media."""
    from django.db import connection

    with django_db_blocker.unblock():
        db_url = database_url(connection.settings_dict)
    redis.Redis.from_url(TEST_BROKER_URL).flushdb()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": db_url,
        "DATABASE_CONN_MAX_AGE": "0",
        "CELERY_BROKER_URL": TEST_BROKER_URL,
        "CELERY_RESULT_BACKEND": TEST_BROKER_URL,
        "ORTHANC_URL": orthanc_server.url,
        "ORTHANC_USERNAME": orthanc_server.username,
        "ORTHANC_PASSWORD": orthanc_server.password,
        "ORTHANC_TIMEOUT_S": "5",
        "PLATFORM_MEDIA_ROOT": str(worker_dirs["media"]),
        "PLATFORM_MODEL_STORE": str(worker_dirs["models"]),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        # Test-only: lets `job_gate` hold a job at a progress checkpoint (inert otherwise).
        "PLATFORM_TEST_JOB_GATE_DIR": str(worker_dirs["gates"]),
    }
    return env


@pytest.fixture(scope="session")
def celery_worker_process(worker_env, worker_dirs):
    """One real worker for the session (tests that kill it restart it)."""
    worker = WorkerProcess(env=worker_env, log_path=worker_dirs["logs"] / "worker.log")
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def live_worker(celery_worker_process, orthanc, settings, worker_dirs):
    """The running worker, with this process's settings pointing where the worker's do."""
    if celery_worker_process.process is None or celery_worker_process.process.poll() is not None:
        celery_worker_process.start()
    settings.MEDIA_ROOT = worker_dirs["media"]
    settings.MODEL_STORE_DIR = worker_dirs["models"]
    return celery_worker_process


class JobGate:
    """Hold jobs at a progress checkpoint of the worker (see `services._test_gate`)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def hold(self, fraction: float) -> None:
        (self.folder / f"hold-{fraction:.2f}").touch()

    def release(self, fraction: float) -> None:
        (self.folder / f"hold-{fraction:.2f}").unlink(missing_ok=True)

    def wait_held(self, job_id: int, fraction: float, *, worker, timeout_s: float = 90) -> int:
        """Wait until the job is held at `fraction`; the pid of the process running it."""
        marker = self.folder / f"job-{job_id}.held-{fraction:.2f}"
        wait_for(
            marker.exists,
            timeout_s=timeout_s,
            what=f"job {job_id} held at {fraction}",
            worker=worker,
        )
        return int(marker.read_text())

    def clear(self) -> None:
        for path in self.folder.iterdir():
            path.unlink()


@pytest.fixture
def job_gate(worker_dirs):
    gate = JobGate(worker_dirs["gates"])
    gate.clear()
    yield gate
    gate.clear()  # never leave a hold behind for the next test


#: Worker of the "lost machine" test: a visibility timeout short enough that Redis hands
#: the unacked task of a worker killed outright to another one within the test, and every
#: task's hard limit capped below it (`platform_task` refuses a limit at or above it).
FAST_REDELIVERY_ENV = {
    "CELERY_BROKER_VISIBILITY_TIMEOUT_S": "45",
    "CELERY_TASK_HARD_TIME_LIMIT_CAP_S": "40",
}


@pytest.fixture
def fast_redelivery_worker(celery_worker_process, worker_env, worker_dirs):
    """A worker with `FAST_REDELIVERY_ENV`, the session worker stopped meanwhile (restarted later)."""
    celery_worker_process.stop()
    worker = WorkerProcess(
        env={**worker_env, **FAST_REDELIVERY_ENV},
        log_path=worker_dirs["logs"] / "fast-redelivery-worker.log",
    )
    worker.start()
    yield worker
    worker.stop()
    celery_worker_process.start()


def wait_for(
    predicate, *, timeout_s: float, interval_s: float = 0.2, what: str = "condition", worker=None
):
    """Poll `predicate` until it returns a truthy value; fail with the worker log otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    tail = worker.log_tail() if worker is not None else ""
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{tail}")
