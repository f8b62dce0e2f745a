"""Worker side of the model lifecycle: follow config.json and the repositories, answer reload requests.

One thread per worker. Every `--file_system_poll_wait_seconds` it re-reads config.json when its
content changed (an invalid file changes nothing and is logged once) and lets the model manager follow
the repositories. Between polls it blocks on this worker's control list, so that a reload requested
through the api (`POST /v1/config/reload`) is applied at once and answered on the requester's list.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from inference.manager import ModelManager
from inference.model_config import ConfigError, load_config_file
from tasks.routing import control_key
from tasks.settings import WorkerSettings

log = logging.getLogger("serving")

CONTROL_REPLY_TTL_S = 120
# How long to block for reload requests when polling is disabled: below redis-py's default socket timeout
# (5 s), which would otherwise end every idle wait as "Timeout reading from socket".
IDLE_WAIT_S = 1.0


class RepositoryWatcher:
    def __init__(
        self,
        manager: ModelManager,
        settings: WorkerSettings,
        client: redis.Redis,
        worker_id: str,
        on_change: Callable[[], None],
    ) -> None:
        self._manager = manager
        self._settings = settings
        self._client = client
        self._key = control_key(worker_id)
        self._on_change = on_change
        self._config_digest = self._digest()
        self._rejected_digest = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ovms-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=IDLE_WAIT_S + 1)

    def reload(self) -> dict[str, Any]:
        """Re-read config.json and follow the repositories now: {"changed": bool, "error": str}."""
        with self._lock:
            try:
                changed = self._apply_config(force=True)
            except ConfigError as exc:
                return {"changed": False, "error": str(exc)}
            changed |= self._manager.reconcile()
        if changed:
            self._on_change()
        return {"changed": changed, "error": ""}

    def poll(self) -> None:
        with self._lock:
            try:
                changed = self._apply_config(force=False)
            except ConfigError as exc:
                if self._rejected_digest != self._config_digest:
                    log.error("Configuration file not applied, the running configuration stays: %s", exc)
                    self._rejected_digest = self._config_digest
                changed = False
            changed |= self._manager.reconcile()
        if changed:
            self._on_change()

    def _digest(self) -> str:
        path = self._settings.config_path
        try:
            return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else ""
        except OSError:
            return "unreadable"

    def _apply_config(self, force: bool) -> bool:
        """Apply config.json if it changed (or if forced); raises ConfigError for an invalid file."""
        if not self._settings.config_path:
            return False
        digest = self._digest()
        if digest == self._config_digest and not force:
            return False
        self._config_digest = digest
        models = [m for m in load_config_file(self._settings.config_path) if m.target_device == self._settings.device]
        return self._manager.apply_config(models)

    def _run(self) -> None:
        period = self._settings.file_system_poll_wait_seconds
        while not self._stop.is_set():
            try:
                request = self._client.blpop([self._key], timeout=period or IDLE_WAIT_S)
                if request is not None:
                    self._answer(json.loads(request[1]))
                elif period:
                    self.poll()
            except (redis.RedisError, OSError) as exc:
                log.warning("Model watcher lost Redis, retrying: %s", exc)
                self._stop.wait(1.0)
            except Exception:  # a bad repository or request must not end watching for the others
                log.exception("Model watcher error")

    def _answer(self, request: dict[str, Any]) -> None:
        try:
            outcome = self.reload()
        except Exception as exc:  # answered all the same: the api would wait out its timeout for a reply
            log.exception("Configuration reload failed")
            outcome = {"changed": False, "error": f"reload failed: {type(exc).__name__}: {exc}"}
        with self._client.pipeline(transaction=False) as pipe:
            pipe.lpush(request["reply_to"], json.dumps(outcome))
            pipe.expire(request["reply_to"], CONTROL_REPLY_TTL_S)
            pipe.execute()
