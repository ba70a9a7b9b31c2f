"""Tenants as rows: created on first use with a random webhook signing secret, and read back
with their secrets in clear for the executors that sign deliveries."""

from __future__ import annotations

import re
import secrets as random
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.core.models import Tenant
from common.core.secrets import Keyring, open_text, seal_text

#: Bytes of randomness in a new signing secret.
SECRET_BYTES = 32
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def check_tenant_name(name: str) -> str:
    """``name`` if it is a valid tenant name; ``ValueError`` saying what is allowed otherwise."""
    if not TENANT_NAME.match(name):
        raise ValueError("tenant names are 1-64 characters: lower-case letters, digits, '.', '_' and '-', "
                         "starting with a letter or digit")
    return name


def new_signing_secret() -> str:
    """A fresh webhook signing secret (URL-safe text)."""
    return "whsec_" + random.token_urlsafe(SECRET_BYTES)


def ensure_tenant(session: Session, name: str, keyring: Keyring | None, *, now: datetime) -> Tenant:
    """The tenant ``name``, created (with a new signing secret) if it does not exist yet; safe
    when two processes create it at once."""
    tenant = session.get(Tenant, name)
    if tenant is not None:
        return tenant
    try:
        with session.begin_nested():
            tenant = Tenant(name=name, created_at=now, signing_secret=seal_text(new_signing_secret(), keyring))
            session.add(tenant)
    except IntegrityError:  # another process created it between our read and our insert
        tenant = session.get(Tenant, name)
        assert tenant is not None
    return tenant


def signing_secrets(session: Session, names: set[str], keyring: Keyring | None) -> dict[str, tuple[str, ...]]:
    """Each named tenant's signing secrets in clear, current first (the previous one too while a
    rotation is in progress). Tenants without a row are left out."""
    if not names:
        return {}
    rows = session.execute(
        select(Tenant.name, Tenant.signing_secret, Tenant.previous_signing_secret).where(Tenant.name.in_(names))
    )
    result: dict[str, tuple[str, ...]] = {}
    for name, current, previous in rows:
        values = [open_text(current, keyring)]
        if previous:
            values.append(open_text(previous, keyring))
        result[name] = tuple(values)
    return result
