"""Who is asking: the principal of a request, and the two ways to be refused."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from common.core.roles import Role
from common.infra.errors import ChronoqError


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: ``subject`` names the key (``key:<prefix>:<name>``) or the token's
    subject (``jwt:<sub>``); admins see every tenant."""

    subject: str
    tenant: str
    role: Role
    key_id: uuid.UUID | None = None

    @property
    def tenant_scope(self) -> str | None:
        """The tenant this caller's reads and changes are limited to; None: every tenant."""
        return None if self.role >= Role.ADMIN else self.tenant


class AuthFailed(ChronoqError):
    """No credential, or one that is not valid: 401."""


class Forbidden(ChronoqError):
    """A valid credential whose role is not enough: 403."""

    def __init__(self, message: str, *, subject: str | None = None, tenant: str | None = None) -> None:
        super().__init__(message)
        self.subject = subject
        self.tenant = tenant


class AuthUnavailable(ChronoqError):
    """The credential cannot be checked right now (the identity provider's keys are out of
    reach): 503, not the caller's fault."""
