"""`ovms worker`: one Celery worker serving the models configured for one device."""

from __future__ import annotations

from ovms.settings import ServerSettings
from tasks.worker import run_worker


def run_worker_role(settings: ServerSettings) -> int:
    """Run until Celery stops (SIGTERM drains); returns the exit code."""
    return run_worker(settings, settings.broker_url)
