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
    except Exception as exc:  # noqa: BLE001 - any failure means "down", reported with its text
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


def platform_health() -> dict[str, ComponentHealth]:
    return {
        "database": _timed(_database),
        "redis": _timed(_redis),
        "orthanc": _timed(_orthanc),
    }
