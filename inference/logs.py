"""Logging in the seed's format: [time] [serving] [level] message."""

from __future__ import annotations

import logging
import sys


class _SeedFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.level_lower = record.levelname.lower()
        return super().format(record)


def setup_logging(level: str = "INFO", path: str | None = None) -> None:
    formatter = _SeedFormatter("[%(asctime)s.%(msecs)03d] [serving] [%(level_lower)s] %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if path:
        handlers.append(logging.FileHandler(path))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("celery", "kombu", "amqp"):
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.WARNING))
