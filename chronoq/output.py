"""What the CLI prints: aligned tables and key/value blocks for people, JSON for scripts. Pure
(strings in, strings out)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence


def when(value: datetime | None) -> str:
    """A time as people read it in a table: UTC, to the millisecond (``-`` for none)."""
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return when(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    text = [[cell(value) for value in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in text]) for i, h in enumerate(headers)]
    lines = [headers, *text]
    return "\n".join(
        "  ".join(value.ljust(widths[i]) if i < len(headers) - 1 else value for i, value in enumerate(line)).rstrip()
        for line in lines
    )


def block(pairs: Iterable[tuple[str, Any]]) -> str:
    """``key: value`` lines, keys aligned; None values are left out."""
    shown = [(key, cell(value)) for key, value in pairs if value is not None]
    width = max((len(key) for key, _ in shown), default=0)
    return "\n".join(f"{key + ':':<{width + 1}} {value}" for key, value in shown)


def to_json(value: Any) -> str:
    """One JSON document (a result's ``raw`` JSON, as the API sent it)."""
    return json.dumps(_raw(value), ensure_ascii=False, default=str)


def _raw(value: Any) -> Any:
    if isinstance(value, list):
        return [_raw(item) for item in value]
    raw = getattr(value, "raw", None)
    return dict(raw) if isinstance(raw, Mapping) else value
