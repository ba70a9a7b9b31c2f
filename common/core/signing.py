"""Signatures of ``http`` job deliveries (the ``Chronoq-Signature`` header).

Standard library only, so a receiver can copy this file as it is. The header reads
``t=<unix seconds>,v1=<hex>[,v1=<hex>...]``: one ``v1`` per signing secret of the tenant (two
while a secret is being rotated). Each ``v1`` is HMAC-SHA256, keyed with the secret, over::

    f"{t}.{job_id}.{attempt}.{dispatch_token}.".encode() + body

where ``body`` is the request body exactly as sent (empty when there is none). The timestamp
bounds replays; the dispatch token lets a receiver drop a stale re-run (:class:`TokenFence`).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from typing import Iterable

HEADER = "Chronoq-Signature"
#: Seconds a signature stays acceptable on either side of the receiver's clock.
DEFAULT_TOLERANCE = 300


class SignatureError(ValueError):
    """The signature is malformed, stale, or made with another secret."""


def signed_content(timestamp: int, job_id: object, attempt: int, token: int, body: bytes) -> bytes:
    """The bytes a signature covers."""
    return f"{int(timestamp)}.{job_id}.{int(attempt)}.{int(token)}.".encode() + body


def _digest(secret: str | bytes, content: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, content, hashlib.sha256).hexdigest()


def sign(
    secrets: Iterable[str | bytes], *, timestamp: int, job_id: object, attempt: int, token: int, body: bytes
) -> str:
    """The header value: ``t=...`` and one ``v1=...`` per secret (at least one is needed)."""
    content = signed_content(timestamp, job_id, attempt, token, body)
    parts = [f"v1={_digest(secret, content)}" for secret in secrets]
    if not parts:
        raise ValueError("sign() needs at least one secret")
    return ",".join([f"t={int(timestamp)}", *parts])


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {HEADER} header: {item.strip()!r} is not key=value")
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                raise SignatureError(f"malformed {HEADER} header: give one t=<unix seconds>")
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
        # Other keys (a later scheme) are skipped, so that a sender can add one without
        # breaking receivers that know only v1.
    if timestamp is None:
        raise SignatureError(f"malformed {HEADER} header: no t=<unix seconds>")
    if not signatures:
        raise SignatureError(f"malformed {HEADER} header: no v1 signature")
    return timestamp, signatures


def verify(
    header: str,
    secret: str | bytes,
    *,
    job_id: object,
    attempt: int,
    token: int,
    body: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Check ``header`` against ``secret`` and the delivery's own values; raises
    :class:`SignatureError` saying why it does not match. ``now`` is the receiver's Unix time."""
    timestamp, signatures = _parse(header or "")
    if abs(now - timestamp) > tolerance:
        raise SignatureError(
            f"stale signature: t={timestamp} is {abs(now - timestamp):.0f}s from now "
            f"(tolerance {tolerance:g}s; check both clocks)"
        )
    expected = _digest(secret, signed_content(timestamp, job_id, attempt, token, body))
    # compare_digest on every candidate: the time taken does not tell how much of one matched.
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise SignatureError("no v1 signature matches this secret and delivery")


class TokenFence:
    """In-memory memory of the highest dispatch token seen per job: a delivery carrying a
    lower token comes from a stale re-run and should be dropped. A receiver running several
    processes keeps the same rule in its database instead."""

    def __init__(self) -> None:
        self._highest: dict[str, int] = {}
        self._lock = threading.Lock()

    def admit(self, job_id: object, token: int) -> bool:
        """Whether a delivery with ``token`` may be processed; remembers it if so."""
        key = str(job_id)
        with self._lock:
            if token < self._highest.get(key, token):
                return False
            self._highest[key] = token
            return True
