"""`platform_task` guarantees, and a real round trip through a Celery worker and Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings

from worker.celery import CPU_QUEUE, GPU_QUEUE, app, platform_task

REPO = Path(__file__).resolve().parents[2]


def _task(**options):
    def body(self):
        return "ok"

    body.__name__ = f"t_{uuid.uuid4().hex[:8]}"
    return platform_task(name=f"tests.{body.__name__}", **options)(body)


def routed_queue(task) -> str:
    """The queue Celery's router sends `task` to (what a worker with -Q would consume)."""
    return app.amqp.router.route({}, task.name)["queue"].name


@pytest.mark.parametrize("queue", ["", "default", "GPU", "celery", None])
def test_unknown_queue_is_rejected(queue):
    with pytest.raises(ValueError, match="queue must be"):
        _task(queue=queue)


def test_hard_limit_at_or_above_visibility_timeout_is_rejected():
    visibility = django_settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    for hard in (visibility, visibility + 1):
        with pytest.raises(ValueError, match="visibility timeout"):
            _task(hard_time_limit_s=hard)
    assert _task(hard_time_limit_s=visibility - 1).time_limit == visibility - 1


def test_delivery_guarantees_and_limits():
    task = _task(queue=GPU_QUEUE, hard_time_limit_s=1000)
    assert routed_queue(task) == GPU_QUEUE
    assert task.acks_late is True
    assert task.reject_on_worker_lost is True
    assert task.time_limit == 1000
    assert task.soft_time_limit == 900
    assert task.name in app.tasks


def test_default_hard_limit_comes_from_settings():
    task = _task()
    assert routed_queue(task) == CPU_QUEUE
    assert task.time_limit == django_settings.CELERY_TASK_HARD_TIME_LIMIT_S
    assert task.soft_time_limit == int(django_settings.CELERY_TASK_HARD_TIME_LIMIT_S * 0.9)


def test_health_ping_is_registered_on_the_cpu_queue():
    from projects.tasks import health_ping

    assert app.tasks["projects.tasks.health_ping"] is health_ping
    assert routed_queue(health_ping) == CPU_QUEUE and health_ping.acks_late


# --- a real worker -------------------------------------------------------------------
TEST_REDIS_DB = 14


def _redis_url(db: int) -> str:
    base = redis.connection.parse_url(django_settings.REDIS_URL)
    return f"redis://{base.get('host', '127.0.0.1')}:{base.get('port', 6379)}/{db}"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "REDIS_URL": _redis_url(TEST_REDIS_DB), "PLATFORM_VAR_DIR": str(tmp_path)}
    # The probe and worker need a database that answers, not the test database's rows.
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'probe.sqlite3'}"
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        env.pop(name, None)
    env.update(extra)
    return env


def _python(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


HEALTH_PROBE = """
import json, django
django.setup()
from django.test import Client
r = Client().get('/api/health?deep=1')
print(json.dumps({'status': r.status_code, 'body': r.json()}))
"""


@pytest.fixture(scope="module")
def redis_db14():
    client = redis.Redis.from_url(_redis_url(TEST_REDIS_DB))
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def celery_worker(redis_db14, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("worker")
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115 - lives with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", "cpu,gpu",
         "--pool", "solo", "--hostname", f"test-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "INFO"],
        cwd=REPO, env=_env(tmp), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    yield tmp
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    log.close()


@pytest.mark.integration
def test_deep_health_without_a_worker_names_the_worker(redis_db14, orthanc, tmp_path):
    env = _env(
        tmp_path,
        HEALTH_WORKER_TIMEOUT_S="1",
        ORTHANC_URL=orthanc.url,
        ORTHANC_USERNAME=orthanc.username,
        ORTHANC_PASSWORD=orthanc.password,
    )
    done = _python(HEALTH_PROBE, env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 503
    assert result["body"]["down"] == ["worker"]
    assert "no Celery worker answered" in result["body"]["components"]["worker"]["error"]
    redis_db14.flushdb()  # drop the unanswered ping


@pytest.mark.integration
def test_health_ping_round_trip_through_a_real_worker(celery_worker, tmp_path):
    code = (
        "import json, django; django.setup()\n"
        "from projects.tasks import health_ping\n"
        "r = health_ping.delay()\n"
        "print(json.dumps(r.get(timeout=90)))\n"
    )
    done = _python(code, _env(tmp_path))
    log = (celery_worker / "worker.log").read_text(errors="replace")
    assert done.returncode == 0, f"{done.stderr}\n--- worker log ---\n{log}"
    reply = json.loads(done.stdout.strip().splitlines()[-1])
    assert reply["pong"] is True and reply["hostname"].startswith("test-")
    assert "projects.tasks.health_ping" in log and "succeeded" in log


@pytest.mark.integration
def test_deep_health_with_a_worker_is_200(celery_worker, orthanc, tmp_path):
    env = _env(
        tmp_path,
        HEALTH_WORKER_TIMEOUT_S="30",
        ORTHANC_URL=orthanc.url,
        ORTHANC_USERNAME=orthanc.username,
        ORTHANC_PASSWORD=orthanc.password,
    )
    done = _python(HEALTH_PROBE, env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 200, result
    assert result["body"]["components"]["worker"]["status"] == "up"
