"""Roles, from least to most: ``viewer`` reads, ``writer`` also changes jobs, ``admin`` also
manages keys and tenants, runs ``shell`` jobs and sees every tenant's data."""

from __future__ import annotations

import enum
from typing import Any


class Role(enum.IntEnum):
    """A role; a higher value may do everything a lower one may."""

    VIEWER = 1
    WRITER = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> "Role":
        """The role named ``value`` (any case); ``ValueError`` naming the choices otherwise."""
        try:
            return cls[value.strip().upper()]
        except (KeyError, AttributeError):
            raise ValueError(f"unknown role {value!r}; choose one of {', '.join(ROLE_NAMES)}") from None


ROLE_NAMES = tuple(role.label for role in Role)


def highest_role(claim: Any) -> Role | None:
    """The highest known role in a token claim: a string (``"writer"``, or space separated as
    in OAuth scopes) or a list of strings; unknown names are ignored. None when none is known."""
    if isinstance(claim, str):
        names = claim.replace(",", " ").split()
    elif isinstance(claim, (list, tuple)):
        names = [item for item in claim if isinstance(item, str)]
    else:
        return None
    known = [Role[name.upper()] for name in names if name.upper() in Role.__members__]
    return max(known) if known else None
