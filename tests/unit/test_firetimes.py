"""Fire-time arithmetic of schedules: cron and intervals, zones, both daylight-saving changes
under each policy, jitter and catch-up (common/core/firetimes.py; pure, no clock)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from common.core.firetimes import (
    Catchup,
    DstFold,
    DstGap,
    Timing,
    check_cron,
    fire_times,
    jitter,
    missed,
    next_fire,
    zone,
)

UTC = timezone.utc


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def local_times(timing: Timing, after: str, count: int) -> list[str]:
    return [f.local.isoformat() for f in fire_times(timing, at(after), limit=count)]


# --- daylight saving: 02:30 daily across both changes, in two zones ---------------------------

# (zone, spring change day, autumn change day) in 2026. Both skip 02:00-03:00 in spring; in
# autumn Berlin repeats 02:00-03:00 and New York 01:00-02:00.
ZONES = [("Europe/Berlin", "2026-03-29", "2026-10-25"), ("America/New_York", "2026-03-08", "2026-11-01")]
FOLDS = [("Europe/Berlin", "2026-10-25", 2), ("America/New_York", "2026-11-01", 1)]


@pytest.mark.parametrize("tz, spring, _autumn", ZONES)
def test_a_time_in_the_spring_gap_runs_when_the_gap_ends_by_default(tz: str, spring: str, _autumn: str) -> None:
    day = datetime.fromisoformat(spring)
    before = (day - timedelta(days=1)).strftime("%Y-%m-%d")
    after = (day + timedelta(days=1)).strftime("%Y-%m-%d")
    fires = list(fire_times(Timing(cron="30 2 * * *", timezone=tz), at(f"{before}T00:00:00+00:00"), limit=3))
    assert [f.local.strftime("%Y-%m-%d %H:%M") for f in fires] == [f"{before} 02:30", f"{spring} 03:00", f"{after} 02:30"]
    assert fires[1].note is not None and "does not exist" in fires[1].note and fires[0].note is None
    # 03:00 local is the very instant the clocks jumped.
    assert fires[1].local.utcoffset() != fires[0].local.utcoffset()


@pytest.mark.parametrize("tz, spring, _autumn", ZONES)
def test_a_time_in_the_spring_gap_can_be_skipped(tz: str, spring: str, _autumn: str) -> None:
    day = datetime.fromisoformat(spring)
    before = (day - timedelta(days=1)).strftime("%Y-%m-%d")
    timing = Timing(cron="30 2 * * *", timezone=tz, dst_gap=DstGap.SKIP)
    fires = list(fire_times(timing, at(f"{before}T00:00:00+00:00"), limit=2))
    days = [f.local.strftime("%Y-%m-%d") for f in fires]
    assert spring not in days and len(days) == 2
    # The skip is told with the next fire time (a preview shows it).
    assert fires[0].note is None
    assert fires[1].note == f"{spring} 02:30:00 does not exist in {tz} (DST): skipped"


@pytest.mark.parametrize("tz, autumn, hour", FOLDS)
def test_a_time_in_the_autumn_fold_runs_once_by_default(tz: str, autumn: str, hour: int) -> None:
    fires = list(fire_times(Timing(cron=f"30 {hour} * * *", timezone=tz),
                            at(f"{autumn}T00:00:00-12:00") - timedelta(days=1), limit=3))
    on_the_day = [f for f in fires if f.local.strftime("%Y-%m-%d") == autumn]
    assert len(on_the_day) == 1 and on_the_day[0].local.fold == 0
    assert "happens twice" in (on_the_day[0].note or "")


@pytest.mark.parametrize("tz, autumn, hour", FOLDS)
def test_a_time_in_the_autumn_fold_can_run_twice_an_hour_apart(tz: str, autumn: str, hour: int) -> None:
    timing = Timing(cron=f"30 {hour} * * *", timezone=tz, dst_fold=DstFold.TWICE)
    fires = list(fire_times(timing, at(f"{autumn}T00:00:00-12:00") - timedelta(days=1), limit=4))
    on_the_day = [f for f in fires if f.local.strftime("%Y-%m-%d") == autumn]
    assert [f.local.strftime("%H:%M") for f in on_the_day] == [f"0{hour}:30", f"0{hour}:30"]
    assert on_the_day[1].at - on_the_day[0].at == timedelta(hours=1)


def test_0230_in_new_york_in_autumn_is_an_ordinary_time() -> None:
    fires = list(fire_times(Timing(cron="30 2 * * *", timezone="America/New_York", dst_fold=DstFold.TWICE),
                            at("2026-10-31T12:00:00+00:00"), limit=2))
    assert [(f.local.strftime("%m-%d %H:%M"), f.note) for f in fires] == [("11-01 02:30", None), ("11-02 02:30", None)]


def test_every_quarter_hour_through_the_gap_runs_once_at_its_end_and_identities_stay_unique() -> None:
    timing = Timing(cron="*/15 * * * *", timezone="Europe/Berlin")
    fires = list(fire_times(timing, at("2026-03-29T01:40:00+01:00"), limit=4))
    # 01:45, then 02:00-02:45 do not exist: one run at 03:00, then 03:15.
    assert [f.local.strftime("%H:%M") for f in fires] == ["01:45", "03:00", "03:15", "03:30"]
    assert len({f.nominal for f in fires}) == len(fires)


def test_an_hourly_schedule_through_the_fold() -> None:
    once = Timing(cron="0 * * * *", timezone="America/New_York")
    twice = Timing(cron="0 * * * *", timezone="America/New_York", dst_fold=DstFold.TWICE)
    start = at("2026-11-01T00:30:00-04:00")
    assert [f.at.hour for f in fire_times(once, start, limit=3)] == [5, 7, 8]    # 01:00 EDT, 02:00 EST, 03:00
    assert [f.at.hour for f in fire_times(twice, start, limit=4)] == [5, 6, 7, 8]  # 01:00 EDT and 01:00 EST


@pytest.mark.parametrize("fold", list(DstFold))
@pytest.mark.parametrize("gap", list(DstGap))
@pytest.mark.parametrize("tz, spring, autumn", ZONES + [("Australia/Lord_Howe", "2026-10-04", "2026-04-05")])
@pytest.mark.parametrize("cron", ["*/7 * * * *", "30 2 * * *", "15 1 * * *", "10 */4 * * * *"])
def test_asking_from_any_instant_near_a_change_gives_the_rest_of_one_walk(
        cron: str, tz: str, spring: str, autumn: str, gap: DstGap, fold: DstFold) -> None:
    """Where a walk starts depends on the offset just before ``after`` (a fold or a shifted gap
    time may lie before it in local time): from every instant around both changes, the next
    fire times are those of one walk begun a day earlier."""
    timing = Timing(cron=cron, timezone=tz, dst_gap=gap, dst_fold=fold)
    for day in (spring, autumn):
        start = datetime.fromisoformat(day).replace(tzinfo=zone(tz)).astimezone(UTC) - timedelta(hours=12)
        until = start + timedelta(hours=32)
        walk = [f.at for f in fire_times(timing, start, limit=20_000, until=until)]
        assert all(a < b for a, b in zip(walk, walk[1:])), "fire times out of order"
        for minutes in range(0, 24 * 60, 11):  # UTC steps: both passes of a fold are asked from
            after = start + timedelta(hours=6, minutes=minutes, seconds=minutes % 5)
            expected = [t for t in walk if t > after][:3]
            assert [f.at for f in fire_times(timing, after, limit=3, until=until)] == expected, (day, after)


# --- cron and intervals ----------------------------------------------------------------------


def test_six_fields_put_seconds_first_as_in_quartz() -> None:
    timing = Timing(cron="*/20 0 9 * * *", timezone="UTC")
    assert local_times(timing, "2026-01-01T08:00:00+00:00", 3) == [
        "2026-01-01T09:00:00+00:00", "2026-01-01T09:00:20+00:00", "2026-01-01T09:00:40+00:00"]


def test_intervals_are_absolute_from_start_at_and_ignore_dst() -> None:
    timing = Timing(interval_seconds=3600, timezone="Europe/Berlin", start_at=at("2026-03-29T00:00:00+00:00"))
    fires = list(fire_times(timing, at("2026-03-28T00:00:00+00:00"), limit=3))
    assert [f.at for f in fires] == [at("2026-03-29T00:00:00+00:00"), at("2026-03-29T01:00:00+00:00"),
                                    at("2026-03-29T02:00:00+00:00")]
    assert [f.local.strftime("%H:%M") for f in fires] == ["01:00", "03:00", "04:00"]  # the gap passes between
    later = list(fire_times(timing, at("2026-03-29T01:30:00+00:00"), limit=1))
    assert later[0].at == at("2026-03-29T02:00:00+00:00")


def test_start_and_end_bound_the_fire_times() -> None:
    timing = Timing(cron="0 12 * * *", start_at=at("2026-05-02T12:00:00+00:00"), end_at=at("2026-05-04T12:00:00+00:00"))
    fires = [f.at.day for f in fire_times(timing, at("2026-05-01T00:00:00+00:00"), limit=10)]
    assert fires == [2, 3]  # start inclusive, end exclusive


def test_an_empty_schedule_has_no_next_fire_time() -> None:
    assert next_fire(Timing(cron="0 0 30 2 *"), at("2026-01-01T00:00:00+00:00")) is None  # 30 February
    ended = Timing(cron="* * * * *", end_at=at("2026-01-01T00:00:00+00:00"))
    assert next_fire(ended, at("2026-06-01T00:00:00+00:00")) is None
    assert next_fire(Timing(cron="0 0 29 2 *"), at("2026-03-01T00:00:00+00:00")).at == at("2028-02-29T00:00:00+00:00")


@pytest.mark.parametrize("expression, words", [
    ("* * * *", "4 fields"), ("* * * * * * *", "7 fields"), ("61 * * * *", "not a valid"), ("* * * * foo", "not a valid"),
])
def test_invalid_cron_expressions_say_why(expression: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_cron(expression)


def test_valid_cron_is_normalised() -> None:
    assert check_cron("  0   9 * *   MON-FRI ") == "0 9 * * MON-FRI"


def test_unknown_zones_and_bad_definitions_are_refused() -> None:
    with pytest.raises(ValueError, match="IANA"):
        zone("Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="exactly one"):
        Timing(cron="* * * * *", interval_seconds=5)
    with pytest.raises(ValueError, match="at least 1"):
        Timing(interval_seconds=0.5)


# --- jitter ------------------------------------------------------------------------------------


def test_jitter_is_deterministic_bounded_and_per_schedule() -> None:
    offsets = {jitter(Timing(cron="0 * * * *", jitter_seconds=30, seed=f"s{i}")) for i in range(50)}
    assert all(timedelta(0) <= o < timedelta(seconds=30) for o in offsets)
    assert len(offsets) > 40  # spread, not one value
    same = Timing(cron="0 * * * *", jitter_seconds=30, seed="nightly")
    assert jitter(same) == jitter(Timing(cron="0 * * * *", jitter_seconds=30, seed="nightly"))
    (fire,) = fire_times(same, at("2026-01-01T00:30:00+00:00"), limit=1)
    assert fire.nominal == at("2026-01-01T01:00:00+00:00") and fire.at == fire.nominal + jitter(same)
    assert "jitter" in (fire.note or "")


# --- catch-up ----------------------------------------------------------------------------------


def test_catchup_policies_after_an_outage() -> None:
    timing = Timing(cron="0 * * * *")
    last = at("2026-01-01T00:00:00+00:00")  # the last occurrence made before the outage
    now = at("2026-01-01T05:30:00+00:00")   # 01:00 … 05:00 were missed
    assert missed(timing, last, now, Catchup.SKIP, limit=10, per_second=1) == []
    (latest,) = missed(timing, last, now, Catchup.LATEST, limit=10, per_second=1)
    assert latest.nominal == at("2026-01-01T05:00:00+00:00") and latest.at == now
    every = missed(timing, last, now, Catchup.ALL, limit=3, per_second=2)
    assert [f.nominal.hour for f in every] == [3, 4, 5]  # the newest three
    assert [f.at - now for f in every] == [timedelta(0), timedelta(seconds=0.5), timedelta(seconds=1)]
    assert all("caught up" in (f.note or "") for f in every)
    # A schedule that never made an occurrence has nothing to catch up, and one that is
    # up to date neither.
    assert missed(timing, None, now, Catchup.ALL, limit=10, per_second=1) == []
    assert missed(timing, at("2026-01-01T05:00:00+00:00"), now, Catchup.ALL, limit=10, per_second=1) == []


def test_catching_up_a_long_outage_of_a_busy_schedule_keeps_only_what_runs() -> None:
    timing = Timing(interval_seconds=1)
    now = at("2026-01-02T00:00:00+00:00")
    every = missed(timing, at("2026-01-01T00:00:00+00:00"), now, Catchup.ALL, limit=5, per_second=10)
    assert len(every) == 5 and every[-1].nominal == now - timedelta(seconds=1)
