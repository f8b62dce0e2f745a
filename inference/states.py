"""Model version states and statuses, as TensorFlow Serving's GetModelStatus names them.

`VersionStatus` is what every layer reports about one version: the worker that holds it
(inference.manager), the heartbeat that publishes it (tasks.messages), the api's merged view of all
workers (tasks.registry) and both frontends' status answers. The states are a StrEnum, so they are
their names in JSON, in protobuf enum lookups and in f-strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from inference.priorities import DEFAULT_PRIORITY
from inference.signature import ModelSignature


class VersionState(StrEnum):
    UNKNOWN = "UNKNOWN"  # the api remembers the version (tasks.registry's catalog) but no live worker reports it
    START = "START"  # its files are appearing: loaded once they stay unchanged for one poll
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"  # unloaded, or failed to load (with its error)


PREPARING = (VersionState.START, VersionState.LOADING)  # on its way to AVAILABLE
RETIRING = (VersionState.UNLOADING, VersionState.END)  # on its way out, or gone
# The error_message of a version that is not resident (its error_code stays OK): requests still load it.
NOT_RESIDENT = "Not resident: the next request loads it"
LOADING_ON_DEMAND = "Loading on demand: requests wait for it"


@dataclass(frozen=True)
class VersionStatus:
    """One version's state, with the error that explains it (TF Serving's ModelVersionStatus)."""

    version: int
    state: VersionState
    error_code: str = "OK"
    error_message: str = "OK"

    @property
    def failed(self) -> bool:
        """Whether the version ended because it could not load (its error_message says why)."""
        return self.state == VersionState.END and self.error_code != "OK"


@dataclass(frozen=True)
class Residency:
    """Whether a servable version is in a worker's memory, reported by workers that load versions on demand
    (a memory budget, or a model's idle_unload_s: inference.residency). A version that is not resident is
    still served: a request for it loads it first (its state is AVAILABLE until then, LOADING meanwhile)."""

    resident: bool
    load_s: float = 0.0  # how long its last load on this worker took (0: not measured yet)
    loading_since: float = 0.0  # time.time() when the load on demand running now began (0: none runs)


@dataclass(frozen=True)
class VersionReport:
    """What a worker says about a version it holds: its status, its signature while it serves (or may be
    loaded on demand), and where it stands in memory (None: always resident, as without on-demand loading)."""

    status: VersionStatus
    signature: ModelSignature | None = None
    residency: Residency | None = None

    @property
    def on_demand(self) -> bool:
        """Servable, but not in memory: a request loads it (state AVAILABLE), or a load runs (LOADING)."""
        return self.residency is not None and not self.residency.resident


@dataclass(frozen=True)
class ModelReport:
    """What a worker says about one configured model (inference.manager.ModelManager.snapshot)."""

    versions: dict[int, VersionReport]
    error: str  # the repository cannot be read ("" if it can)
    active: bool  # False once removed from the configuration
    max_queue_size: int
    empty: str = ""  # the repository can be read but offers no version to load: why ("" otherwise)
    default_priority: int = DEFAULT_PRIORITY  # the level of a request that asks for none
