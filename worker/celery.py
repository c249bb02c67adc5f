"""The Celery app: Redis broker, a `gpu` queue and a `cpu` queue, one task decorator.

Start a worker with `celery -A worker worker -Q gpu,cpu`. Tasks live in each app's
`tasks.py` (found by autodiscovery) and are declared with `platform_task`, which fixes
the delivery guarantees every task relies on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.utils.imports import gen_task_name
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("platform")
app.config_from_object("django.conf:settings", namespace="CELERY")

GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"

app.conf.task_queues = (Queue(GPU_QUEUE), Queue(CPU_QUEUE))
app.conf.task_default_queue = CPU_QUEUE

# Queue of each platform task, filled by `platform_task` and read by the router (Celery 6
# drops the per-task `queue` attribute; routing is the supported way).
TASK_QUEUES: dict[str, str] = {}


def route_platform_task(name, args, kwargs, options, task=None, **kw):
    queue = TASK_QUEUES.get(name)
    return {"queue": queue} if queue else None


app.conf.task_routes = (route_platform_task,)
# One task at a time per worker process: AI tasks are long and memory-hungry.
app.conf.worker_prefetch_multiplier = 1
app.conf.task_acks_late = True
app.conf.task_reject_on_worker_lost = True
app.conf.task_track_started = True
app.conf.task_serializer = "json"
app.conf.result_serializer = "json"
app.conf.accept_content = ["json"]
app.conf.broker_connection_retry_on_startup = True


def _transport_options(options: dict) -> dict:
    """Broker options with the sweep that redelivers a dead worker's unacked tasks made prompt.

    Redis keeps a late-acked task of a worker killed outright (SIGKILL, lost machine) in its
    `unacked` set; a live worker puts it back on the queue once it is older than the
    visibility timeout. Kombu sweeps every 10 s but scans only every 10th sweep (100 s);
    scanning at every sweep, every visibility/10 s (1-10 s), costs one ZRANGE and brings
    the task back within about the visibility timeout.
    """
    options = dict(options or {})
    visibility = int(options.get("visibility_timeout", 3600))
    options.setdefault("unacked_restore_interval", min(10, max(1, visibility // 10)))
    options.setdefault("unacked_restore_throttle", 1)
    return options


app.conf.broker_transport_options = _transport_options(app.conf.broker_transport_options)
app.autodiscover_tasks()

#: Optional ceiling on every task's hard time limit (seconds). A deployment (or the worker
#: fault tests) running with a short visibility timeout, so that the tasks of a lost worker
#: come back fast, sets it below that timeout; tasks declaring a longer limit get this one.
HARD_LIMIT_CAP_ENV = "CELERY_TASK_HARD_TIME_LIMIT_CAP_S"


def platform_task(
    *,
    queue: str = CPU_QUEUE,
    hard_time_limit_s: int | None = None,
    max_retries: int = 5,
    retry_backoff_max_s: int = 300,
    autoretry_for: tuple[type[BaseException], ...] = (),
    **options: Any,
) -> Callable:
    """Declare a platform task with the delivery guarantees every task needs.

    - late acks and rejection on worker loss: a task whose worker dies is redelivered,
      so every task must be idempotent (lock its row, return early when already done);
    - a hard time limit below the broker's visibility timeout (so a running task is never
      delivered twice for being slow) and a soft limit at 0.9 of it, to clean up; the
      environment variable CELERY_TASK_HARD_TIME_LIMIT_CAP_S, when set, caps it;
    - retries with exponential backoff for the errors named in `autoretry_for`.
    Tasks take keyword-only primitive arguments (ids as strings or ints).
    """
    from django.conf import settings

    if queue not in (GPU_QUEUE, CPU_QUEUE):
        raise ValueError(f"queue must be {GPU_QUEUE!r} or {CPU_QUEUE!r}, got {queue!r}")
    hard = hard_time_limit_s or settings.CELERY_TASK_HARD_TIME_LIMIT_S
    cap = os.environ.get(HARD_LIMIT_CAP_ENV)
    if cap:
        hard = min(hard, int(cap))
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    if hard >= visibility:
        raise ValueError(
            f"hard_time_limit_s={hard} must stay below the broker visibility timeout {visibility}"
        )

    def decorate(fn: Callable) -> Any:
        name = options.get("name") or gen_task_name(app, fn.__name__, fn.__module__)
        TASK_QUEUES[name] = queue
        return app.task(
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            time_limit=hard,
            soft_time_limit=int(hard * 0.9),
            autoretry_for=autoretry_for,
            retry_backoff=True,
            retry_backoff_max=retry_backoff_max_s,
            retry_jitter=True,
            max_retries=max_retries,
            **options,
        )(fn)

    return decorate
