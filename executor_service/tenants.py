"""The webhook signing secrets of the tenants whose jobs an executor runs, cached per executor.

The claimer reads them in the transaction of a start claim, for the tenants of its batch that
are not cached or whose entry is older than :data:`REFRESH_SECONDS`: one query for the whole
batch, and none at all while every entry is fresh. So a rotated secret reaches every executor
within a minute; a rotation keeps the previous secret valid meanwhile (deliveries are signed
with both), so receivers see no gap. A tenant that has no row yet (jobs written before tenants
existed belong to "default") is created on the spot, with a new secret.

Used by one claimer at a time (its batches run one after the other), so it needs no lock."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterable

from sqlalchemy.orm import Session

from common.core.secrets import Keyring, SecretError
from common.core.tenancy import ensure_tenant, signing_secrets
from common.infra.errors import ChronoqError

from executor_service.context import PermanentFailure

log = logging.getLogger(__name__)

#: Seconds a tenant's signing secrets are used before they are read again.
REFRESH_SECONDS = 60.0


class SigningUnavailable(ChronoqError):
    """The tenant's signing secrets have not been read yet (the read failed): the attempt fails
    and is retried like any transient failure."""


@dataclass(slots=True)
class Loaded:
    """Signing secrets read in a claim's transaction; they count once it has committed."""

    secrets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Tenants whose secrets could not be opened, with the reason.
    errors: dict[str, str] = field(default_factory=dict)
    at: float = 0.0


class Tenants:
    """Tenant → signing secrets (clear, current first), each entry at most ``refresh`` old."""

    def __init__(
        self, keyring: Keyring | None, *, refresh: float = REFRESH_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keyring = keyring
        self.refresh = refresh
        self._monotonic = monotonic
        self._secrets: dict[str, tuple[str, ...]] = {}
        self._read_at: dict[str, float] = {}
        self._errors: dict[str, str] = {}
        self.loads = 0  # queries made (for tests and the curious)

    def stale(self, names: Iterable[str]) -> set[str]:
        """Of ``names``, those not cached or older than ``refresh``."""
        oldest = self._monotonic() - self.refresh
        return {name for name in names if self._read_at.get(name, -float("inf")) <= oldest}

    def load(self, session: Session, names: Iterable[str], *, now: datetime) -> Loaded:
        """Read the secrets of the stale ones of ``names`` in ``session`` (the claim's
        transaction), creating the tenants that have no row. Nothing is cached before
        :meth:`accept`: a tenant created by a transaction that then rolls back must not sign."""
        wanted = self.stale(names)
        loaded = Loaded(at=self._monotonic())
        if not wanted:
            return loaded
        self.loads += 1
        try:
            loaded.secrets = signing_secrets(session, wanted, self.keyring)
            missing = wanted - loaded.secrets.keys()
            if missing:
                for name in sorted(missing):
                    ensure_tenant(session, name, self.keyring, now=now)
                    log.info("tenant %r had no row (jobs from before tenants); created with a new signing secret", name)
                loaded.secrets.update(signing_secrets(session, missing, self.keyring))
        except SecretError as exc:
            # Cannot be opened with this executor's keys (CHRONOQ_SECRET_KEY): its jobs fail
            # rather than deliver unsigned, until the key is fixed.
            log.error("signing secrets of tenants %s cannot be opened: %s", sorted(wanted), exc)
            loaded.errors = {name: str(exc) for name in wanted}
        return loaded

    def accept(self, loaded: Loaded) -> None:
        """Cache what :meth:`load` read, once its transaction has committed."""
        for name, values in loaded.secrets.items():
            self._secrets[name] = values
            self._read_at[name] = loaded.at
            self._errors.pop(name, None)
        for name, error in loaded.errors.items():
            # A secret read before goes on being used; the next batch reads it again.
            self._errors[name] = error

    def secrets(self, tenant: str) -> tuple[str, ...]:
        """``tenant``'s signing secrets in clear, current first. Raises
        :class:`PermanentFailure` when they cannot be opened, :class:`SigningUnavailable` when
        they were never read."""
        values = self._secrets.get(tenant)
        if values is not None:
            return values
        error = self._errors.get(tenant)
        if error is not None:
            raise PermanentFailure(f"signing secret of tenant {tenant!r} cannot be opened: {error}")
        raise SigningUnavailable(f"signing secrets of tenant {tenant!r} not read yet")
