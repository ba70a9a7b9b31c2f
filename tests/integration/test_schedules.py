"""Schedules over the real API and PostgreSQL: validation, occurrences made once by scanners
running at once, catch-up after an outage for each policy, pause/resume, update, preview,
figures, tenants and roles."""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from common.core import schedules, store
from common.core.models import Job, JobAttempt, Schedule
from common.core.states import JobStatus
from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.db import session_scope
from tests.helpers import wait_for
from tests.integration.test_api_jobs import assert_error, make_client
from tests.integration.test_auth import client_for, make_key, secure  # noqa: F401 - a fixture

UTC = timezone.utc


@pytest.fixture
def client(kafka_settings: Settings) -> Iterator[FlaskClient]:
    # With a broker: occurrences due within the current window are dispatched by the API.
    yield from make_client(kafka_settings)


def template(**changes: Any) -> dict[str, Any]:
    return {"name": "tick", "type": "noop", "payload": {"n": 1}, **changes}


def create(client: FlaskClient, **body: Any) -> dict[str, Any]:
    body.setdefault("job", template())
    response = client.post("/api/schedules", json=body)
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.headers["Location"].endswith(response.get_json()["id"])
    return response.get_json()


def occurrences(settings: Settings, schedule_id: str) -> list[Job]:
    with session_scope(settings) as session:
        rows = list(session.scalars(select(Job).where(Job.schedule_id == uuid.UUID(schedule_id))
                                    .order_by(Job.scheduled_for)))
        session.expunge_all()
    return rows


def make_due(settings: Settings, now: datetime, horizon: datetime) -> schedules.Made:
    with session_scope(settings) as session:
        return schedules.make_due(session, now=now, horizon=horizon)


def test_a_schedule_is_created_with_its_first_occurrences_and_shown(client: FlaskClient, settings: Settings) -> None:
    before = utcnow()
    body = create(client, name="every-second", cron="* * * * * *", timezone="Europe/Berlin")
    after = utcnow()  # the request may take a while on a busy machine: bound by both ends
    assert body["cron"] == "* * * * * *" and body["timezone"] == "Europe/Berlin" and not body["paused"]
    assert body["dst_policy"] == {"gap": "shift", "fold": "once"} and body["catchup_policy"] == "skip"
    assert body["job"]["type"] == "noop" and body["job"]["payload"] == {"n": 1}
    next_fire = datetime.fromisoformat(body["next_fire_at"])
    assert next_fire.microsecond == 0 and before - timedelta(seconds=1) < next_fire <= after + timedelta(seconds=1)
    made = occurrences(settings, body["id"])
    # Made at once up to the scanner's horizon, the end of the next window: one to two windows.
    window = int(settings.scan_interval_seconds)
    assert window <= len(made) <= 2 * window + 1
    # All are due before the horizon the scanner may have scanned already: the API dispatched them.
    assert all(job.name == "tick" and job.type == "noop" and job.status == "QUEUED" for job in made)
    assert [job.scheduled_for for job in made] == [job.execute_at for job in made]
    listed = client.get("/api/schedules").get_json()["items"]
    assert [item["id"] for item in listed] == [body["id"]]
    one = client.get(f"/api/schedules/{body['id']}").get_json()
    assert one["on_time"] == {"occurrences": 0, "by_status": {},
                              "lateness_ms": {"p50": None, "p99": None, "max": None, "measured": 0}}
    jobs = client.get(f"/api/jobs?schedule_id={body['id']}").get_json()["items"]
    assert sorted(job["id"] for job in jobs) == sorted(str(job.id) for job in made)
    assert all(job["schedule_id"] == body["id"] and job["scheduled_for"] for job in jobs)


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"cron": "61 * * * *"}, "cron", "not a valid cron"),
    ({"cron": "* * * *"}, "cron", "has 4 fields"),
    ({"cron": "0 0 30 2 *"}, "cron", "without any fire time"),
    ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "timezone", "not an IANA time zone"),
    ({"cron": "* * * * *", "timezone": ""}, "timezone", "not an IANA time zone"),
    ({"interval_seconds": 0.5}, "interval_seconds", "greater than or equal to 1"),
    ({"cron": "* * * * *", "interval_seconds": 5}, "cron", "exactly one"),
    ({}, "cron", "exactly one"),
    ({"interval_seconds": 60, "start_at": "2030-01-01T00:00:00Z", "end_at": "2029-01-01T00:00:00Z"}, "end_at", "after"),
    ({"cron": "0 0 1 1 *", "end_at": "2000-01-01T00:00:00Z"}, "end_at", "without any fire time"),
    ({"interval_seconds": 60, "dst_policy": {"gap": "later"}}, "dst_policy", "Must be one of"),
    ({"interval_seconds": 60, "overlap_policy": "never"}, "overlap_policy", "Must be one of"),
    ({"interval_seconds": 60, "job": {"name": "x", "type": "nope"}}, "job", "unknown job type"),
    ({"interval_seconds": 60, "job": {"name": "x", "type": "noop", "execute_at": "2030-01-01T00:00:00Z"}}, "job",
     "Unknown field"),
])
def test_invalid_definitions_are_422_naming_the_field(client: FlaskClient, settings: Settings, body: dict[str, Any],
                                                      field: str, words: str) -> None:
    body.setdefault("job", template())
    error = assert_error(client.post("/api/schedules", json=body), 422)
    assert words in str(error["errors"]["json"][field])
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(Schedule)) == 0


def test_two_scanners_at_once_make_each_occurrence_once(client: FlaskClient, settings: Settings) -> None:
    ids = [create(client, interval_seconds=1, name=f"s{i}")["id"] for i in range(5)]
    made_by_the_api = sum(len(occurrences(settings, i)) for i in ids)
    now = utcnow()
    horizon = now + timedelta(minutes=10)
    barrier = threading.Barrier(4)
    results: list[schedules.Made] = []

    def scanner() -> None:
        barrier.wait()
        for _ in range(3):
            results.append(make_due(settings, now, horizon))

    threads = [threading.Thread(target=scanner) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for schedule_id in ids:
        made = occurrences(settings, schedule_id)
        fire_times = [job.scheduled_for for job in made]
        assert len(fire_times) == len(set(fire_times)), "an occurrence was made twice"
        # Every second up to the horizon, none missing (an interval counts from 2000-01-01).
        assert fire_times[-1] >= horizon - timedelta(seconds=1)
        assert all(b - a == timedelta(seconds=1) for a, b in zip(fire_times, fire_times[1:]))
    # Every insert was counted by exactly one scanner.
    assert sum(r.occurrences for r in results) == sum(len(occurrences(settings, i)) for i in ids) - made_by_the_api
    with session_scope(settings) as session:
        # Even written straight to the table, the database refuses a second (schedule, time).
        job = session.scalar(select(Job).where(Job.schedule_id == uuid.UUID(ids[0])).limit(1))
        again = dict(id=uuid.uuid4(), name="dup", type="noop", payload={}, meta={}, execute_at=job.execute_at,
                     priority=0, max_retries=0, timeout_seconds=5.0, misfire_grace_seconds=None,
                     idempotency_key=None, request_hash=None, schedule_id=job.schedule_id,
                     scheduled_for=job.scheduled_for)
        assert store.add_occurrences(session, [again], now=utcnow()) == []


def _outage(settings: Settings, schedule_id: str, down_for: timedelta) -> datetime:
    """Pretend chronoq was down: the schedule's occurrences were last made ``down_for`` ago,
    and none of the times since exist. Returns the new ``now``."""
    now = utcnow()
    with session_scope(settings) as session:
        session.execute(update(Schedule).where(Schedule.id == uuid.UUID(schedule_id))
                        .values(made_until=now - down_for, next_fire_at=now - down_for))
        session.execute(Job.__table__.delete().where(Job.schedule_id == uuid.UUID(schedule_id)))
    return now


@pytest.mark.parametrize(("policy", "expected"), [("skip", 0), ("latest", 1), ("all", 5)])
def test_catch_up_after_an_outage_follows_the_policy_and_never_replays(
        client: FlaskClient, settings: Settings, policy: str, expected: int) -> None:
    body = create(client, interval_seconds=60, catchup_policy=policy, catchup_limit=5, catchup_per_second=2)
    now = _outage(settings, body["id"], timedelta(minutes=30))
    horizon = now + timedelta(seconds=1)
    made = make_due(settings, now, horizon)
    assert made.caught_up == expected
    caught = [job for job in occurrences(settings, body["id"]) if job.scheduled_for < now - timedelta(seconds=1)]
    assert len(caught) == expected
    if caught:
        # The newest missed ones, run from now, 2 per second at most.
        assert caught[-1].scheduled_for > now - timedelta(seconds=61)
        starts = sorted(job.execute_at for job in caught)
        assert starts[0] >= now - timedelta(milliseconds=1)
        assert all(b - a >= timedelta(milliseconds=499) for a, b in zip(starts, starts[1:]))
        assert all(job.scheduled_for != job.execute_at for job in caught)
    # A restart (another pass, with the scanner's usual horizon) replays nothing.
    again = make_due(settings, now + timedelta(milliseconds=500), now + timedelta(seconds=120))
    assert again.caught_up == 0 and again.occurrences in (1, 2, 3)
    assert len([j for j in occurrences(settings, body["id"]) if j.scheduled_for < now - timedelta(seconds=1)]) == expected


def test_pause_takes_back_what_was_made_and_resume_does_not_burst(client: FlaskClient, settings: Settings) -> None:
    body = create(client, interval_seconds=1)
    made = occurrences(settings, body["id"])
    assert len(made) >= 2
    with session_scope(settings) as session:  # the dispatch of the first, as an executor holds it
        message = store._dispatch_message(session.get(Job, made[0].id), made[0].execute_at)
    paused = client.post(f"/api/schedules/{body['id']}/pause").get_json()
    assert paused["paused"] and paused["next_fire_at"] is None and paused["paused_at"]
    # Taken back: none was started, so they are gone, and their dispatches can no longer start.
    assert occurrences(settings, body["id"]) == []
    with session_scope(settings) as session:
        assert not store.claim_start(session, message, executor="x", now=made[0].execute_at, lease=30)
    # Paused: a scanner makes nothing.
    assert make_due(settings, utcnow(), utcnow() + timedelta(minutes=5)).occurrences == 0
    assert occurrences(settings, body["id"]) == []
    # Thirty seconds later (as if): resumed with catch-up 'skip', nothing missed is made.
    with session_scope(settings) as session:
        session.execute(update(Schedule).where(Schedule.id == uuid.UUID(body["id"]))
                        .values(made_until=utcnow() - timedelta(seconds=30)))
    before_resume = utcnow()
    resumed = client.post(f"/api/schedules/{body['id']}/resume").get_json()
    assert not resumed["paused"] and resumed["next_fire_at"]
    after = occurrences(settings, body["id"])
    # Not even the fire time of a moment ago: every one that passed while paused was missed.
    assert after and all(job.scheduled_for > before_resume for job in after)


def test_update_withdraws_or_keeps_what_was_made(client: FlaskClient, settings: Settings) -> None:
    body = create(client, interval_seconds=1)
    before = {job.id for job in occurrences(settings, body["id"])}
    assert before
    changed = client.patch(f"/api/schedules/{body['id']}", json={"interval_seconds": 2, "job": template(name="tock")})
    assert changed.status_code == 200, changed.get_data(as_text=True)
    assert changed.get_json()["interval_seconds"] == 2 and changed.get_json()["job"]["name"] == "tock"
    now_made = occurrences(settings, body["id"])
    assert now_made and before.isdisjoint({job.id for job in now_made})
    assert all(job.name == "tock" and job.scheduled_for.second % 2 == 0 for job in now_made)
    kept = client.patch(f"/api/schedules/{body['id']}", json={"cron": "*/15 * * * * *", "pending": "keep"})
    assert kept.get_json()["cron"] == "*/15 * * * * *" and kept.get_json()["interval_seconds"] is None
    assert {job.id for job in now_made} <= {job.id for job in occurrences(settings, body["id"])}
    bad = assert_error(client.patch(f"/api/schedules/{body['id']}", json={"timezone": "Nowhere/Land"}), 422)
    assert "timezone" in bad["errors"]["json"]
    bad = assert_error(client.patch(f"/api/schedules/{body['id']}", json={"job": {"payload": {}}}), 422)
    assert "type" in str(bad["errors"]["json"]["job"])


def test_delete_takes_back_unstarted_occurrences(client: FlaskClient, settings: Settings) -> None:
    body = create(client, interval_seconds=1)
    assert occurrences(settings, body["id"])
    assert client.delete(f"/api/schedules/{body['id']}").status_code == 204
    assert occurrences(settings, body["id"]) == []
    assert_error(client.get(f"/api/schedules/{body['id']}"), 404)


def test_preview_marks_dst_and_jitter(client: FlaskClient) -> None:
    definition = {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "start_at": "2027-03-27T00:00:00+01:00",
                  "job": template()}
    items = client.post("/api/schedules/preview?count=3", json=definition).get_json()["items"]
    assert [item["local"][:25] for item in items] == [
        "2027-03-27T02:30:00.000+0", "2027-03-28T03:00:00.000+0", "2027-03-29T02:30:00.000+0"]
    assert items[1]["at"] == "2027-03-28T01:00:00.000+00:00" and "does not exist" in items[1]["note"]
    assert items[0]["note"] is None
    skipping = client.post("/api/schedules/preview?count=2", json={
        **definition, "dst_policy": {"gap": "skip"}}).get_json()["items"]
    assert [item["at"][:10] for item in skipping] == ["2027-03-27", "2027-03-29"]
    assert "skipped" in skipping[1]["note"]
    autumn = client.post("/api/schedules/preview?count=3", json={
        **definition, "start_at": "2027-10-30T00:00:00+02:00", "dst_policy": {"fold": "twice"}}).get_json()["items"]
    assert [item["at"] for item in autumn] == [
        "2027-10-30T00:30:00.000+00:00", "2027-10-31T00:30:00.000+00:00", "2027-10-31T01:30:00.000+00:00"]
    created = create(client, interval_seconds=60, jitter_seconds=30)
    jittered = client.get(f"/api/schedules/{created['id']}/preview?count=2").get_json()["items"]
    assert all("jitter +" in item["note"] for item in jittered)
    offsets = {datetime.fromisoformat(item["at"]).timestamp() % 60 for item in jittered}
    assert len(offsets) == 1 and 0 <= offsets.pop() < 30
    assert_error(client.get(f"/api/schedules/{created['id']}/preview?count=0"), 422)


def test_figures_count_outcomes_and_lateness(client: FlaskClient, settings: Settings) -> None:
    body = create(client, interval_seconds=3600)
    sid = uuid.UUID(body["id"])
    base = utcnow() - timedelta(hours=10)
    with session_scope(settings) as session:
        for i, (status, late_ms) in enumerate([("SUCCESS", 2), ("SUCCESS", 4), ("FAILED", 8), ("SKIPPED", None)]):
            at = base + timedelta(hours=i)
            job_id = uuid.uuid4()
            session.add(Job(id=job_id, name="t", type="noop", payload={}, meta={}, status=status, execute_at=at,
                            timeout_seconds=5, schedule_id=sid, scheduled_for=at, finished_at=at + timedelta(seconds=1)))
            session.flush()
            if late_ms is not None:
                session.add(JobAttempt(job_id=job_id, attempt=1, dispatch_token=1, status=status,
                                       started_at=at + timedelta(milliseconds=late_ms)))
    figures = client.get(f"/api/schedules/{body['id']}").get_json()["on_time"]
    assert figures["occurrences"] == 4
    assert figures["by_status"] == {"SUCCESS": 2, "FAILED": 1, "SKIPPED": 1}
    assert figures["lateness_ms"] == {"p50": 4.0, "p99": 8.0, "max": 8.0, "measured": 3}
    last = client.get(f"/api/schedules/{body['id']}").get_json()["last_occurrence"]
    assert last["status"] == "SKIPPED"


def test_schedules_belong_to_their_tenant_and_obey_roles(secure: Settings) -> None:
    clients = client_for(secure)
    client = next(clients)
    try:
        acme = make_key(secure, "acme", "writer")
        other = make_key(secure, "globex", "writer")
        viewer = make_key(secure, "acme", "viewer")
        body = {"interval_seconds": 1, "job": template()}
        assert client.post("/api/schedules", json=body).status_code == 401
        assert client.post("/api/schedules", json=body, headers=viewer).status_code == 403
        made = client.post("/api/schedules", json=body, headers=acme)
        assert made.status_code == 201 and made.get_json()["tenant"] == "acme"
        sid = made.get_json()["id"]
        for method, path in [("get", ""), ("post", "/pause"), ("post", "/resume"), ("get", "/preview"),
                             ("delete", ""), ("patch", "")]:
            kwargs = {"json": {"interval_seconds": 5}} if method == "patch" else {}
            assert getattr(client, method)(f"/api/schedules/{sid}{path}", headers=other, **kwargs).status_code == 404
        assert client.get("/api/schedules", headers=other).get_json()["items"] == []
        assert client.get(f"/api/schedules/{sid}", headers=viewer).status_code == 200
        assert client.post(f"/api/schedules/{sid}/pause", headers=viewer).status_code == 403
        with session_scope(secure) as session:
            tenants = set(session.scalars(select(Job.tenant).where(Job.schedule_id == uuid.UUID(sid))))
        assert tenants == {"acme"}
    finally:
        next(clients, None)


def test_jobs_list_by_schedule_and_metadata(client: FlaskClient, settings: Settings) -> None:
    from tests.integration.test_api_jobs import job_body

    for team, region in [("payments", "eu"), ("payments", "us"), ("search", "eu")]:
        assert client.post("/api/jobs", json=job_body(metadata={"team": team, "region": region, "n": 1})).status_code == 201

    def names(query: str) -> list[tuple[str, str]]:
        response = client.get(f"/api/jobs?{query}")
        assert response.status_code == 200, response.get_data(as_text=True)
        return sorted((j["metadata"]["team"], j["metadata"]["region"]) for j in response.get_json()["items"])

    assert names("metadata=team=payments") == [("payments", "eu"), ("payments", "us")]
    assert names("metadata=team=payments&metadata=region=eu") == [("payments", "eu")]
    assert names("metadata=n=1") == [("payments", "eu"), ("payments", "us"), ("search", "eu")]
    assert names("metadata=team=nobody") == []
    assert_error(client.get("/api/jobs?metadata=team"), 422)
    body = create(client, interval_seconds=1)
    listed = client.get(f"/api/jobs?schedule_id={body['id']}&limit=500").get_json()["items"]
    assert listed and {job["schedule_id"] for job in listed} == {body["id"]}
    assert len(listed) == len(occurrences(settings, body["id"]))
    assert client.get(f"/api/jobs?schedule_id={uuid.uuid4()}").get_json()["items"] == []


def _occurrence_now(settings: Settings, schedule_id: str, at: datetime, overlap: str) -> store.DispatchMessage:
    """An occurrence of the schedule due at ``at``, dispatched (as the scanner would)."""
    job = dict(id=uuid.uuid4(), name="o", type="noop", payload={}, meta={}, execute_at=at, priority=0, max_retries=0,
               timeout_seconds=5.0, misfire_grace_seconds=None, idempotency_key=None, request_hash=None,
               schedule_id=uuid.UUID(schedule_id), scheduled_for=at, overlap=None if overlap == "allow" else overlap)
    with session_scope(settings) as session:
        store.add_occurrences(session, [job], now=utcnow())
        (message,) = store.claim_ids(session, [job["id"]], now=utcnow(), lease=30).messages
    return message


@pytest.mark.parametrize("overlap", ["skip", "queue_one", "allow"])
def test_overlap_policy_at_the_start_claim(client: FlaskClient, settings: Settings, overlap: str) -> None:
    body = create(client, cron="0 0 1 1 *", overlap_policy=overlap)  # makes nothing by itself soon
    now = utcnow()
    first, second, third = (_occurrence_now(settings, body["id"], now + timedelta(milliseconds=i), overlap)
                            for i in range(3))

    def start(message: store.DispatchMessage) -> bool:
        with session_scope(settings) as session:
            return store.claim_start(session, message, executor="x", now=utcnow(), lease=30)

    def status(message: store.DispatchMessage) -> str:
        with session_scope(settings) as session:
            return session.get(Job, message.job_id).status

    assert start(first)  # RUNNING, slowly
    if overlap == "allow":
        assert start(second) and start(third)
        return
    assert not start(second)
    assert not start(third)
    if overlap == "skip":
        assert (status(second), status(third)) == ("SKIPPED", "SKIPPED")
        with session_scope(settings) as session:
            assert "still running" in session.get(Job, second.job_id).error
        return
    # queue_one: the second waits (SCHEDULED, overdue, for the scanner), the third is skipped.
    assert (status(second), status(third)) == ("SCHEDULED", "SKIPPED")
    with session_scope(settings) as session:  # the scanner dispatches it again while the first runs
        (again,) = store.claim_ids(session, [second.job_id], now=utcnow(), lease=30).messages
    assert not start(again) and status(again) == "SCHEDULED"
    with session_scope(settings) as session:  # the first ends
        session.execute(update(Job).where(Job.id == first.job_id).values(status="SUCCESS", finished_at=utcnow()))
        (again,) = store.claim_ids(session, [second.job_id], now=utcnow(), lease=30).messages
    assert start(again) and status(again) == "RUNNING"


def test_schedules_work_on_both_databases(database: Settings) -> None:
    """The local run uses SQLite: making occurrences (ON CONFLICT DO NOTHING), the API's
    direct dispatch of the first ones, and the overlap rule of the start claim work there too."""
    # No broker: the API's direct dispatch fails at once and leaves the occurrences SCHEDULED.
    database = replace(database, auth_enabled=False, scan_interval_seconds=2.0, kafka_bootstrap="127.0.0.1:1")
    clients = make_client(database)
    client = next(clients)
    try:
        body = create(client, interval_seconds=1, overlap_policy="skip")
        made = occurrences(database, body["id"])
        assert made and all(job.overlap == "skip" for job in made)
        now = utcnow()
        again = make_due(database, now, now + timedelta(seconds=30))
        with session_scope(database) as session:
            jobs = session.execute(select(Job.scheduled_for).where(Job.schedule_id == uuid.UUID(body["id"]))).all()
        assert len(jobs) == len({row.scheduled_for for row in jobs}) == len(made) + again.occurrences
        first, second = (_occurrence_now(database, body["id"], now + timedelta(hours=1, milliseconds=i), "skip")
                         for i in range(2))
        with session_scope(database) as session:
            assert store.claim_start(session, first, executor="x", now=first.execute_at, lease=30)
            assert not store.claim_start(session, second, executor="x", now=second.execute_at, lease=30)
            assert session.get(Job, second.job_id).status == "SKIPPED"
        assert client.post(f"/api/schedules/{body['id']}/pause").get_json()["paused"]
    finally:
        next(clients, None)


def test_the_last_occurrence_is_the_latest_that_fell_due(client: FlaskClient, settings: Settings) -> None:
    body = create(client, interval_seconds=1)
    made = occurrences(settings, body["id"])
    assert len(made) >= 2  # made ahead, up to the horizon (one to two 2 s windows)
    wait_for(lambda: utcnow() > made[1].execute_at, timeout=10, what="two occurrences to fall due")
    before = utcnow()
    last = client.get(f"/api/schedules/{body['id']}").get_json()["last_occurrence"]
    after = utcnow()
    # Not one of those made ahead: the newest whose time has come.
    assert made[1].execute_at <= datetime.fromisoformat(last["execute_at"]) <= after
    assert all(job.execute_at > after or job.execute_at <= datetime.fromisoformat(last["execute_at"])
               or job.execute_at > before for job in made)
    listed = client.get("/api/schedules").get_json()["items"][0]["last_occurrence"]
    assert datetime.fromisoformat(listed["execute_at"]) <= utcnow()
