"""The dead-letter topic's message: a record that could not be processed (or a job that finally
failed), with the reason. Plain JSON any Kafka client reads; building and encoding one never
raises, whatever the record held, and what is written is bounded in size."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: The dead-letter format's version (the same numbering as the other topics' messages).
VERSION = 1


def _text(value: Any) -> str | None:
    """Readable text of a record's key or value, whatever its type (bytes are decoded leniently)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a dead letter must always be writable
        return f"<unprintable {type(value).__name__}>"


def _cut(value: Any, limit: int) -> Any:
    """A string cut to ``limit`` characters, its lone surrogates replaced (strict JSON readers
    refuse them); anything else unchanged."""
    if not isinstance(value, str):
        return value
    if len(value) > limit:
        value = value[:limit] + "…(truncated)"
    return value.encode("utf-8", errors="replace").decode("utf-8")


@dataclass(frozen=True)
class DeadLetter:
    """scheduled-jobs-dlq: what could not be processed, or a job that finally failed."""

    reason: str
    source_topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    job_id: str | None = None
    original: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Any, reason: str) -> "DeadLetter":
        """The dead letter for a consumed Kafka record that could not be processed; never raises,
        whatever the record holds."""
        return cls(
            reason=_text(reason) or "",
            source_topic=_text(getattr(record, "topic", None)),
            partition=getattr(record, "partition", None),
            offset=getattr(record, "offset", None),
            job_id=_text(getattr(record, "key", None)),
            original=_text(getattr(record, "value", None)),
        )

    def encode(self, limit: int = 10_000) -> bytes:
        """Strict JSON (ASCII) for the dead-letter topic; never raises. Each text is cut to
        ``limit`` characters and a larger ``extra`` to its cut JSON text, so what is written
        stays well under any broker's message size limit."""
        body = {"v": VERSION, **{name: _cut(value, limit) for name, value in vars(self).items()}}
        try:
            extra = json.dumps(self.extra, default=str, allow_nan=False)
            if len(extra) > limit:
                body["extra"] = {"truncated": _cut(extra, limit)}
            return json.dumps(body, default=str, allow_nan=False).encode()
        except Exception as exc:  # noqa: BLE001 - e.g. NaN or an odd key in extra: keep the reason
            return json.dumps({
                "v": VERSION,
                "reason": _cut(_text(self.reason), limit),
                "job_id": _cut(_text(self.job_id), limit),
                "original": _cut(_text(self.original), limit),
                "encode_error": _cut(f"{type(exc).__name__}: {_text(exc)}", limit),
            }).encode()
