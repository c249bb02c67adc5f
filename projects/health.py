"""Health of the platform's backing services: database, Redis and Orthanc."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import connection

from imaging.orthanc import OrthancClient, OrthancError


@dataclass(frozen=True)
class ComponentHealth:
    up: bool
    latency_ms: float
    error: str = ""

    def as_dict(self) -> dict:
        data = {"status": "up" if self.up else "down", "latency_ms": round(self.latency_ms, 1)}
        if self.error:
            data["error"] = self.error
        return data


def _timed(check) -> ComponentHealth:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # any failure means "down", reported with its text
        return ComponentHealth(False, (time.perf_counter() - started) * 1000, f"{exc}"[:300])
    return ComponentHealth(True, (time.perf_counter() - started) * 1000)


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _redis() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        if not client.ping():
            raise ConnectionError("Redis did not answer PING")
    finally:
        client.close()


def _orthanc() -> None:
    try:
        OrthancClient(timeout_s=3).system()
    except OrthancError as exc:
        raise ConnectionError(str(exc)) from exc


def _worker(queue: str, timeout_s: float) -> None:
    from projects.tasks import health_ping

    result = health_ping.apply_async(queue=queue, expires=timeout_s)
    try:
        reply = result.get(timeout=timeout_s)
    except Exception as exc:  # a timeout here means no worker consumed the queue
        raise ConnectionError(
            f"no Celery worker answered on queue {queue!r} within {timeout_s:g} s"
        ) from exc
    finally:
        result.forget()
    if not (isinstance(reply, dict) and reply.get("pong")):
        raise ConnectionError(f"unexpected worker reply {reply!r}")


def platform_health(*, deep: bool = False) -> dict[str, ComponentHealth]:
    """Each backing service, up or down. `deep` also round-trips a task through a worker."""
    components = {
        "database": _timed(_database),
        "redis": _timed(_redis),
        "orthanc": _timed(_orthanc),
    }
    if deep:
        from worker.celery import CPU_QUEUE

        timeout_s = settings.HEALTH_WORKER_TIMEOUT_S
        if components["redis"].up:
            components["worker"] = _timed(lambda: _worker(CPU_QUEUE, timeout_s))
        else:
            components["worker"] = ComponentHealth(False, 0.0, "Redis (the broker) is down")
    return components
