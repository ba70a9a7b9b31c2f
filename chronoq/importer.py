"""``chronoq jobs import FILE.jsonl``, the parts without I/O: reading the lines into jobs (each
remembers its line number), giving each one a stable idempotency key, and the summary of what
failed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from chronoq.errors import flatten


@dataclass(frozen=True)
class Line:
    """One job of the file: its 1-based line number and its fields."""

    number: int
    job: dict[str, Any]


@dataclass(frozen=True)
class Failure:
    """A line that made no job: its number, the code (422, 409, or 0 for a line that is not a
    JSON object, refused before sending) and each field's problem."""

    line: int
    code: int
    errors: list[tuple[str, str]]


@dataclass
class Summary:
    """What an import did."""

    lines: int = 0
    created: int = 0
    existing: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def as_json(self) -> dict[str, Any]:
        return {"lines": self.lines, "created": self.created, "existing": self.existing, "failed": self.failed,
                "failures": [{"line": f.line, "code": f.code, "errors": {path: text for path, text in f.errors}}
                             for f in sorted(self.failures, key=lambda f: f.line)]}


def read_lines(raw: bytes, key_prefix: str | None = None) -> tuple[list[Line], list[Failure]]:
    """The jobs of a JSON-lines file (blank lines and lines starting with ``#`` skipped), and
    the lines that are not a JSON object. A job without an ``idempotency_key`` gets
    ``<prefix>-<line>``, the prefix made from the file's content by default: importing the
    same file again (after an interruption, say) returns the jobs it made instead of making
    them twice."""
    prefix = key_prefix or "import-" + hashlib.sha256(raw).hexdigest()[:20]
    lines: list[Line] = []
    bad: list[Failure] = []
    for number, text in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        try:
            job = json.loads(text)
        except ValueError as exc:
            bad.append(Failure(number, 0, [("_", f"not valid JSON: {exc}")]))
            continue
        if not isinstance(job, dict):
            bad.append(Failure(number, 0, [("_", f"not a JSON object but {type(job).__name__}")]))
            continue
        job.setdefault("idempotency_key", f"{prefix}-{number}")
        lines.append(Line(number, job))
    return lines, bad


def chunks(lines: list[Line], size: int) -> Iterator[list[Line]]:
    """``lines`` in consecutive chunks of at most ``size``."""
    for start in range(0, len(lines), size):
        yield lines[start:start + size]


def flatten_errors(errors: Any) -> list[tuple[str, str]]:
    """(field, message) pairs of a batch item's ``errors``."""
    return list(flatten(errors))


def count(summary: Summary, sent: Iterable[Line], answers: Iterable[Any]) -> None:
    """Add one chunk's per-item answers (:class:`chronoq.models.BatchItem`, in request order) to
    ``summary``."""
    for line, item in zip(sent, answers):
        if item.code == 201:
            summary.created += 1
        elif item.code == 200:
            summary.existing += 1
        else:
            summary.failures.append(Failure(line.number, item.code, flatten_errors(item.errors)))
