"""API keys: ``cq_<prefix>_<secret>``. The prefix finds the key's row; only a SHA-256 of the
whole key is stored (a key is 190 random bits, so a fast hash is enough: there is nothing to
guess that a slow one would protect), and the key is shown once, when it is made."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.core.models import ApiKey
from common.core.roles import Role
from common.core.secrets import Keyring
from common.core.tenancy import check_tenant_name, ensure_tenant

KEY_PREFIX = "cq_"
_KEY = re.compile(r"^cq_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{32,64})$")


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    """A key just made: the only time its full text exists outside the client."""

    row: ApiKey
    key: str


def create_key(
    session: Session, *, tenant: str, role: Role, name: str, created_by: str | None,
    keyring: Keyring | None, now: datetime,
) -> NewKey:
    """Make a key for ``tenant`` (created if new) with ``role``."""
    ensure_tenant(session, check_tenant_name(tenant), keyring, now=now)
    prefix = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
                     for _ in range(12))
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(id=uuid.uuid4(), prefix=prefix, key_hash=key_hash(key), tenant=tenant, role=role.label,
                 name=name, created_at=now, created_by=created_by)
    session.add(row)
    session.flush()
    return NewKey(row, key)


def looks_like_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


def find_key(session: Session, key: str) -> ApiKey | None:
    """The live (not revoked) key row whose full text is ``key``, or None."""
    match = _KEY.match(key)
    if match is None:
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == match.group(1)))
    if row is None or row.revoked_at is not None:
        return None
    # Constant time: the comparison must not tell how much of a guessed key was right.
    return row if hmac.compare_digest(row.key_hash, key_hash(key)) else None


def list_keys(session: Session, tenant: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.scalars(query))


def revoke_key(session: Session, key_id: uuid.UUID, *, now: datetime) -> ApiKey | None:
    """Revoke the key; None if there is none. Revoking twice keeps the first time. API
    processes that verified it lately go on accepting it for CHRONOQ_KEY_CACHE_SECONDS."""
    row = session.get(ApiKey, key_id)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = now
    return row


def touch(session: Session, key_id: uuid.UUID, *, now: datetime) -> None:
    """Record that the key was used (callers do it at most once a minute per key)."""
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
