"""Celery worker: the app, its queues and the shared task decorator (worker.celery)."""

from worker.celery import app as celery_app

__all__ = ["celery_app"]
