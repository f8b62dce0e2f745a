"""Jobs: validate many samples and queue them (tasks.jobs.JobStore), and answer for them: status,
listing, result, cancel, retry of dead letters. With bearer tokens, `owner` is the caller's owner id and
a job is seen by its owner only (api.auth); without, it is None and every job is seen. A job is the caller's
tenant's (api.tenants.CALLER), within the tenant's limit of job samples queued."""

from __future__ import annotations

from collections.abc import Callable

from api.admission import Admission
from api.tenants import current_tenant
from inference.errors import InvalidArgument, TenantOverLimit
from inference.validation import RequestTensor, validate_inputs
from tasks.callback_targets import AllowList
from tasks.job_result import JobResult
from tasks.job_status import JobStatus
from tasks.jobs import JobOptions, JobStore
from tasks.link import RedisLink
from tasks.registry import RegistryView


class JobService:
    def __init__(
        self,
        registry: RegistryView,
        store: JobStore,
        admission: Admission,
        link: RedisLink,
        refused: Callable[[TenantOverLimit], None] = lambda error: None,
        callbacks: AllowList | None = None,
    ) -> None:
        """`refused`: told of each job refused beyond its tenant's job samples (metrics); `callbacks`: where job
        callbacks may go (--callback_allow; none: every callback_url is refused)."""
        self._registry = registry
        self._store = store
        self._admission = admission
        self._link = link
        self._refused = refused
        self._callbacks = callbacks or AllowList()

    def submit(
        self,
        name: str,
        version: int | None,
        decode: Callable[[], dict[str, RequestTensor]],
        nbytes: int,
        owner: str | None = None,
        options: JobOptions | None = None,
    ) -> str:
        """Validate many samples (any number along the first dimension, at least one) and queue them as a
        job; its id. `decode()` gives the job's tensors: it runs once `nbytes`, what it allocates, is
        held in the in-flight budget (an upload is unpacked only then). A callback URL is checked against
        the allow-list first (its host resolved): InvalidArgument if it does not admit it."""
        options = options or JobOptions()
        if options.callback is not None:
            self._callbacks.check(options.callback)
        with self._link.required():
            target = self._registry.resolve(name, version)
        with self._admission.admit(nbytes), self._link.required():
            arrays = validate_inputs(target.signature.with_any_batch(), decode())
            if not next(iter(arrays.values())).shape[0]:
                raise InvalidArgument("A job needs at least one sample: its inputs have 0 rows")
            tenant = current_tenant()
            try:
                return self._store.submit(
                    target,
                    arrays,
                    owner,
                    pinned=bool(version),
                    tenant=tenant.name,
                    samples=tenant.limits.job_samples,
                    options=options,
                )
            except TenantOverLimit as error:
                self._refused(error)
                raise

    def refuse_oversized(self, nbytes: int) -> None:
        """JobTooLarge (413) for a job whose tensors would take `nbytes` (see JobStore.refuse_oversized)."""
        self._store.refuse_oversized(nbytes)

    def status(self, job_id: str, owner: str | None) -> JobStatus:
        with self._link.required():
            return self._store.status(job_id, owner)

    def recent(self, owner: str | None) -> list[JobStatus]:
        """The latest jobs the caller may see, newest first."""
        with self._link.required():
            return [self._store.status(job_id, owner) for job_id in self._store.recent(owner=owner)]

    def cancel(self, job_id: str, owner: str | None) -> JobStatus:
        """Drop the chunks not run yet; the job's status after that."""
        with self._link.required():
            self._store.cancel(job_id, owner)
            return self._store.status(job_id, owner)

    def retry(self, job_id: str, owner: str | None) -> JobStatus:
        """Queue the job's dead letters again; its status after that."""
        with self._link.required():
            self._store.retry(job_id, owner)
            return self._store.status(job_id, owner)

    def result(self, job_id: str, owner: str | None) -> JobResult:
        """The outputs of a job that succeeded, read chunk by chunk as they are sent (tasks.job_result.JobResult)."""
        with self._link.required():
            return self._store.result(job_id, owner)
