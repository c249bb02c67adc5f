"""`platform/services.sh` against the real programs: Orthanc and redis-server on free ports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import redis
import requests
from celery import Celery

from tests.support.orthanc import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "platform" / "services.sh"

pytestmark = pytest.mark.integration


def _env(var_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORTHANC_", "REDIS_"))}
    env["PLATFORM_VAR_DIR"] = str(var_dir)
    env.update(extra)
    return env


def _sh(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc is not installed")
def test_orthanc_start_is_idempotent_status_reports_and_stop_stops(tmp_path):
    port = free_port()
    env = _env(
        tmp_path, ORTHANC_HTTP_PORT=str(port), ORTHANC_USERNAME="u", ORTHANC_PASSWORD="pw-123"
    )
    try:
        first = _sh("start", "orthanc", env=env)
        assert first.returncode == 0, first.stderr
        assert "orthanc: started" in first.stdout
        system = requests.get(f"http://127.0.0.1:{port}/system", auth=("u", "pw-123"), timeout=5)
        assert system.status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/system", timeout=5).status_code == 401
        assert (tmp_path / "orthanc" / "storage").is_dir()
        assert (tmp_path / "run" / "orthanc.pid").is_file()

        again = _sh("start", "orthanc", env=env)
        assert again.returncode == 0 and "already running" in again.stdout

        status = _sh("status", "orthanc", env=env)
        assert status.returncode == 0 and "orthanc: up" in status.stdout
    finally:
        stop = _sh("stop", "orthanc", env=env)
    assert stop.returncode == 0 and "orthanc: stopped" in stop.stdout
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/system", timeout=2)
    down = _sh("status", "orthanc", env=env)
    assert down.returncode == 3 and "orthanc: down" in down.stdout
    assert "not running" in _sh("stop", "orthanc", env=env).stdout


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_is_started_only_when_none_answers(tmp_path):
    port = free_port()
    env = _env(tmp_path, REDIS_URL=f"redis://127.0.0.1:{port}/0")
    try:
        started = _sh("start", "redis", env=env)
        assert started.returncode == 0, started.stderr
        assert "redis: started" in started.stdout
        assert redis.Redis(port=port).ping()
        again = _sh("start", "redis", env=env)
        assert "already answering" in again.stdout
    finally:
        stop = _sh("stop", "redis", env=env)
    assert "redis: stopped" in stop.stdout
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_connect_timeout=1).ping()


def test_a_redis_not_started_by_the_script_is_used_and_left_running(tmp_path):
    from django.conf import settings

    env = _env(tmp_path, REDIS_URL=settings.REDIS_URL)
    assert "not started by this script" in _sh("start", "redis", env=env).stdout
    assert "leaving it running" in _sh("stop", "redis", env=env).stdout
    assert redis.Redis.from_url(settings.REDIS_URL).ping()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["start", "postgres"], "unknown target 'postgres'"),
        (["frobnicate"], "unknown action 'frobnicate'"),
        (["start", "chromium"], "chromium is not a service"),
        (["start", "node"], "node is not a service"),
    ],
)
def test_bad_arguments_fail_with_a_message(args, message, tmp_path):
    done = _sh(*args, env=_env(tmp_path))
    assert done.returncode != 0
    assert message in done.stderr


def test_redis_elsewhere_is_not_started_here(tmp_path):
    env = _env(tmp_path, REDIS_URL="redis://redis.invalid:6379/0")
    done = _sh("start", "redis", env=env)
    assert done.returncode != 0 and "not a loopback address" in done.stderr


def test_web_needs_a_virtualenv(tmp_path):
    done = _sh("start", "web", env=_env(tmp_path, PLATFORM_VENV=str(tmp_path / "no-venv")))
    assert done.returncode != 0 and "no virtualenv" in done.stderr


def test_worker_and_beat_start_with_their_pid_report_and_stop(tmp_path):
    """Real Celery processes: start reports the pid each runs under (Celery rewrites its pid
    file while it detaches, so start reads it once it has settled) and returns once the
    worker answers pings; status finds them; stop ends them and removes the pid files.
    The rewrite's timing is Celery's: this run may or may not hit it, so the test holds the
    outcome, not the race."""
    from django.conf import settings

    broker = redis.Redis.from_url(settings.REDIS_URL)
    broker_url = f"redis://{broker.connection_pool.connection_kwargs['host']}:" + str(
        broker.connection_pool.connection_kwargs["port"]
    )
    env = _env(tmp_path, REDIS_URL=f"{broker_url}/13", CELERY_QUEUES="services-test")
    env.pop("DATABASE_URL", None)  # the worker's own SQLite under tmp_path
    run = tmp_path / "run"
    pids: dict[str, int] = {}
    try:
        worker = _sh("start", "worker", env=env)
        # "Answering" is true: the worker replies to a ping the moment start returns.
        replies = Celery(broker=f"{broker_url}/13").control.ping(timeout=0.5)
        beat = _sh("start", "beat", env=env)
        for name, started in (("worker", worker), ("beat", beat)):
            assert started.returncode == 0, started.stderr
            assert started.stderr == ""  # no "cat: ...: No such file" while the pid file moves
            found = re.search(rf"{name}: started(?: and answering)? \(pid (\d+)", started.stdout)
            assert found, started.stdout
            pids[name] = int(found.group(1))
            assert int((run / f"{name}.pid").read_text()) == pids[name]
            os.kill(pids[name], 0)  # runs
        assert "worker: started and answering" in worker.stdout
        assert replies and all(reply.popitem()[1] == {"ok": "pong"} for reply in replies)
        status = _sh("status", "worker", "beat", env=env)
        assert status.returncode == 0
        assert f"worker: running (pid {pids['worker']})" in status.stdout
        assert f"beat: running (pid {pids['beat']})" in status.stdout
        assert "already running" in _sh("start", "worker", env=env).stdout
    finally:
        stop = _sh("stop", "worker", "beat", env=env)
    assert stop.returncode == 0, stop.stderr
    assert "worker: stopped" in stop.stdout and "beat: stopped" in stop.stdout
    for name, pid in pids.items():
        assert not (run / f"{name}.pid").exists()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("content", [None, "", "not-a-pid\n", "{gone}\n"])
def test_a_missing_empty_or_stale_pid_file_reads_as_down_quietly(tmp_path, content):
    finished = subprocess.Popen(["true"])
    finished.wait()
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "worker.pid").write_text(content.format(gone=finished.pid))
    status = _sh("status", "worker", env=_env(tmp_path))
    assert status.returncode == 3
    assert status.stdout == "worker: down\n" and status.stderr == ""
    stop = _sh("stop", "worker", env=_env(tmp_path))
    assert stop.returncode == 0 and "worker: not running" in stop.stdout
    assert not (run / "worker.pid").exists()
