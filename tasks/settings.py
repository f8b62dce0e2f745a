"""The settings the queue layer reads, each declared once (see inference.options): Redis, async jobs,
memory budgets, logging and the worker role's own. `ovms.settings` composes them with the api's."""

from __future__ import annotations

from dataclasses import dataclass

from inference.model_config import ModelSettings
from inference.options import from_to, not_negative, option, positive

MAX_REQUEST_MB = 2047  # gRPC caps messages at 2 GiB
# Request bytes an api process (or a worker) holds at once, by default: two maximum-size requests, or many
# smaller ones. A request beyond it is refused with RESOURCE_EXHAUSTED / 429, unless nothing else is held.
INFLIGHT_REQUESTS_BY_DEFAULT = 2
MAX_INFLIGHT_MB = 1 << 20  # 1 TiB: only a bound against typing mistakes
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_LOG_LEVEL = "INFO"


def _log_level(flag: str, text: str) -> str:
    if not text:  # `--log_level "$LEVEL"` with the variable unset: the default, as the seed takes it
        return DEFAULT_LOG_LEVEL
    if text.upper() not in LOG_LEVELS:
        raise ValueError(f"{flag} should be one of: {', '.join(LOG_LEVELS)}")
    return text.upper()


@dataclass(frozen=True)
class LogSettings:
    log_level: str = option(
        DEFAULT_LOG_LEVEL, ", ".join(LOG_LEVELS[:-1]) + " or " + LOG_LEVELS[-1], convert=_log_level, env="LOG_LEVEL"
    )
    log_path: str | None = option(None, "also write the log to this file")


@dataclass(frozen=True)
class RedisSettings:
    """Where the broker (Celery's queues) and the result backend (everything else) live; a Redis
    password belongs in the variables, which keep it off `ps`."""

    broker_url: str | None = option(
        None,
        "Redis URL of the broker: redis://, rediss:// or sentinel://…?master_name=",
        env="OVMS_BROKER_URL",
        default_text="embedded Redis",
    )
    result_backend_url: str | None = option(
        None,
        "Redis URL of the result backend (the same forms)",
        env="OVMS_RESULT_BACKEND_URL",
        default_text="the broker",
    )


@dataclass(frozen=True)
class JobSettings:
    """Async jobs: their tensors wait in Redis until a worker runs them. 128 MiB is 500,000 digits samples
    or 220 224x224 float images per job; the backlog of all jobs keeps Redis well under a gigabyte."""

    job_ttl_s: int = option(86400, "how long async jobs and their results are kept, seconds", type=int, check=positive)
    job_timeout_s: int = option(3600, "an async job not finished within this fails, seconds", type=int, check=positive)
    job_max_mb: int = option(128, "tensors of one async job in MiB, else 413", type=int, check=positive)
    job_backlog_mb: int = option(
        512, "tensors of all async jobs not yet run in MiB, else 429", type=int, check=positive
    )


@dataclass(frozen=True)
class BudgetSettings:
    """Request sizes: the largest one an api accepts, read by the workers too: the bytes an api or a worker
    holds at once are by default two of the largest.

    256 MiB holds a batch of ~400 224x224 float images as tensor_content or ~80 as JSON numbers, far
    beyond any single inference here, yet a few such requests in flight fit in memory (a JSON body
    expands several times when parsed)."""

    max_request_mb: int = option(
        256,
        f"largest REST body / gRPC message in MiB, 1 to {MAX_REQUEST_MB}",
        type=int,
        check=from_to(1, MAX_REQUEST_MB, " (gRPC messages are limited to 2 GiB)"),
    )

    @property
    def max_request_bytes(self) -> int:
        return self.max_request_mb << 20

    def inflight_budget_mb(self, budget_mb: int | None) -> int:
        """A budget given, or the default one: INFLIGHT_REQUESTS_BY_DEFAULT requests of the largest size."""
        return budget_mb if budget_mb is not None else INFLIGHT_REQUESTS_BY_DEFAULT * self.max_request_mb


@dataclass(frozen=True)
class WorkerSettings(LogSettings, RedisSettings, JobSettings, BudgetSettings, ModelSettings):
    """What `tasks.worker.run_worker` reads."""

    device: str | None = option(
        None, "worker role: the device whose models this worker serves", default_text="the config's only device"
    )
    worker_concurrency: int = option(64, "worker role: messages one worker handles at once", type=int, check=positive)
    task_events: bool = option(False, "workers send Celery task events, for Flower", type=None)
    file_system_poll_wait_seconds: int = option(
        1, "model and config polling period; 0 disables", type=int, check=not_negative
    )
    worker_max_inflight_mb: int | None = option(
        None,
        "worker role: tensor MiB a worker holds at once before RESOURCE_EXHAUSTED / 429",
        type=int,
        check=from_to(1, MAX_INFLIGHT_MB),
        default_text="2 x --max_request_mb",
    )

    worker_memory_mb: int = option(
        0,
        "worker role: MiB the models a worker holds in memory may take together; a load beyond it first unloads "
        "the least recently used versions (loaded again on demand); 0 = no limit",
        type=int,
        check=from_to(0, MAX_INFLIGHT_MB),
    )

    @property
    def worker_max_inflight_bytes(self) -> int:
        return self.inflight_budget_mb(self.worker_max_inflight_mb) << 20
