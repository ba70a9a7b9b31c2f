"""Schedules whose template is a workflow, over the real API and PostgreSQL: the template's
validation (exactly one of job and workflow, the graph, overlap), how it is stored and shown
(secrets redacted), occurrences made once per fire time by scanners running at once (ON
CONFLICT on the workflow's identity, tasks only for the workflows inserted), direct dispatch of
roots due soon, pause and delete taking back the occurrences that have not started, and an
occurrence's tasks released like any workflow's, with the schedule's figures."""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Iterator

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from common.core import schedules
from common.core.models import Job, Schedule, Workflow
from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.db import session_scope
from tests.integration.test_api_jobs import assert_error, make_client
from tests.integration.test_workflows import end, run, start

NO_BROKER = "127.0.0.1:1"
SECRET_KEY = "u8b9hpbTL1JihVjvWHEbszczMa9kDUmYPwTg33nyFBo="
MAX_TASKS = 5


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    """PostgreSQL, no broker (these schedules make nothing due soon by themselves), secrets on."""
    return replace(settings, kafka_bootstrap=NO_BROKER, secret_key=SECRET_KEY, workflow_max_tasks=MAX_TASKS)


@pytest.fixture
def client(app_settings: Settings) -> Iterator[FlaskClient]:
    yield from make_client(app_settings)


def task(key: str, *deps: str, **fields: Any) -> dict[str, Any]:
    return {"key": key, "type": "noop", "depends_on": list(deps), **fields}


DIAMOND = [task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c")]


def flow(tasks: list[dict[str, Any]] | None = None, **changes: Any) -> dict[str, Any]:
    return {"name": "nightly", "tasks": DIAMOND if tasks is None else tasks, **changes}


def create(client: FlaskClient, **body: Any) -> dict[str, Any]:
    body.setdefault("workflow", flow())
    if "interval_seconds" not in body:
        body.setdefault("cron", "0 0 1 1 *")  # makes nothing soon by itself
    response = client.post("/api/schedules", json=body)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def occurrences(settings: Settings, schedule_id: str) -> list[dict[str, Any]]:
    """The schedule's workflows, by fire time, each with its tasks' statuses by key."""
    with session_scope(settings) as session:
        rows = session.scalars(select(Workflow).where(Workflow.schedule_id == uuid.UUID(schedule_id))
                               .order_by(Workflow.scheduled_for)).all()
        made = [{
            "id": row.id, "scheduled_for": row.scheduled_for, "execute_at": row.execute_at, "status": row.status,
            "tasks": {job.task_key: job for job in session.scalars(select(Job).where(Job.workflow_id == row.id))},
        } for row in rows]
        session.expunge_all()
    return made


def count(settings: Settings, entity: Any) -> int:
    with session_scope(settings) as session:
        return session.scalar(select(func.count()).select_from(entity)) or 0


def hourly_in_the_past(client: FlaskClient, settings: Settings, **body: Any) -> tuple[str, datetime]:
    """An hourly schedule whose fire times since ``base`` (ten and a half hours ago) are not
    made yet, as if chronoq had been down; returns its id and ``base``."""
    base = utcnow().replace(microsecond=0) - timedelta(hours=10, minutes=30)
    made = create(client, interval_seconds=3600, start_at=base.isoformat(), **body)
    with session_scope(settings) as session:
        session.execute(update(Schedule).where(Schedule.id == uuid.UUID(made["id"]))
                        .values(made_until=base - timedelta(seconds=1), next_fire_at=base))
    return made["id"], base


def make_three(settings: Settings, base: datetime) -> schedules.Made:
    """The scanner's pass at ``base``, with a horizon taking in three hourly fire times."""
    with session_scope(settings) as session:
        return schedules.make_due(session, now=base - timedelta(milliseconds=500),
                                  horizon=base + timedelta(hours=2, seconds=1))


# --- definition -------------------------------------------------------------------------------


def test_a_workflow_template_is_stored_and_shown_with_its_secrets_redacted(client: FlaskClient,
                                                                           app_settings: Settings) -> None:
    hook = task("hook", "a", type="http",
                payload={"url": "https://example.com/x", "headers": {"Authorization": {"secret": "s3cr3t"}}})
    body = create(client, name="nightly", workflow=flow([task("a", metadata={"team": "data"}), hook],
                                                       failure_policy="continue", metadata={"k": "v"}))
    assert body["job"] is None and body["overlap_policy"] == "allow" and body["next_fire_at"]
    shown = body["workflow"]
    assert shown["name"] == "nightly" and shown["failure_policy"] == "continue" and shown["metadata"] == {"k": "v"}
    assert [t["key"] for t in shown["tasks"]] == ["a", "hook"]
    assert shown["tasks"][0]["metadata"] == {"team": "data"} and shown["tasks"][0]["run_if"] == "success"
    assert shown["tasks"][1]["depends_on"] == ["a"] and shown["tasks"][1]["allow_failure"] is False
    assert shown["tasks"][1]["payload"]["headers"] == {"Authorization": "***"}
    again = client.get(f"/api/schedules/{body['id']}").get_json()
    assert again["workflow"] == shown and again["job"] is None and again["last_occurrence"] is None
    assert client.get("/api/schedules").get_json()["items"][0]["workflow"] == shown
    with session_scope(app_settings) as session:
        stored = session.get(Schedule, uuid.UUID(body["id"])).job
    assert list(stored) == ["workflow"] and "s3cr3t" not in json.dumps(stored)  # sealed at rest
    preview = client.post("/api/schedules/preview?count=2", json={"interval_seconds": 60, "workflow": flow()})
    assert preview.status_code == 200 and len(preview.get_json()["items"]) == 2


@pytest.mark.parametrize(("body", "where", "words"), [
    ({"job": {"name": "x", "type": "noop"}, "workflow": flow()}, ("job",), "exactly one of job and workflow"),
    ({"job": {"name": "x", "type": "noop"}, "workflow": flow()}, ("workflow",), "exactly one of job and workflow"),
    ({"workflow": None}, ("job",), "exactly one of job and workflow"),
    ({"workflow": flow([task("a", "c"), task("b", "a"), task("c", "b")])}, ("workflow", "tasks", "0", "depends_on"),
     "task 'a' is in a cycle"),
    ({"workflow": flow([task("a"), task("b", "x")])}, ("workflow", "tasks", "1", "depends_on"),
     "task 'b' depends on unknown task 'x'"),
    ({"workflow": flow([task("a"), task("b", type="nope")])}, ("workflow", "tasks", "1", "type"), "unknown job type"),
    ({"workflow": flow([task(f"t{i}") for i in range(MAX_TASKS + 1)])}, ("workflow", "tasks"),
     "CHRONOQ_WORKFLOW_MAX_TASKS"),
    ({"workflow": flow(execute_at="2030-01-01T00:00:00Z")}, ("workflow", "execute_at"), "Unknown field"),
    ({"workflow": flow(), "overlap_policy": "skip"}, ("overlap_policy",), "overlap policies apply to job templates"),
])
def test_an_invalid_template_is_a_422_naming_the_field(
        client: FlaskClient, app_settings: Settings, body: dict[str, Any], where: tuple[str, ...], words: str) -> None:
    body = {"cron": "0 0 1 1 *", **body}
    error = assert_error(client.post("/api/schedules", json=body), 422)["errors"]["json"]
    for key in where:
        error = error[key]
    assert words in str(error), error
    assert count(app_settings, Schedule) == 0


def test_an_update_replaces_the_template_whole_of_either_kind(client: FlaskClient) -> None:
    body = create(client, job={"name": "tick", "type": "noop"}, workflow=None, overlap_policy="skip")
    path = f"/api/schedules/{body['id']}"
    # A job schedule's overlap policy does not carry over to a workflow template.
    refused = assert_error(client.patch(path, json={"workflow": flow()}), 422)
    assert "overlap policies apply to job templates" in str(refused["errors"]["json"]["overlap_policy"])
    changed = client.patch(path, json={"workflow": flow([task("only")]), "overlap_policy": "allow"})
    assert changed.status_code == 200, changed.get_data(as_text=True)
    assert changed.get_json()["job"] is None and [t["key"] for t in changed.get_json()["workflow"]["tasks"]] == ["only"]
    queued = assert_error(client.patch(path, json={"overlap_policy": "queue_one"}), 422)
    assert "overlap_policy" in queued["errors"]["json"]
    both = assert_error(client.patch(path, json={"job": {"name": "x", "type": "noop"}, "workflow": flow()}), 422)
    assert set(both["errors"]["json"]) == {"job", "workflow"}
    unchanged = client.patch(path, json={"cron": "0 0 2 1 *", "job": None})  # a null template: not given
    assert unchanged.get_json()["workflow"]["tasks"][0]["key"] == "only"
    back = client.patch(path, json={"job": {"name": "tock", "type": "noop"}}).get_json()
    assert back["workflow"] is None and back["job"]["name"] == "tock" and back["cron"] == "0 0 2 1 *"


# --- occurrences ------------------------------------------------------------------------------


def test_scanners_at_once_make_each_occurrence_a_workflow_once(client: FlaskClient, app_settings: Settings) -> None:
    schedule_id, base = hourly_in_the_past(client, app_settings)
    barrier = threading.Barrier(4)
    results: list[schedules.Made] = []

    def scanner() -> None:
        barrier.wait()
        for _ in range(2):  # and each again for the same window
            results.append(make_three(app_settings, base))

    threads = [threading.Thread(target=scanner) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    made = occurrences(app_settings, schedule_id)
    assert [o["scheduled_for"] for o in made] == [base + timedelta(hours=h) for h in range(3)]
    assert all(o["execute_at"] == o["scheduled_for"] and o["status"] == "RUNNING" for o in made)
    for occurrence in made:
        assert {key: job.status for key, job in occurrence["tasks"].items()} == {
            "a": "SCHEDULED", "b": "WAITING", "c": "WAITING", "d": "WAITING"}
        assert {job.name for job in occurrence["tasks"].values()} == {f"nightly.{key}" for key in "abcd"}
        assert all(job.schedule_id is None and job.execute_at == occurrence["execute_at"]
                   for job in occurrence["tasks"].values())
    # Each insert was counted by exactly one pass, which reported the roots it made.
    assert sum(r.occurrences for r in results) == 3
    assert sorted(i for r in results for i in r.job_ids) == sorted(o["tasks"]["a"].id for o in made)
    # A pass over a window already made (made_until set back) inserts no workflow and no task.
    with session_scope(app_settings) as session:
        session.execute(update(Schedule).where(Schedule.id == uuid.UUID(schedule_id))
                        .values(made_until=base - timedelta(seconds=1), next_fire_at=base))
    again = make_three(app_settings, base)
    assert (again.occurrences, again.job_ids, again.workflow_ids) == (0, [], [])
    assert (count(app_settings, Workflow), count(app_settings, Job)) == (3, 12)
    listed = client.get(f"/api/workflows?schedule_id={schedule_id}").get_json()["items"]
    assert sorted(w["id"] for w in listed) == sorted(str(o["id"]) for o in made)
    assert all(w["schedule_id"] == schedule_id and w["task_counts"] == {"SCHEDULED": 1, "WAITING": 3} for w in listed)


def test_an_occurrence_runs_and_releases_like_any_workflow(client: FlaskClient, app_settings: Settings) -> None:
    schedule_id, base = hourly_in_the_past(client, app_settings)
    make_three(app_settings, base)
    first, second, third = occurrences(app_settings, schedule_id)
    job = {key: row.id for key, row in first["tasks"].items()}
    assert sorted(end(app_settings, start(app_settings, job["a"]), writer="results")) == sorted([job["b"], job["c"]])
    assert run(app_settings, job["b"]) == [] and run(app_settings, job["c"]) == [job["d"]]
    run(app_settings, job["d"])
    shown = client.get(f"/api/workflows/{first['id']}").get_json()
    assert shown["status"] == "SUCCESS" and shown["schedule_id"] == schedule_id
    assert run(app_settings, second["tasks"]["a"].id, "FAILED") == []  # fail_fast cancels the rest
    assert client.get(f"/api/workflows/{second['id']}").get_json()["status"] == "FAILED"
    body = client.get(f"/api/schedules/{schedule_id}").get_json()
    assert body["on_time"]["occurrences"] == 2 and body["on_time"]["by_status"] == {"SUCCESS": 1, "FAILED": 1}
    assert body["on_time"]["lateness_ms"]["measured"] == 2
    last = body["last_occurrence"]  # the latest due: the third, not started
    assert (last["id"], last["kind"], last["status"], last["started_at"]) == (str(third["id"]), "workflow", "RUNNING",
                                                                             None)


def test_pause_and_delete_take_back_the_occurrences_that_have_not_started(client: FlaskClient,
                                                                          app_settings: Settings) -> None:
    schedule_id, base = hourly_in_the_past(client, app_settings)
    make_three(app_settings, base)
    first, second, third = occurrences(app_settings, schedule_id)
    start(app_settings, first["tasks"]["a"].id)  # running: its workflow has started
    paused = client.post(f"/api/schedules/{schedule_id}/pause").get_json()
    assert paused["paused"]
    assert [o["id"] for o in occurrences(app_settings, schedule_id)] == [first["id"]]
    assert count(app_settings, Job) == 4  # the others' tasks went with them
    # Resumed and made again, then deleted: the started one stays, as an ordinary workflow.
    client.post(f"/api/schedules/{schedule_id}/resume")
    with session_scope(app_settings) as session:
        session.execute(update(Schedule).where(Schedule.id == uuid.UUID(schedule_id))
                        .values(made_until=base - timedelta(seconds=1), next_fire_at=base))
    assert make_three(app_settings, base).occurrences == 2  # the two taken back; the first exists
    assert client.delete(f"/api/schedules/{schedule_id}").status_code == 204
    with session_scope(app_settings) as session:
        rows = session.execute(select(Workflow.id, Workflow.schedule_id)).all()
    assert [(row.id, row.schedule_id) for row in rows] == [(first["id"], None)]
    assert count(app_settings, Job) == 4


def test_roots_due_soon_are_dispatched_by_the_api(kafka_settings: Settings) -> None:
    clients = make_client(kafka_settings)
    client = next(clients)
    try:
        body = create(client, interval_seconds=1, workflow=flow([task("a"), task("b", "a")]))
        made = occurrences(kafka_settings, body["id"])
        assert made, "nothing made up to the scanner's horizon"
        # Due before the horizon the scanner may have scanned already: the API dispatched the roots.
        assert all({k: j.status for k, j in o["tasks"].items()} == {"a": "QUEUED", "b": "WAITING"} for o in made)
        assert client.post(f"/api/schedules/{body['id']}/pause").get_json()["paused"]
        assert occurrences(kafka_settings, body["id"]) == []  # dispatched is not started
    finally:
        next(clients, None)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_workflow_occurrences_are_made_once_on_sqlite(database: Settings) -> None:
    """The local run's SQLite takes the same ON CONFLICT DO NOTHING path."""
    settings = replace(database, auth_enabled=False, kafka_bootstrap=NO_BROKER)
    clients = make_client(settings)
    client = next(clients)
    try:
        schedule_id, base = hourly_in_the_past(client, settings)
        assert make_three(settings, base).occurrences == 3
        with session_scope(settings) as session:
            session.execute(update(Schedule).where(Schedule.id == uuid.UUID(schedule_id))
                            .values(made_until=base - timedelta(seconds=1), next_fire_at=base))
        assert make_three(settings, base).occurrences == 0
        assert (count(settings, Workflow), count(settings, Job)) == (3, 12)
    finally:
        next(clients, None)
