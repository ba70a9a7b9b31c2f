"""The audit log's writer: rows gathered per process and inserted in group commits."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from sqlalchemy import insert, text

from common.core.models import AuditRecord
from common.infra.config import Settings
from common.infra.db import session_scope
from common.infra.errors import DatabaseUnavailable

log = logging.getLogger(__name__)


class AuditWriter:
    """Writes this process's audit rows in group commits: a request only appends its row; a
    thread inserts what gathered every :data:`EVERY` seconds in one statement, and at once on
    :meth:`flush` (before the audit log is read, and when the worker stops). The commit does not
    wait for PostgreSQL's WAL flush: the change a row records already did."""

    EVERY = 0.1
    #: Rows kept while the database is away; beyond it the oldest are dropped, with an error.
    BACKLOG = 100_000

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._write = threading.Lock()  # one writer at a time: the thread or a flush
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    def record(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._rows.append(row)
            if self._thread is None or self._pid != os.getpid():  # made after a fork, per worker
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.EVERY):
            self.flush()

    def flush(self) -> None:
        """Write every row recorded so far (kept for the next try if the database is away)."""
        with self._write:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return
            try:
                with session_scope(self.settings) as session:
                    if session.get_bind().dialect.name == "postgresql":
                        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
                    session.execute(insert(AuditRecord.__table__), rows)
            except DatabaseUnavailable as exc:
                with self._lock:
                    self._rows[:0] = rows
                    dropped = len(self._rows) - self.BACKLOG
                    if dropped > 0:
                        del self._rows[:dropped]
                log.error("%d audit records not written yet (%s)%s", len(rows), exc,
                          f"; dropped the {dropped} oldest" if dropped > 0 else "")

    def close(self) -> None:
        self._stop.set()
        self.flush()
