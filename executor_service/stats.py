"""The executor's counters, read by the periodic status line."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

NAMES = ("scheduled", "fired", "succeeded", "failed", "retried", "skipped")


@dataclass(frozen=True)
class Snapshot:
    scheduled: int = 0
    fired: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    skipped: int = 0

    def line(self) -> str:
        return ", ".join(f"{name} {value}" for name, value in asdict(self).items())


class Counters:
    """Thread-safe counts since start: the pool threads and the polling thread both add."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(**self._values)
