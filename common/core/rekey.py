"""Key rotation, the database side: re-encrypt every stored secret under the first key of
``CHRONOQ_SECRET_KEY`` (``chronoq secrets rotate``).

Rotation: put the new key first (``CHRONOQ_SECRET_KEY=new,old``) on every service, run
:func:`rotate_all`, then drop the old key. Each page of rows is its own short transaction, so
the services keep running meanwhile, and a run that stops half way is simply run again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from sqlalchemy import Row, Select, Text, bindparam, cast, select, update
from sqlalchemy.orm import Session

from common.core.models import Job, Tenant
from common.core.secrets import SECRET_FIELDS, SECRET_KEY_ENV, Keyring, SecretError, reseal, reseal_text
from common.infra.config import Settings
from common.infra.db import session_scope
from common.infra.errors import ConfigError

log = logging.getLogger(__name__)

#: Rows read and written per transaction.
PAGE_SIZE = 1000


@dataclass
class RekeyResult:
    """What a :func:`rotate_all` run did."""

    jobs: int = 0  # rows re-encrypted
    values: int = 0  # secret values in those rows
    tenants: int = 0  # tenants whose signing secret(s) were re-encrypted
    unreadable: int = 0  # rows no key decrypts (left as they are; see the warnings)

    def __str__(self) -> str:
        text = f"{self.jobs} jobs ({self.values} secret values), {self.tenants} tenants' signing secrets"
        if self.unreadable:
            text += f"; {self.unreadable} rows no key decrypts (left unchanged, see the log)"
        return text


class _Progress:
    """A log line every ``every`` seconds: counts so far and the rate."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.start = self.last = time.monotonic()

    def tick(self, what: str, scanned: int, result: RekeyResult, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < self.every:
            return
        self.last = now
        rate = scanned / max(now - self.start, 1e-9)
        log.info("secrets rotate: %s: %d rows read, %s (%.0f rows/s)", what, scanned, result, rate)


def rotate_all(settings: Settings, *, log_every: float = 5.0) -> RekeyResult:
    """Re-encrypt every stored secret (encrypted values of job payloads, tenants' signing
    secrets) under the first key; a signing secret stored in clear gets encrypted. Safe to run
    again, and while the services run. Raises :class:`ConfigError` when no key is set."""
    keyring = Keyring.from_settings(settings)
    if keyring is None:
        raise ConfigError(f"{SECRET_KEY_ENV} is not set: there is no key to re-encrypt with")
    result = RekeyResult()
    _rotate_jobs(settings, keyring, result, _Progress(log_every))
    _rotate_tenants(settings, keyring, result, _Progress(log_every))
    return result


def _pages(
    settings: Settings, candidates: Select[Any], key: Any, what: str, result: RekeyResult, progress: _Progress,
) -> Iterator[tuple[Session, Sequence[Row[Any]]]]:
    """Page after page of ``candidates`` in ``key`` order (keyset: each page starts after the
    last key of the one before), each page with the session of its own transaction, which
    commits once the caller is done with it; progress is logged as pages go."""
    last: Any = None
    scanned = 0
    while True:
        with session_scope(settings) as session:
            rows = session.execute(candidates if last is None else candidates.where(key > last)).all()
            yield session, rows
        scanned += len(rows)
        progress.tick(what, scanned, result)
        if len(rows) < PAGE_SIZE:
            break
        last = rows[-1][0]
    progress.tick(what, scanned, result, final=True)


def _rotate_jobs(settings: Settings, keyring: Keyring, result: RekeyResult, progress: _Progress) -> None:
    table = Job.__table__
    # A text match finds the candidates without decoding every payload; it may over-match
    # (the word in some other value) and reseal() then finds nothing to do.
    candidates = (
        select(Job.id, Job.type, Job.payload)
        .where(Job.type.in_(list(SECRET_FIELDS)), cast(Job.payload, Text).like('%"encrypted"%'))
        .order_by(Job.id)
        .limit(PAGE_SIZE)
    )
    # updated_at is set to itself: re-encrypting is not a change anyone should see (its
    # onupdate default would otherwise move it).
    write = (
        update(table)
        .where(table.c.id == bindparam("row_id"))
        .values(payload=bindparam("new_payload"), updated_at=table.c.updated_at)
    )
    for session, rows in _pages(settings, candidates, Job.id, "jobs", result, progress):
        changes = []
        for row in rows:
            try:
                payload, count = reseal(row.type, row.payload, keyring)
            except SecretError as exc:
                result.unreadable += 1
                log.warning("secrets rotate: job %s left unchanged: %s", row.id, exc)
                continue
            if count:
                changes.append({"row_id": row.id, "new_payload": payload})
                result.values += count
        if changes:
            session.connection().execute(write, changes)
            result.jobs += len(changes)


def _rotate_tenants(settings: Settings, keyring: Keyring, result: RekeyResult, progress: _Progress) -> None:
    table = Tenant.__table__
    candidates = (
        select(Tenant.name, Tenant.signing_secret, Tenant.previous_signing_secret)
        .order_by(Tenant.name)
        .limit(PAGE_SIZE)
    )
    # Compare-and-set: an admin may rotate a signing secret meanwhile, and that new secret
    # (sealed by the API under the current first key) must not be overwritten by the old one.
    write = (
        update(table)
        .where(
            table.c.name == bindparam("row_name"),
            table.c.signing_secret == bindparam("old_current"),
            table.c.previous_signing_secret.is_not_distinct_from(bindparam("old_previous")),
        )
        .values(signing_secret=bindparam("new_current"), previous_signing_secret=bindparam("new_previous"))
    )
    for session, rows in _pages(settings, candidates, Tenant.name, "tenants", result, progress):
        for row in rows:
            try:
                current = reseal_text(row.signing_secret, keyring)
                old_previous = row.previous_signing_secret
                previous = reseal_text(old_previous, keyring) if old_previous else None
            except SecretError as exc:
                result.unreadable += 1
                log.warning("secrets rotate: tenant %r left unchanged: %s", row.name, exc)
                continue
            # One statement per tenant (there are few): its row count says whether it won.
            done = session.connection().execute(write, {
                "row_name": row.name, "old_current": row.signing_secret,
                "old_previous": row.previous_signing_secret, "new_current": current, "new_previous": previous,
            })
            result.tenants += done.rowcount
