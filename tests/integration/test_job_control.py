"""Job control through the real API on the real PostgreSQL and broker, with authentication on:
trigger, rerun, PATCH and the bulk rerun (redrive) — each one's success and each refusal, the
fencing of a dispatch already on its way, and the history a rerun keeps (README, "Job control")."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from common.core import apikeys, control, store
from common.core.messages import DispatchMessage, UpdateMessage, decode_dispatch
from common.core.models import Job, JobAttempt
from common.core.roles import Role
from common.core.secrets import Keyring, reveal
from common.infra.clock import ensure_aware, utcnow
from common.infra.config import Settings
from common.infra.db import session_scope
from tests.helpers import add_job, get_job, read_topic

FERNET_KEY = "u8b9hpbTL1JihVjvWHEbszczMa9kDUmYPwTg33nyFBo="
LEASE = 10.0
NOT_STARTED = ("SCHEDULED", "QUEUED")
UNFINISHED = ("SCHEDULED", "QUEUED", "RUNNING", "RETRYING")
FINISHED = ("SUCCESS", "FAILED", "CANCELLED", "SKIPPED")


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def secure(kafka_settings: Settings) -> Settings:
    """The test database and broker, authentication and secrets on, shell jobs enabled."""
    return replace(kafka_settings, auth_enabled=True, secret_key=FERNET_KEY, shell_enabled=True)


@pytest.fixture
def app(secure: Settings) -> Iterator[Flask]:
    application = create_app(secure)
    yield application
    application.extensions["chronoq"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def make_key(settings: Settings, tenant: str, role: str) -> dict[str, str]:
    with session_scope(settings) as session:
        made = apikeys.create_key(session, tenant=tenant, role=Role.parse(role), name=f"{tenant}-{role}",
                                  created_by="test", keyring=Keyring.from_settings(settings), now=utcnow())
    return {"Authorization": f"Bearer {made.key}"}


@pytest.fixture
def keys(secure: Settings) -> dict[str, dict[str, str]]:
    return {
        "writer": make_key(secure, "acme", "writer"),
        "viewer": make_key(secure, "acme", "viewer"),
        "other": make_key(secure, "globex", "writer"),
        "admin": make_key(secure, "ops", "admin"),
    }


def insert(settings: Settings, **fields: Any) -> uuid.UUID:
    """A job of tenant acme, due in an hour unless told otherwise."""
    return add_job(settings, due_in=3600, **{"name": "job", "tenant": "acme", "timeout_seconds": 30.0, **fields})


def finished(settings: Settings, status: str = "FAILED", attempts: int = 2, **fields: Any) -> uuid.UUID:
    """A finished job with one history row per attempt, as the result writer leaves it."""
    now = utcnow()
    job_id = insert(settings, status=status, attempts=attempts, dispatch_token=1, started_at=now,
                    finished_at=fields.pop("finished_at", now), execute_at=now - timedelta(minutes=1),
                    output={"last": attempts}, error="boom" if status == "FAILED" else None, **fields)
    with session_scope(settings) as session:
        for n in range(1, attempts + 1):
            session.add(JobAttempt(job_id=job_id, attempt=n, dispatch_token=1, status="FAILED", started_at=now,
                                   finished_at=now, error=f"boom {n}", executor="ex-1"))
    return job_id


def queued(settings: Settings, **fields: Any) -> tuple[uuid.UUID, DispatchMessage]:
    """A job the scanner dispatched: QUEUED, and the message an executor now holds."""
    job_id = insert(settings, **fields)
    with session_scope(settings) as session:
        (message,) = store.claim_ids(session, [job_id], now=utcnow(), lease=LEASE).messages
    return job_id, message


def start(settings: Settings, message: DispatchMessage) -> bool:
    """An executor's start claim for ``message`` (what every dispatch must pass to run)."""
    with session_scope(settings) as session:
        return store.claim_start(session, message, executor="ex-test", now=utcnow(), lease=LEASE)


def dispatches(settings: Settings, job_id: uuid.UUID | str, expect: int = 1) -> list[DispatchMessage]:
    """The dispatches of ``job_id`` the API published (waiting for ``expect`` of them)."""
    found: list[DispatchMessage] = []
    for record in read_topic(settings, settings.topic_jobs, expect=expect):
        message = decode_dispatch(record.value)
        if str(message.job_id) == str(job_id):
            found.append(message)
    return found


def assert_error(response: Any, code: int) -> dict[str, Any]:
    assert response.status_code == code, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == code and body["message"], body
    return body


def row(settings: Settings, job_id: uuid.UUID) -> Job:
    return get_job(settings, job_id)


def same(settings: Settings, job_id: uuid.UUID, before: Job) -> None:
    """The job is exactly as it was: a refusal changed nothing."""
    after = row(settings, job_id)
    columns = [c.key for c in sa.inspect(Job).mapper.column_attrs]
    assert {c: getattr(after, c) for c in columns} == {c: getattr(before, c) for c in columns}


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- trigger ------------------------------------------------------------------------------


def test_trigger_runs_a_scheduled_job_now(client: FlaskClient, secure: Settings, keys: dict) -> None:
    job_id = insert(secure)
    due = row(secure, job_id).execute_at
    before = utcnow()
    response = client.post(f"/api/jobs/{job_id}/trigger", headers=keys["writer"])
    assert response.status_code == 200, response.get_json()
    job = response.get_json()
    assert job["id"] == str(job_id) and job["status"] == "QUEUED"
    assert before <= at(job["execute_at"]) <= utcnow()
    assert at(job["original_execute_at"]) == ensure_aware(due)
    (message,) = dispatches(secure, job_id)
    assert message.execute_at == at(job["execute_at"]) and message.attempt == 1
    assert start(secure, message)
    # Triggered again (SCHEDULED again for this check): the first original time stays.
    with session_scope(secure) as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(status="SCHEDULED", attempts=0))
    again = client.post(f"/api/jobs/{job_id}/trigger", headers=keys["writer"]).get_json()
    assert again["original_execute_at"] == job["original_execute_at"]
    assert row(secure, job_id).original_execute_at == ensure_aware(due)


def test_trigger_fences_the_dispatch_of_a_queued_job(client: FlaskClient, secure: Settings, keys: dict) -> None:
    job_id, old = queued(secure)
    response = client.post(f"/api/jobs/{job_id}/trigger", headers=keys["writer"])
    assert response.status_code == 200 and response.get_json()["status"] == "QUEUED"
    (new,) = dispatches(secure, job_id)
    assert new.token > old.token and new.execute_at < old.execute_at
    # The dispatch an executor already held can no longer start; the new one can, once.
    assert not start(secure, old)
    assert start(secure, new)
    assert not start(secure, new)
    assert row(secure, job_id).attempts == 1


@pytest.mark.parametrize("status", ["RUNNING", "RETRYING", *FINISHED])
def test_trigger_refuses_other_statuses(client: FlaskClient, secure: Settings, keys: dict, status: str) -> None:
    job_id = insert(secure, status=status)
    before = row(secure, job_id)
    body = assert_error(client.post(f"/api/jobs/{job_id}/trigger", headers=keys["writer"]), 409)
    assert status in body["message"] and status in body["errors"]["status"][0]
    same(secure, job_id, before)


# --- rerun --------------------------------------------------------------------------------


def test_rerun_starts_a_new_run_numbered_on_and_keeps_the_history(
    client: FlaskClient, secure: Settings, keys: dict
) -> None:
    job_id = finished(secure, "FAILED", attempts=4, max_retries=3)
    old_token = row(secure, job_id).dispatch_token
    due = row(secure, job_id).execute_at
    response = client.post(f"/api/jobs/{job_id}/rerun", headers=keys["writer"])
    assert response.status_code == 200, response.get_json()
    job = response.get_json()
    assert (job["status"], job["runs"], job["attempts"]) == ("QUEUED", 2, 4)
    assert job["finished_at"] is None and job["output"] is None and job["error"] is None
    assert at(job["original_execute_at"]) == ensure_aware(due)
    assert row(secure, job_id).attempt_base == 4
    (message,) = dispatches(secure, job_id)
    assert message.attempt == 5 and message.token > old_token
    # The rerun's first attempt is attempt 5, next to the history of the first run.
    with session_scope(secure) as session:
        claimed = store.claim_starts(session, [message], executor="ex-test", now=utcnow(), lease=LEASE)
    ((key, claimed_row),) = claimed.items()
    assert key[2] == 5 and claimed_row.attempt_base == 4  # retries count from the rerun
    history = client.get(f"/api/jobs/{job_id}/attempts", headers=keys["viewer"]).get_json()["items"]
    assert [(a["attempt"], a["status"]) for a in history] == [(1, "FAILED"), (2, "FAILED"), (3, "FAILED"),
                                                              (4, "FAILED"), (5, "RUNNING")]


@pytest.mark.parametrize("status", ["SUCCESS", "CANCELLED", "SKIPPED"])
def test_rerun_takes_every_finished_status(client: FlaskClient, secure: Settings, keys: dict, status: str) -> None:
    job_id = finished(secure, status, attempts=1 if status == "SUCCESS" else 0)
    job = client.post(f"/api/jobs/{job_id}/rerun", headers=keys["writer"]).get_json()
    assert job["status"] == "QUEUED" and job["runs"] == 2


def test_a_rerun_is_not_moved_by_late_updates_of_the_earlier_run(
    client: FlaskClient, secure: Settings, keys: dict
) -> None:
    job_id = finished(secure, "FAILED", attempts=2)
    late = UpdateMessage(job_id=job_id, token=1, status="FAILED", attempt=2, at=utcnow(), executor="ex-1",
                         finished_at=utcnow(), error="late")
    assert client.post(f"/api/jobs/{job_id}/rerun", headers=keys["writer"]).status_code == 200
    with session_scope(secure) as session:
        assert store.apply_updates(session, [late], lease=LEASE) == 0
    assert row(secure, job_id).status == "QUEUED"


@pytest.mark.parametrize("status", UNFINISHED)
def test_rerun_refuses_unfinished_jobs(client: FlaskClient, secure: Settings, keys: dict, status: str) -> None:
    job_id = insert(secure, status=status)
    before = row(secure, job_id)
    body = assert_error(client.post(f"/api/jobs/{job_id}/rerun", headers=keys["writer"]), 409)
    assert status in body["message"]
    same(secure, job_id, before)


def test_rerun_counts_against_the_pending_quota(client: FlaskClient, secure: Settings, keys: dict) -> None:
    assert client.patch("/api/tenants/acme", json={"max_pending_jobs": 1}, headers=keys["admin"]).status_code == 200
    insert(secure)  # one unfinished job already
    job_id = finished(secure)
    before = row(secure, job_id)
    body = assert_error(client.post(f"/api/jobs/{job_id}/rerun", headers=keys["writer"]), 429)
    assert "unfinished jobs" in body["message"]
    same(secure, job_id, before)


# --- PATCH --------------------------------------------------------------------------------


def test_patch_changes_a_scheduled_job(client: FlaskClient, secure: Settings, keys: dict) -> None:
    job_id = insert(secure, type="noop", payload={"v": 1})
    due = row(secure, job_id).execute_at
    later = (utcnow() + timedelta(hours=2)).isoformat()
    response = client.patch(f"/api/jobs/{job_id}", headers=keys["writer"], json={
        "execute_at": later, "payload": {"v": 2}, "max_retries": 5, "timeout_seconds": 12.5, "priority": 9,
        "metadata": {"team": "ops"},
    })
    assert response.status_code == 200, response.get_json()
    job = response.get_json()
    assert at(job["execute_at"]) == at(later) and job["status"] == "SCHEDULED"  # the scanner's, later
    assert (job["payload"], job["max_retries"], job["timeout_seconds"], job["priority"], job["metadata"]) == (
        {"v": 2}, 5, 12.5, 9, {"team": "ops"})
    stored = row(secure, job_id)
    assert stored.original_execute_at == ensure_aware(due) and stored.name == "job"
    # Only what is named changes; delay_seconds is relative to now.
    job = client.patch(f"/api/jobs/{job_id}", headers=keys["writer"], json={"delay_seconds": 7200}).get_json()
    assert job["payload"] == {"v": 2} and job["priority"] == 9
    assert utcnow() + timedelta(seconds=7100) < at(job["execute_at"]) < utcnow() + timedelta(seconds=7300)
    assert row(secure, job_id).original_execute_at == ensure_aware(due)  # the first one


def test_patch_pulls_back_a_queued_job_and_fences_its_dispatch(
    client: FlaskClient, secure: Settings, keys: dict
) -> None:
    job_id, old = queued(secure, payload={"v": 1})
    # Moved an hour on: back to SCHEDULED for the scanner, and the old dispatch is dead.
    job = client.patch(f"/api/jobs/{job_id}", headers=keys["writer"],
                       json={"delay_seconds": 3600, "payload": {"v": 2}}).get_json()
    assert job["status"] == "SCHEDULED"
    assert row(secure, job_id).lease_until is None
    assert not start(secure, old)
    # Moved to due now: dispatched again at once, with the new payload; only that one starts.
    job = client.patch(f"/api/jobs/{job_id}", headers=keys["writer"], json={"delay_seconds": 0}).get_json()
    assert job["status"] == "QUEUED"
    (new,) = dispatches(secure, job_id)
    assert new.payload == {"v": 2} and new.token > old.token
    assert not start(secure, old)
    with session_scope(secure) as session:
        claimed = store.claim_starts(session, [new], executor="ex-test", now=utcnow(), lease=LEASE)
    assert [r.payload for r in claimed.values()] == [{"v": 2}]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"colour": "blue"}, "colour"),
        ({"name": "other"}, "name"),
        ({"type": "fail"}, "type"),
        ({"misfire_grace_seconds": 5}, "misfire_grace_seconds"),
        ({"execute_at": "2001-01-01T00:00:00Z"}, "execute_at"),  # past
        ({"execute_at": "2031-01-01T00:00:00"}, "execute_at"),  # no offset
        ({"execute_at": "2031-01-01T00:00:00Z", "delay_seconds": 5}, "delay_seconds"),
        ({"delay_seconds": -1}, "delay_seconds"),
        ({"max_retries": 11}, "max_retries"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"priority": 2**31}, "priority"),
        ({"payload": {"blob": "x" * 70_000}}, "payload"),
        ({"payload": {"url": "https://example.com", "method": "BREW"}}, "payload"),  # the http job's schema
        ({"payload": {"url": "http://169.254.169.254/"}}, "payload"),  # the network rules
        ({"payload": "text"}, "payload"),
        ({"metadata": {"blob": "x" * 20_000}}, "metadata"),
        ({}, "_schema"),
    ],
)
def test_patch_validates_as_a_create_does(
    client: FlaskClient, secure: Settings, keys: dict, body: dict[str, Any], field: str
) -> None:
    job_id = insert(secure, type="http", payload={"url": "https://example.com/hook"})
    before = row(secure, job_id)
    errors = assert_error(client.patch(f"/api/jobs/{job_id}", json=body, headers=keys["writer"]), 422)["errors"]
    assert field in errors["json"], errors
    same(secure, job_id, before)


def test_patch_keeps_retries_for_the_attempts_made(client: FlaskClient, secure: Settings, keys: dict) -> None:
    # A retry waiting for its dispatch: two attempts of this run made.
    job_id = insert(secure, status="QUEUED", attempts=3, attempt_base=1, max_retries=3)
    body = assert_error(client.patch(f"/api/jobs/{job_id}", json={"max_retries": 1}, headers=keys["writer"]), 422)
    assert "at least 2" in body["errors"]["json"]["max_retries"][0]
    assert client.patch(f"/api/jobs/{job_id}", json={"max_retries": 2}, headers=keys["writer"]).status_code == 200


@pytest.mark.parametrize("status", ["RUNNING", "RETRYING", *FINISHED])
def test_patch_refuses_started_and_finished_jobs(
    client: FlaskClient, secure: Settings, keys: dict, status: str
) -> None:
    job_id = insert(secure, status=status)
    before = row(secure, job_id)
    body = assert_error(client.patch(f"/api/jobs/{job_id}", json={"priority": 1}, headers=keys["writer"]), 409)
    assert status in body["message"]
    same(secure, job_id, before)


def test_patch_seals_secrets_and_keeps_those_sent_back_masked(
    client: FlaskClient, secure: Settings, keys: dict
) -> None:
    created = client.post("/api/jobs", headers=keys["writer"], json={
        "name": "hook", "type": "http", "delay_seconds": 3600,
        "payload": {"url": "https://example.com/a", "headers": {"Authorization": {"secret": "one"}}}})
    job = created.get_json()
    ring = Keyring.from_settings(secure)

    def clear() -> dict[str, Any]:
        stored = row(secure, uuid.UUID(job["id"]))
        return reveal("http", stored.payload, ring)["headers"]

    # What GET shows, changed elsewhere and sent back: the secret stays as it was.
    shown = job["payload"] | {"url": "https://example.com/b", "headers": {"Authorization": "***", "X-A": "1"}}
    patched = client.patch(f"/api/jobs/{job['id']}", json={"payload": shown}, headers=keys["writer"])
    assert patched.status_code == 200, patched.get_json()
    assert patched.get_json()["payload"]["headers"] == {"Authorization": "***", "X-A": "1"}
    assert clear() == {"Authorization": "one", "X-A": "1"}
    assert "one" not in str(row(secure, uuid.UUID(job["id"])).payload)
    # A new secret is sealed; "***" where no secret is stored is refused.
    client.patch(f"/api/jobs/{job['id']}", headers=keys["writer"],
                 json={"payload": {"url": "https://example.com/b", "headers": {"Authorization": {"secret": "two"}}}})
    assert clear() == {"Authorization": "two"}
    refused = client.patch(f"/api/jobs/{job['id']}", headers=keys["writer"],
                           json={"payload": {"url": "https://example.com/b", "headers": {"X-B": "***"}}})
    assert "X-B" in assert_error(refused, 422)["errors"]["json"]["payload"]["headers"]
    assert clear() == {"Authorization": "two"}


# --- who may: 403, 404 for all four -------------------------------------------------------


def _calls(job_id: Any) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [("post", f"/api/jobs/{job_id}/trigger", None), ("post", f"/api/jobs/{job_id}/rerun", None),
            ("patch", f"/api/jobs/{job_id}", {"priority": 3})]


def test_viewers_may_not_change_jobs(client: FlaskClient, secure: Settings, keys: dict) -> None:
    job_id = insert(secure)
    before = row(secure, job_id)
    for method, path, body in [*_calls(job_id), ("post", "/api/jobs/rerun", {})]:
        refused = assert_error(getattr(client, method)(path, json=body, headers=keys["viewer"]), 403)
        assert "writer" in refused["message"]
    same(secure, job_id, before)


def test_another_tenants_job_is_a_404_like_none(client: FlaskClient, secure: Settings, keys: dict) -> None:
    scheduled, failed = insert(secure), finished(secure)
    before = {job_id: row(secure, job_id) for job_id in (scheduled, failed)}
    for job_id in (scheduled, failed):
        for method, path, body in _calls(job_id):
            answer = assert_error(getattr(client, method)(path, json=body, headers=keys["other"]), 404)
            assert answer["message"] == f"No job with id '{job_id}'"
    for missing in (uuid.uuid4(), "not-a-uuid"):
        for method, path, body in _calls(missing):
            assert_error(getattr(client, method)(path, json=body, headers=keys["writer"]), 404)
    # A redrive of the other tenant finds nothing of acme's.
    assert client.post("/api/jobs/rerun", json={}, headers=keys["other"]).get_json()["rerun"] == 0
    for job_id, job in before.items():
        same(secure, job_id, job)


def test_shell_jobs_are_changed_by_admins_only(client: FlaskClient, secure: Settings, keys: dict) -> None:
    shell = {"type": "shell", "payload": {"argv": ["true"]}}
    scheduled, failed = insert(secure, **shell), finished(secure, **shell)
    for job_id in (scheduled, failed):
        for method, path, body in _calls(job_id):
            refused = assert_error(getattr(client, method)(path, json=body, headers=keys["writer"]), 403)
            assert "admins" in refused["message"]
    # A writer's redrive leaves them alone, and cannot ask for them; an admin may do it all.
    assert client.post("/api/jobs/rerun", json={}, headers=keys["writer"]).get_json()["matched"] == 0
    assert_error(client.post("/api/jobs/rerun", json={"type": "shell"}, headers=keys["writer"]), 403)
    assert client.patch(f"/api/jobs/{scheduled}", json={"priority": 3}, headers=keys["admin"]).status_code == 200
    assert client.post(f"/api/jobs/{scheduled}/trigger", headers=keys["admin"]).status_code == 200
    assert client.post(f"/api/jobs/{failed}/rerun", headers=keys["admin"]).status_code == 200


def test_changes_are_audited(client: FlaskClient, secure: Settings, keys: dict) -> None:
    scheduled, failed = insert(secure), finished(secure)
    client.post(f"/api/jobs/{scheduled}/trigger", headers=keys["writer"])
    client.post(f"/api/jobs/{scheduled}/trigger", headers=keys["writer"])  # QUEUED: triggered again, fine
    client.patch(f"/api/jobs/{failed}", json={"priority": 1}, headers=keys["writer"])  # 409
    client.post(f"/api/jobs/{failed}/rerun", headers=keys["writer"])
    client.post("/api/jobs/rerun", json={"name": "nothing"}, headers=keys["writer"])
    items = client.get("/api/audit?tenant=acme", headers=keys["admin"]).get_json()["items"]
    seen = [(i["action"], i["target_id"], i["outcome"]) for i in reversed(items)]
    assert seen == [
        ("jobs.trigger", str(scheduled), 200), ("jobs.trigger", str(scheduled), 200),
        ("jobs.update", str(failed), 409), ("jobs.rerun", str(failed), 200), ("jobs.redrive", None, 200),
    ]


# --- redrive ------------------------------------------------------------------------------


def test_redrive_reruns_only_the_matching_jobs(client: FlaskClient, secure: Settings, keys: dict) -> None:
    hit = [finished(secure, "FAILED", name="nightly", attempts=n) for n in (1, 2, 3)]
    untouched = [
        finished(secure, "FAILED", name="other"),
        finished(secure, "SUCCESS", name="nightly"),
        finished(secure, "CANCELLED", name="nightly", attempts=0),
        insert(secure, status="RUNNING", name="nightly"),
        finished(secure, "FAILED", name="nightly", tenant="globex"),
    ]
    before = {job_id: row(secure, job_id) for job_id in untouched}
    response = client.post("/api/jobs/rerun", json={"name": "nightly"}, headers=keys["writer"])
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    assert (answer["rerun"], answer["matched"], answer["more"], answer["dry_run"]) == (3, 3, False, False)
    for n, job_id in enumerate(hit, 1):
        job = row(secure, job_id)
        assert (job.status, job.runs, job.attempt_base, job.error) == ("QUEUED", 2, n, None)
    for job_id, job in before.items():
        same(secure, job_id, job)
    # Each was dispatched, its next attempt numbered on.
    messages = [m for m in map(decode_dispatch, (r.value for r in read_topic(secure, secure.topic_jobs, expect=3)))]
    assert sorted((str(m.job_id), m.attempt) for m in messages) == sorted((str(j), n + 1) for n, j in enumerate(hit, 1))
    # Other statuses when asked for; a job rerun above no longer matches.
    answer = client.post("/api/jobs/rerun", json={"name": "nightly", "status": ["SUCCESS", "cancelled"]},
                         headers=keys["writer"]).get_json()
    assert answer["rerun"] == 2
    assert client.post("/api/jobs/rerun", json={"name": "nightly"}, headers=keys["writer"]).get_json()["rerun"] == 0


def test_redrive_filters(client: FlaskClient, secure: Settings, keys: dict) -> None:
    now = utcnow()
    old = finished(secure, type="fail", finished_at=now - timedelta(hours=3))
    recent = finished(secure, type="noop", finished_at=now - timedelta(minutes=5))
    with session_scope(secure) as session:
        session.execute(sa.update(Job).where(Job.id == old).values(execute_at=now - timedelta(days=1)))

    hour_ago = (now - timedelta(hours=1)).isoformat()
    assert client.post("/api/jobs/rerun", json={"dry_run": True}, headers=keys["writer"]).get_json()["matched"] == 2
    for body, expected in [
        ({"type": "fail"}, 1), ({"type": "noop"}, 1), ({"type": "http"}, 0),
        ({"finished_after": hour_ago}, 1), ({"finished_before": hour_ago}, 1),
        ({"execute_before": hour_ago}, 1), ({"execute_after": hour_ago}, 1),
        ({"schedule_id": str(uuid.uuid4())}, 0), ({"status": "SUCCESS"}, 0),
    ]:
        answer = client.post("/api/jobs/rerun", json={**body, "dry_run": True}, headers=keys["writer"]).get_json()
        assert answer["matched"] == expected, body
    # Nothing was changed by the dry runs; a real one with a filter reruns just that one.
    assert row(secure, old).status == row(secure, recent).status == "FAILED"
    answer = client.post("/api/jobs/rerun", json={"finished_before": hour_ago}, headers=keys["writer"]).get_json()
    assert answer["rerun"] == 1 and at(answer["finished_before"]) == at(hour_ago)
    assert (row(secure, old).status, row(secure, recent).status) == ("QUEUED", "FAILED")


def test_redrive_goes_on_over_its_limit_and_in_batches(
    client: FlaskClient, secure: Settings, keys: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "REDRIVE_BATCH", 2)  # 5 jobs: batches of 2, 2 and 1
    now = utcnow()
    ids = [finished(secure, finished_at=now - timedelta(minutes=10 - i)) for i in range(5)]
    first = client.post("/api/jobs/rerun", json={"limit": 3}, headers=keys["writer"]).get_json()
    assert (first["rerun"], first["matched"], first["more"]) == (3, 5, True)
    assert [row(secure, job_id).status for job_id in ids] == ["QUEUED"] * 3 + ["FAILED"] * 2  # oldest first
    # A job of the first call that failed again since is not picked up by the next call.
    with session_scope(secure) as session:
        session.execute(sa.update(Job).where(Job.id == ids[0]).values(status="FAILED", finished_at=utcnow()))
    rest = client.post("/api/jobs/rerun", json={"finished_before": first["finished_before"]},
                       headers=keys["writer"]).get_json()
    assert (rest["rerun"], rest["matched"], rest["more"]) == (2, 2, False)
    assert row(secure, ids[0]).status == "FAILED" and row(secure, ids[4]).runs == 2
    assert_error(client.post("/api/jobs/rerun", json={"limit": 10_001}, headers=keys["writer"]), 422)


def test_redrive_counts_against_the_quotas(client: FlaskClient, secure: Settings, keys: dict) -> None:
    for _ in range(3):
        finished(secure)
    assert client.patch("/api/tenants/acme", json={"max_pending_jobs": 2}, headers=keys["admin"]).status_code == 200
    body = assert_error(client.post("/api/jobs/rerun", json={}, headers=keys["writer"]), 429)
    assert "unfinished jobs" in body["message"]
    assert client.post("/api/jobs/rerun", json={"limit": 2}, headers=keys["writer"]).get_json()["rerun"] == 2
    assert client.patch("/api/tenants/acme", json={"max_batch_jobs": 1, "max_pending_jobs": 100},
                        headers=keys["admin"]).status_code == 200
    refused = assert_error(client.post("/api/jobs/rerun", json={"limit": 5}, headers=keys["writer"]), 413)
    assert "limit" in refused["errors"]["json"]
    assert client.post("/api/jobs/rerun", json={}, headers=keys["writer"]).get_json()["rerun"] == 1


def test_redrive_tenants(client: FlaskClient, secure: Settings, keys: dict) -> None:
    acme, globex = finished(secure), finished(secure, tenant="globex")
    refused = assert_error(client.post("/api/jobs/rerun", json={"tenant": "globex"}, headers=keys["writer"]), 403)
    assert "tenant" in refused["errors"]["json"]
    assert row(secure, globex).status == "FAILED"
    # A writer may name its own tenant; an admin any, or none (every tenant's).
    assert client.post("/api/jobs/rerun", json={"tenant": "acme", "dry_run": True},
                       headers=keys["writer"]).get_json()["matched"] == 1
    assert client.post("/api/jobs/rerun", json={"tenant": "globex"}, headers=keys["admin"]).get_json()["rerun"] == 1
    assert (row(secure, acme).status, row(secure, globex).status) == ("FAILED", "QUEUED")
    finished(secure, tenant="initech")
    assert client.post("/api/jobs/rerun", json={}, headers=keys["admin"]).get_json()["rerun"] == 2
    assert row(secure, acme).status == "QUEUED"


@pytest.mark.parametrize("body, field", [
    ({"status": ["RUNNING"]}, "status"), ({"status": []}, "status"), ({"status": [1]}, "status"),
    ({"limit": 0}, "limit"), ({"finished_after": "yesterday"}, "finished_after"),
    ({"schedule_id": "nope"}, "schedule_id"), ({"tenant": "Not A Tenant!"}, "tenant"), ({"colour": 1}, "colour"),
])
def test_redrive_bad_filters_are_422(client: FlaskClient, secure: Settings, keys: dict, body: dict, field: str) -> None:
    job_id = finished(secure)
    refused = assert_error(client.post("/api/jobs/rerun", json=body, headers=keys["writer"]), 422)
    assert field in refused["errors"]["json"]
    assert row(secure, job_id).status == "FAILED"


# --- the store functions on both databases (chronoq up runs on SQLite) ----------------------


def test_control_statements_on_each_database(database: Settings) -> None:
    now = utcnow()
    due = now + timedelta(hours=1)
    with session_scope(database) as session:
        session.add_all([
            Job(id=(a := uuid.uuid4()), tenant="t", name="a", type="noop", payload={}, execute_at=due,
                timeout_seconds=1.0, status="QUEUED", dispatch_token=4),
            Job(id=(f := uuid.uuid4()), tenant="t", name="f", type="noop", payload={}, execute_at=now,
                timeout_seconds=1.0, status="FAILED", attempts=3, dispatch_token=2, finished_at=now, error="x"),
            Job(id=(g := uuid.uuid4()), tenant="t", name="g", type="noop", payload={}, execute_at=now,
                timeout_seconds=1.0, status="FAILED", attempts=1, dispatch_token=1, finished_at=now),
        ])
    with session_scope(database) as session:
        assert control.trigger(session, a, now=now, tenant="other").status is None
        outcome = control.trigger(session, a, now=now, tenant="t")
        assert outcome.done and outcome.row.dispatch_token == 5
        refused = control.rerun(session, a, now=now)
        assert not refused.done and refused.status == "SCHEDULED"
        assert control.update_job(session, a, {"priority": 7, "meta": {"k": 1}}, now=now, attempts=0).done
        assert not control.update_job(session, a, {"priority": 8}, now=now, attempts=1).done  # attempts moved on
        assert control.rerun(session, f, now=now).row.runs == 2
        where = control.RedriveFilter(finished_before=now + timedelta(seconds=1), tenant="t")
        assert control.count_matching(session, where) == 1
        assert control.matching_by_tenant(session, where, limit=10) == {"t": 1}
        assert control.redrive_batch(session, where, now=now, size=10) == control.RedriveBatch(1, [g])
        assert not control.any_matching(session, where)
    with session_scope(database) as session:
        jobs = {job.id: job for job in session.scalars(sa.select(Job))}
        assert ensure_aware(jobs[a].original_execute_at) == due and ensure_aware(jobs[a].execute_at) == now
        assert (jobs[a].priority, jobs[a].meta, jobs[a].dispatch_token) == (7, {"k": 1}, 6)
        assert (jobs[f].status, jobs[f].attempt_base, jobs[f].dispatch_token) == ("SCHEDULED", 3, 3)
        assert jobs[f].error is None and jobs[f].output is None and jobs[f].finished_at is None
        assert (jobs[g].status, jobs[g].attempt_base, jobs[g].runs) == ("SCHEDULED", 1, 2)


def test_a_redrive_waits_for_rows_being_written_and_never_reruns_a_job_twice(secure: Settings) -> None:
    """A job the result writer is writing is waited for, not skipped; two redrives at once
    rerun each job once (the second reads the row again once it has it)."""
    from concurrent.futures import ThreadPoolExecutor

    from common.infra.db import get_engine
    from tests.helpers import wait_for

    job_id = finished(secure)
    where = control.RedriveFilter(finished_before=utcnow() + timedelta(minutes=1), tenant="acme")

    def waiting() -> bool:
        with get_engine(secure).connect() as conn:
            return bool(conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )).scalar())

    def other_redrive() -> control.RedriveBatch:
        with session_scope(secure) as session:
            return control.redrive_batch(session, where, now=utcnow(), size=10)

    with ThreadPoolExecutor(1) as pool:
        # The result writer holds the row: the redrive waits for it, then reruns it.
        with session_scope(secure) as writer:
            writer.execute(sa.select(Job.id).where(Job.id == job_id).with_for_update()).all()
            redrive = pool.submit(other_redrive)
            wait_for(waiting, timeout=10, what="the redrive waiting for the row")
        assert redrive.result(timeout=10) == control.RedriveBatch(1, [job_id])
        # Another redrive reran it meanwhile (not committed yet): this one leaves it alone.
        with session_scope(secure) as session:
            session.execute(
                sa.update(Job).where(Job.id == job_id).values(status="FAILED", runs=1, finished_at=utcnow()))
        with session_scope(secure) as first:
            assert control.redrive_batch(first, where, now=utcnow(), size=10).rerun == [job_id]
            second = pool.submit(other_redrive)
            wait_for(waiting, timeout=10, what="the second redrive waiting for the row")
        assert second.result(timeout=10) == control.RedriveBatch(1, [])
    assert row(secure, job_id).runs == 2
