"""When a schedule fires: cron (5 fields, minute first; or 6, seconds first as in Quartz) or a
fixed interval, in an IANA time zone, with the daylight-saving policies, deterministic jitter
and catch-up decisions. Pure: no clock is read here (callers pass ``now``), nothing is stored.

Cron expressions describe wall-clock times in the schedule's zone, so croniter walks naive local
times and each one is then placed on the UTC timeline by :func:`place`:

- a local time that does not exist (the spring gap, e.g. 02:30 in Europe/Berlin on the last
  Sunday of March) runs at the first valid instant after the gap (``dst_gap="shift"``, the
  default: a nightly job still runs that night) or not at all (``"skip"``);
- a local time that happens twice (the autumn fold) runs at its first occurrence only
  (``dst_fold="once"``, the default: a nightly job runs once) or at both (``"twice"``).

Intervals are absolute durations from ``start_at`` and never meet daylight saving."""

from __future__ import annotations

import enum
import hashlib
import heapq
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter

UTC = timezone.utc
#: How far ahead a schedule may look for its next fire time before it counts as empty (a cron
#: that names 30 February, or an end before the first match).
HORIZON = timedelta(days=366 * 5)
#: How far back in local time a walk starts when the UTC offset changed just before its start:
#: longer than any fold (the clocks go back at most an hour; two hours once, in wartime Europe).
LOOKBACK = timedelta(hours=3)


class DstGap(str, enum.Enum):
    SHIFT = "shift"  # run at the first valid instant after the gap
    SKIP = "skip"    # do not run


class DstFold(str, enum.Enum):
    ONCE = "once"    # the first of the two instants only
    TWICE = "twice"  # both


class Catchup(str, enum.Enum):
    SKIP = "skip"      # missed occurrences are not run
    LATEST = "latest"  # the most recent missed one runs, once
    ALL = "all"        # every missed one runs (at most catchup_limit, spread out)


def check_cron(expression: str) -> str:
    """``expression`` normalised (single spaces) if it is a valid 5- or 6-field cron;
    ``ValueError`` saying what is wrong otherwise."""
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"has {len(fields)} fields; give 5 (minute hour day month weekday) or 6 "
                         "(second first, as in Quartz)")
    normal = " ".join(fields)
    try:
        croniter(normal, datetime(2000, 1, 1), second_at_beginning=len(fields) == 6)
    except (CroniterBadCronError, CroniterNotAlphaError, ValueError, KeyError) as exc:
        raise ValueError(f"is not a valid cron expression: {exc}") from None
    return normal


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ``ValueError`` naming it when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone (e.g. UTC, Europe/Berlin, America/New_York)") from None


@dataclass(frozen=True)
class Timing:
    """What decides a schedule's fire times. Exactly one of ``cron`` and ``interval_seconds``."""

    cron: str | None = None
    interval_seconds: float | None = None
    timezone: str = "UTC"
    start_at: datetime | None = None  # aware; the interval's anchor, and no fire time before it
    end_at: datetime | None = None    # aware; no fire time at or after it
    dst_gap: DstGap = DstGap.SHIFT
    dst_fold: DstFold = DstFold.ONCE
    jitter_seconds: float = 0.0
    seed: str = ""  # the schedule's identity: the same schedule always gets the same jitter

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("give exactly one of cron and interval_seconds")
        if self.interval_seconds is not None and self.interval_seconds < 1:
            raise ValueError("interval_seconds must be at least 1")
        if self.jitter_seconds < 0:
            raise ValueError("jitter_seconds must not be negative")


@dataclass(frozen=True)
class FireTime:
    """One occurrence: ``nominal`` is its identity (the UTC instant the definition names, after
    the DST policy, before jitter); ``at`` is when it runs (with jitter); ``local`` is ``at`` in
    the schedule's zone; ``note`` says why it moved, if it did."""

    nominal: datetime
    at: datetime
    local: datetime
    note: str | None = None


def jitter(timing: Timing) -> timedelta:
    """The schedule's own offset in [0, jitter_seconds), the same on every call and process."""
    if timing.jitter_seconds <= 0:
        return timedelta(0)
    digest = int.from_bytes(hashlib.sha256(timing.seed.encode()).digest()[:8], "big")
    millis = digest % max(1, int(timing.jitter_seconds * 1000))
    return timedelta(milliseconds=millis)


def place(local: datetime, tz: ZoneInfo, gap: DstGap, fold: DstFold) -> list[tuple[datetime, str | None]]:
    """The UTC instants at which the naive wall-clock time ``local`` in ``tz`` runs, with a
    note for each one the DST policy moved or doubled; empty when the policy skips it."""
    first = local.replace(tzinfo=tz, fold=0)
    second = local.replace(tzinfo=tz, fold=1)
    at_first, at_second = first.astimezone(UTC), second.astimezone(UTC)
    if first.utcoffset() == second.utcoffset():
        return [(at_first, None)]
    # The two folds disagree: the time is either in a gap (it does not exist, and the folds
    # read it with the offsets before and after) or in a fold (it exists twice).
    if at_first.astimezone(tz).replace(tzinfo=None) != local:
        if gap is DstGap.SKIP:
            return []
        # The first valid instant after the gap is where the clock jumped to. Of the two
        # readings, the later one lies after the jump, with the new offset.
        start = _gap_end(max(at_first, at_second), tz)
        return [(start, f"{local:%H:%M:%S} does not exist on {local:%Y-%m-%d} in {tz.key} (DST): "
                        f"runs at {start.astimezone(tz):%H:%M:%S}")]
    note = f"{local:%H:%M:%S} happens twice on {local:%Y-%m-%d} in {tz.key} (DST)"
    if fold is DstFold.TWICE:
        return [(at_first, note + ": first of two runs"), (at_second, note + ": second of two runs")]
    return [(at_first, note + ": runs at the first only")]


def _gap_end(instant: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant at which the clocks jumped over the gap that ``instant`` (an instant just
    after the jump) follows, found by stepping back minute by minute while the offset stays the
    new one (every zone's transitions fall on whole minutes, within a few hours)."""
    probe = instant.replace(second=0, microsecond=0)
    offset = probe.astimezone(tz).utcoffset()
    step = timedelta(minutes=1)
    for _ in range(24 * 60):
        before = probe - step
        if before.astimezone(tz).utcoffset() != offset:
            return probe
        probe = before
    return instant


def fire_times(timing: Timing, after: datetime, *, limit: int, until: datetime | None = None) -> Iterator[FireTime]:
    """The schedule's occurrences whose nominal time is after ``after`` (exclusive), in order,
    at most ``limit``, stopping before ``until`` and ``end_at``."""
    tz = zone(timing.timezone)
    offset = jitter(timing)
    stop = min((t for t in (until, timing.end_at) if t is not None), default=None)
    earliest = max(after, timing.start_at - timedelta(microseconds=1)) if timing.start_at else after
    count = 0
    for nominal, note in _nominal(timing, tz, earliest):
        if stop is not None and nominal >= stop:
            return
        at = nominal + offset
        if offset:
            note = (note + "; " if note else "") + f"jitter +{offset.total_seconds():g}s"
        yield FireTime(nominal, at, at.astimezone(tz), note)
        count += 1
        if count >= limit:
            return


def _nominal(timing: Timing, tz: ZoneInfo, after: datetime) -> Iterator[tuple[datetime, str | None]]:
    if timing.interval_seconds is not None:
        step = timedelta(seconds=timing.interval_seconds)
        anchor = timing.start_at or datetime(2000, 1, 1, tzinfo=UTC)
        n = max(0, int((after - anchor) / step) + 1) if after >= anchor else 0
        while True:
            at = anchor + n * step
            if at > after:
                yield at, None
            n += 1
    assert timing.cron is not None
    six = len(timing.cron.split()) == 6
    # A local time before ``after``'s runs after it only across a daylight-saving change near
    # it (a fold repeats up to an hour; a time in a gap runs at its end): start the walk three
    # hours back when the offset changes around ``after``, else a second back (a per-second cron
    # would otherwise walk 10,800 times for nothing on every call).
    local_after = after.astimezone(tz)
    near = {(after + k * LOOKBACK).astimezone(tz).utcoffset() for k in (-1, 1)}
    back = LOOKBACK if near != {local_after.utcoffset()} else timedelta(seconds=1)
    walk = croniter(timing.cron, (local_after - back).replace(tzinfo=None), second_at_beginning=six)
    horizon = after + HORIZON
    seen: set[datetime] = set()
    # Local times come in wall-clock order, which in a fold is not the instants' order (with
    # dst_fold "twice", 02:10 of the second pass runs after 02:50 of the first): instants wait
    # here until no later local time can run before them.
    pending: list[tuple[datetime, str | None]] = []
    skipped: str | None = None  # a time the gap policy skipped, told with the next fire time
    while True:
        try:
            local = walk.get_next(datetime)
        except CroniterBadDateError:
            break
        floor = local.replace(tzinfo=UTC) - _largest_offset(local, tz)
        while pending and pending[0][0] <= floor:
            yield heapq.heappop(pending)
        placed = place(local, tz, timing.dst_gap, timing.dst_fold)
        if not placed and local.replace(tzinfo=tz).astimezone(UTC) > after:
            skipped = f"{local:%Y-%m-%d %H:%M:%S} does not exist in {tz.key} (DST): skipped"
        for instant, note in placed:
            if instant > after and instant not in seen:
                seen.add(instant)
                if skipped:
                    note, skipped = (f"{skipped}; {note}" if note else skipped), None
                heapq.heappush(pending, (instant, note))
        if local.replace(tzinfo=tz).astimezone(UTC) > horizon:
            break
    while pending:
        yield heapq.heappop(pending)


def _largest_offset(local: datetime, tz: ZoneInfo) -> timedelta:
    """The largest UTC offset ``tz`` has within three hours of the naive local time ``local``:
    a local time at or after ``local`` runs no earlier than ``local`` less it (changes are
    months apart and move the clocks by at most two hours)."""
    return max((local + k * LOOKBACK).replace(tzinfo=tz).utcoffset() or timedelta(0) for k in (-1, 0, 1))


def next_fire(timing: Timing, after: datetime) -> FireTime | None:
    """The first occurrence after ``after``, or None when there is none (an empty schedule)."""
    return next(fire_times(timing, after, limit=1), None)


def missed(
    timing: Timing, last: datetime | None, now: datetime, policy: Catchup, *, limit: int, per_second: float,
    run_from: datetime | None = None,
) -> list[FireTime]:
    """The occurrences after ``last`` (the nominal time of the newest occurrence made; None: the
    schedule has made none) that fell due before ``now`` while nothing made them, as the
    ``policy`` wants them run: none, the latest, or every one (at most ``limit``, the newest
    kept) spread from ``run_from`` (default ``now``) at ``per_second``. Their ``at`` is when
    each runs now."""
    if policy is Catchup.SKIP or last is None:
        return []
    # Only the newest few are kept while walking: an outage may have missed very many.
    due = list(deque(fire_times(timing, last, limit=10**9, until=now), maxlen=1 if policy is Catchup.LATEST else limit))
    if not due:
        return []
    tz = zone(timing.timezone)
    spread = timedelta(seconds=1 / per_second) if per_second > 0 else timedelta(0)
    start = run_from or now
    return [
        FireTime(f.nominal, start + i * spread, (start + i * spread).astimezone(tz),
                 f"missed at {f.at.isoformat(timespec='seconds')}: caught up ({policy.value})")
        for i, f in enumerate(due)
    ]
