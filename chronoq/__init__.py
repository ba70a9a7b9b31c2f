"""chronoq's Python client: ``from chronoq import Client``.

The package is imported lazily: ``chronoq.cli`` (the ``chronoq jobs`` and ``chronoq schedules``
commands) only builds argument parsers until a client command runs, so the server commands
never load ``requests`` or the client."""

from __future__ import annotations

from typing import Any

__all__ = ["Client", "ChronoqError"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from chronoq.client import Client

        return Client
    if name == "ChronoqError":
        from chronoq.errors import ChronoqError

        return ChronoqError
    raise AttributeError(name)
