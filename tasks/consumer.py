"""The Celery consumer our workers run: Celery's own, reconnecting to a lost broker promptly.

Celery retries a lost broker after 2, 4, 6 … up to 30 s (kombu's defaults), so a worker could sit
idle for tens of seconds after Redis is back while the apis already take requests again. Requests
here have deadlines of seconds: retry every second instead.
"""

from __future__ import annotations

import functools
from typing import Any

from celery.worker.consumer import Consumer

RECONNECT_INTERVAL_S = 1.0


class PromptReconnectConsumer(Consumer):
    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(
            conn.ensure_connection,
            interval_start=RECONNECT_INTERVAL_S,
            interval_step=0,
            interval_max=RECONNECT_INTERVAL_S,
        )
        return super().ensure_connected(conn)
