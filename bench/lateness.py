"""Lateness arithmetic shared by the fire and throughput benchmarks: an even plan of due times,
nearest-rank percentiles, and one summary per measured run."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable


def plan(rate: float, seconds: float, lead: float) -> list[int]:
    """Due times (ns since the epoch, whole microseconds) of ``rate × seconds`` jobs spread
    evenly over ``seconds``, the first ``lead`` seconds from now."""
    first = time.time_ns() + int(lead * 1e9)
    count = int(round(rate * seconds))
    return [(first + round(i * 1e9 / rate)) // 1000 * 1000 for i in range(count)]


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (NaN when empty)."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Summary:
    """What one run did against its plan. ``late_ms`` holds the lateness of the first arrival
    of every job that arrived, ascending; missing jobs are not in it."""

    system: str
    rate: float
    created: int
    fired: int = 0
    duplicates: int = 0
    early: int = 0
    late_ms: list[float] = field(default_factory=list)
    cpu_ms_per_job: float = math.nan
    #: Cores' worth of CPU that processes outside the benchmark used while the jobs fired: well
    #: above zero, the run shared the machine and its figures are pessimistic.
    other: float = math.nan
    note: str = ""

    @property
    def missing(self) -> int:
        return self.created - self.fired

    def p(self, q: float) -> float:
        return percentile(self.late_ms, q)

    def row(self) -> list[str]:
        return [
            self.system, f"{self.rate:,.0f}", f"{self.created:,}", f"{self.fired:,}", f"{self.missing:,}",
            f"{self.duplicates:,}", f"{self.early:,}", *(ms(self.p(q)) for q in (0.5, 0.95, 0.99)),
            ms(self.late_ms[-1] if self.late_ms else math.nan), ms(self.cpu_ms_per_job, 2), ms(self.other, 2),
        ]


HEADERS = ["system", "rate/s", "created", "fired", "missing", "dups", "early",
           "p50 ms", "p95 ms", "p99 ms", "max ms", "CPU ms/job", "other cores"]


def ms(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def summarize(system: str, rate: float, planned: list[int], arrivals: Iterable[tuple[int, int]]) -> Summary:
    """Compare ``(job index, arrival ns)`` pairs with the plan: the first arrival of a job
    counts, later ones are duplicates; an arrival before its planned time is early (its
    lateness is negative)."""
    first: dict[int, int] = {}
    total = 0
    for index, arrived in arrivals:
        if not isinstance(index, int) or not 0 <= index < len(planned):
            continue  # not one of this plan's calls
        total += 1
        if index not in first or arrived < first[index]:
            first[index] = arrived
    late = sorted((arrived - planned[i]) / 1e6 for i, arrived in first.items())
    return Summary(
        system=system, rate=rate, created=len(planned), fired=len(first), duplicates=total - len(first),
        early=sum(1 for value in late if value < 0), late_ms=late,
    )
