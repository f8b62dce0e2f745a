"""The queues a worker consumes: one per model configured for its device, kept in step with config
reloads through Celery's own remote control (add_consumer / cancel_consumer)."""

from __future__ import annotations

import logging

from celery import Celery

from inference.manager import ModelManager
from tasks.routing import queue_for

log = logging.getLogger("serving")


class QueueConsumers:
    def __init__(self, celery_app: Celery, device: str, hostname: str, manager: ModelManager) -> None:
        self._app = celery_app
        self._device = device
        self._hostname = hostname
        self._manager = manager
        self.queues = self._wanted()

    def _wanted(self) -> list[str]:
        return [queue_for(self._device, name) for name in self._manager.configs()]

    def sync(self) -> None:
        wanted = self._wanted()
        for queue in sorted(set(wanted) - set(self.queues)):
            self._app.control.add_consumer(queue, destination=[self._hostname])
            log.info("Worker %s now consumes %s", self._hostname, queue)
        for queue in sorted(set(self.queues) - set(wanted)):
            self._app.control.cancel_consumer(queue, destination=[self._hostname])
            log.info("Worker %s no longer consumes %s", self._hostname, queue)
        self.queues = wanted
