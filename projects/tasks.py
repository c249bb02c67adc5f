"""Tasks of the foundation: `health_ping`, the round trip behind `/api/health?deep=1`."""

from __future__ import annotations

import socket

from worker.celery import CPU_QUEUE, platform_task


@platform_task(queue=CPU_QUEUE, hard_time_limit_s=30, max_retries=0)
def health_ping(self) -> dict:
    """Answer with the worker's host name: proves a worker consumes the queue and replies."""
    return {"pong": True, "hostname": self.request.hostname or socket.gethostname()}
