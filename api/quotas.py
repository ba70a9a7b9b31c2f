"""Per-tenant limits on creates: jobs not yet finished, creates per second, batch size. Each
tenant's limits (its row's overrides, or the deployment's defaults) and its count of unfinished
jobs are read at most once a second per API process, so a create pays no extra query; the
count is then kept current with this process's own creates."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import func, select

from common.core.models import Job
from common.core.secrets import Keyring
from common.core.states import JobStatus, TERMINAL
from common.core.tenancy import ensure_tenant
from common.infra import clock
from common.infra.config import Settings
from common.infra.db import session_scope

from api.errors import http_error
from api.ratelimit import Limiter

#: Seconds a tenant's limits and pending count are reused.
REFRESH = 1.0
_UNFINISHED = tuple(s.value for s in JobStatus if s not in TERMINAL)


@dataclass
class _Tenant:
    max_pending: int
    per_second: float
    max_batch: int
    pending: int
    read_at: float


class Quotas:
    """The create limits of every tenant, as seen by this process."""

    def __init__(self, settings: Settings, limiter: Limiter, keyring: Keyring | None) -> None:
        self.settings = settings
        self.limiter = limiter
        self.keyring = keyring
        self._lock = threading.Lock()
        self._tenants: dict[str, _Tenant] = {}

    def _read(self, tenant: str) -> _Tenant:
        s = self.settings
        with session_scope(s) as session:
            row = ensure_tenant(session, tenant, self.keyring, now=clock.utcnow())
            pending = session.scalar(
                select(func.count()).select_from(Job).where(Job.tenant == tenant, Job.status.in_(_UNFINISHED))
            ) or 0
            return _Tenant(
                max_pending=row.max_pending_jobs or s.tenant_max_pending_jobs,
                per_second=row.creates_per_second or s.tenant_creates_per_second,
                max_batch=min(row.max_batch_jobs or s.tenant_max_batch_jobs, s.tenant_max_batch_jobs),
                pending=pending, read_at=time.monotonic(),
            )

    def limits(self, tenant: str) -> _Tenant:
        """``tenant``'s limits and pending count, at most :data:`REFRESH` seconds old."""
        with self._lock:
            cached = self._tenants.get(tenant)
        if cached is not None and time.monotonic() - cached.read_at < REFRESH:
            return cached
        fresh = self._read(tenant)
        with self._lock:
            self._tenants[tenant] = fresh
        return fresh

    def forget(self, tenant: str) -> None:
        """Read ``tenant``'s limits again on its next create (they were just changed)."""
        with self._lock:
            self._tenants.pop(tenant, None)

    def admit(self, tenant: str, count: int) -> None:
        """Let ``count`` new jobs of ``tenant`` in, or raise the HTTP error that says which limit
        they hit: 413 a batch over the tenant's batch size, 429 (with Retry-After) over its
        create rate or its pending jobs."""
        limits = self.limits(tenant)
        if count > limits.max_batch:
            raise http_error(413, f"at most {limits.max_batch:,} jobs per batch for tenant {tenant!r}",
                             errors={"json": {"jobs": [f"has {count:,} jobs; send at most {limits.max_batch:,}"]}})
        if limits.pending + count > limits.max_pending:
            raise http_error(
                429, f"tenant {tenant!r} has {limits.pending:,} unfinished jobs; its limit is {limits.max_pending:,} "
                "(CHRONOQ_TENANT_MAX_PENDING_JOBS or the tenant's max_pending_jobs)", headers={"Retry-After": "10"},
            )
        verdict = self.limiter.take(tenant, count, per_second=limits.per_second, burst=limits.max_batch)
        if not verdict.allowed:
            raise http_error(
                429, f"tenant {tenant!r} creates more than {limits.per_second:g} jobs per second "
                "(CHRONOQ_TENANT_CREATES_PER_SECOND or the tenant's creates_per_second)",
                headers={"Retry-After": str(verdict.retry_after)},
            )
        with self._lock:
            limits.pending += count
