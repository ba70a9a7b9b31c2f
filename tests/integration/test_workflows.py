"""Workflows through the API on a real PostgreSQL (and SQLite): creation and its 422s, and the
release of tasks as their dependencies settle, driven through the same statements the services
use (the scanner's claim, the executor's start claim and write-through of attempt ends, the
result writer's updates, a cancel): a diamond, a failure branch, a skipped chain, fail_fast and
continue, conditions and templates, cancel and rerun, concurrent parents, and the sweep."""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from api import create_app
from common.core import store, workflow_release
from common.core.messages import UpdateMessage, decode_dispatch
from common.core.models import Job, Workflow
from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.db import session_scope
from tests.helpers import read_topic

LEASE = 30.0


@pytest.fixture
def client(settings: Settings) -> Iterator[FlaskClient]:
    """The API on PostgreSQL."""
    app = create_app(settings)
    yield app.test_client()
    app.extensions["chronoq"].close()


@pytest.fixture
def any_client(database: Settings) -> Iterator[FlaskClient]:
    """The API on each database chronoq runs on (PostgreSQL, and SQLite for the local run)."""
    app = create_app(replace(database, auth_enabled=False))
    yield app.test_client()
    app.extensions["chronoq"].close()


@pytest.fixture
def kafka_client(kafka_settings: Settings) -> Iterator[FlaskClient]:
    """The API on PostgreSQL with a real broker: tasks released by a request are published."""
    app = create_app(kafka_settings)
    yield app.test_client()
    app.extensions["chronoq"].close()


def workflow_body(tasks: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    body = {"name": "wf", "execute_at": (utcnow() + timedelta(hours=1)).isoformat(), "tasks": tasks}
    body.update(changes)
    return body


def task(key: str, *deps: str, **fields: Any) -> dict[str, Any]:
    return {"key": key, "type": "noop", "depends_on": list(deps), **fields}


DIAMOND = [task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c")]


def create(client: FlaskClient, tasks: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    response = client.post("/api/workflows", json=workflow_body(tasks, **changes))
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def statuses(client: FlaskClient, workflow_id: str) -> dict[str, str]:
    body = client.get(f"/api/workflows/{workflow_id}").get_json()
    return {t["key"]: t["status"] for t in body["tasks"]} | {"": body["status"]}


def ids(body: dict[str, Any]) -> dict[str, uuid.UUID]:
    return {t["key"]: uuid.UUID(t["id"]) for t in body["tasks"]}


def start(settings: Settings, job_id: uuid.UUID) -> UpdateMessage:
    """Dispatch and start a task the way the scanner and an executor do; the attempt's end."""
    now = utcnow()
    with session_scope(settings) as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(execute_at=now))
        claimed = store.claim_ids(session, [job_id], now=now, lease=LEASE)
        assert [m.job_id for m in claimed.messages] == [job_id], "the task was not SCHEDULED"
        message = claimed.messages[0]
        assert store.claim_starts(session, [message], executor="test", now=now, lease=LEASE)
    return UpdateMessage(job_id=job_id, token=message.token, status="RUNNING", attempt=message.attempt,
                         at=now, executor="test", started_at=now)


def end(settings: Settings, started: UpdateMessage, status: str = "SUCCESS", output: Any = None,
        *, writer: str = "executor") -> list[uuid.UUID]:
    """End a started attempt through the executor's write-through (or the result writer's
    updates); returns the tasks that released."""
    now = utcnow()
    message = UpdateMessage(job_id=started.job_id, token=started.token, status=status, attempt=started.attempt,
                            at=now, executor="test", started_at=started.started_at, finished_at=now,
                            output=output, error=None if status == "SUCCESS" else "boom")
    with session_scope(settings) as session:
        if writer == "executor":
            store.end_attempts(session, [message], lease=LEASE)
        else:
            store.apply_updates(session, [message], lease=LEASE)
        return workflow_release.released(session)


def run(settings: Settings, job_id: uuid.UUID, status: str = "SUCCESS", output: Any = None) -> list[uuid.UUID]:
    return end(settings, start(settings, job_id), status, output)


# --- creation -------------------------------------------------------------------------------


def test_a_workflow_is_stored_with_its_tasks_as_jobs(any_client: FlaskClient) -> None:
    client = any_client
    body = create(client, DIAMOND, metadata={"team": "data"})
    assert body["status"] == "RUNNING" and body["runs"] == 1 and body["metadata"] == {"team": "data"}
    assert [t["key"] for t in body["tasks"]] == ["a", "b", "c", "d"]
    assert [t["status"] for t in body["tasks"]] == ["SCHEDULED", "WAITING", "WAITING", "WAITING"]
    assert body["tasks"][3]["depends_on"] == ["b", "c"] and body["tasks"][3]["run_if"] == "success"
    assert body["task_counts"] == {"SCHEDULED": 1, "WAITING": 3}
    jobs = client.get(f"/api/jobs?workflow_id={body['id']}").get_json()["items"]
    assert sorted(j["task_key"] for j in jobs) == ["a", "b", "c", "d"]
    assert {j["name"] for j in jobs} == {"wf.a", "wf.b", "wf.c", "wf.d"}
    assert all(j["workflow_id"] == body["id"] for j in jobs)
    listed = client.get("/api/workflows").get_json()
    assert [w["id"] for w in listed["items"]] == [body["id"]] and "tasks" not in listed["items"][0]
    assert listed["items"][0]["task_counts"] == {"SCHEDULED": 1, "WAITING": 3}


def test_an_idempotent_repeat_returns_the_first_workflow(client: FlaskClient) -> None:
    body = workflow_body(DIAMOND)
    first = client.post("/api/workflows", json=body, headers={"Idempotency-Key": "k1"})
    again = client.post("/api/workflows", json=body, headers={"Idempotency-Key": "k1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json()["id"] == first.get_json()["id"]
    other = client.post("/api/workflows", json=workflow_body(DIAMOND[:1]), headers={"Idempotency-Key": "k1"})
    assert other.status_code == 422
    assert len(client.get("/api/workflows").get_json()["items"]) == 1


@pytest.mark.parametrize("tasks, where, expected", [
    ([task("a"), task("b", "x")], ("1", "depends_on"), "task 'b' depends on unknown task 'x'"),
    ([task("a", "c"), task("b", "a"), task("c", "b")], ("0", "depends_on"), "task 'a' is in a cycle"),
    ([task("a"), task("a")], ("1", "key"), "task 'a' is defined twice"),
    ([task("a"), task("b", run_if="failure")], ("1", "run_if"), "task 'b' can never run"),
    ([task("a"), task("b", "a", run_if={"path": "tasks.x.output.n", "op": "gt", "value": 1})], ("1", "run_if"),
     "its condition reads tasks.x, which is not one of its dependencies"),
    ([task("a"), task("b", "a", run_if={"path": "tasks.a.output.n", "op": "bigger", "value": 1})], ("1", "run_if"),
     "unknown op 'bigger'"),
    ([task("a"), task("b"), task("c", "a", payload={"p": "{{ tasks.b.output.path }}"})], ("2", "payload"),
     "reads task 'b', which is not upstream of it"),
    ([task("a", type="nope")], ("0", "type"), "unknown job type 'nope'"),
])
def test_a_bad_graph_is_a_422_naming_the_task(client: FlaskClient, tasks: list[dict[str, Any]],
                                              where: tuple[str, str], expected: str) -> None:
    response = client.post("/api/workflows", json=workflow_body(tasks))
    assert response.status_code == 422, response.get_data(as_text=True)
    index, name = where
    messages = response.get_json()["errors"]["json"]["tasks"][index][name]
    assert any(expected in message for message in messages), messages
    assert client.get("/api/workflows").get_json()["items"] == []


def test_too_many_tasks_is_a_422_naming_the_setting(settings: Settings) -> None:
    app = create_app(replace(settings, workflow_max_tasks=3))
    response = app.test_client().post("/api/workflows", json=workflow_body(DIAMOND))
    app.extensions["chronoq"].close()
    assert response.status_code == 422
    assert "CHRONOQ_WORKFLOW_MAX_TASKS" in response.get_json()["errors"]["json"]["tasks"][0]


# --- release --------------------------------------------------------------------------------


def test_a_diamond_releases_each_task_once_its_dependencies_succeeded(any_client: FlaskClient, database: Settings) -> None:
    client, settings = any_client, database
    body = create(client, DIAMOND)
    job = ids(body)
    assert sorted(run(settings, job["a"])) == sorted([job["b"], job["c"]])
    assert statuses(client, body["id"]) == {"a": "SUCCESS", "b": "SCHEDULED", "c": "SCHEDULED", "d": "WAITING",
                                            "": "RUNNING"}
    assert run(settings, job["b"]) == []  # d still waits for c
    assert statuses(client, body["id"])["d"] == "WAITING"
    assert run(settings, job["c"]) == [job["d"]]
    assert run(settings, job["d"]) == []
    final = client.get(f"/api/workflows/{body['id']}").get_json()
    assert final["status"] == "SUCCESS" and final["finished_at"] and final["started_at"]


def test_the_result_writer_seeing_the_same_end_releases_nothing_twice(client: FlaskClient, settings: Settings) -> None:
    body = create(client, DIAMOND)
    job = ids(body)
    started = start(settings, job["a"])
    assert sorted(end(settings, started)) == sorted([job["b"], job["c"]])
    assert end(settings, started, writer="results") == []  # the same end, seen again
    b = start(settings, job["b"])  # released once: claimable once, at dispatch token 1
    assert b.token == 1


def test_two_parents_ending_at_once_release_their_child_once(client: FlaskClient, settings: Settings) -> None:
    body = create(client, DIAMOND)
    job = ids(body)
    run(settings, job["a"])
    ends = [start(settings, job["b"]), start(settings, job["c"])]
    released: list[list[uuid.UUID]] = []
    barrier = threading.Barrier(2)

    def finish(started: UpdateMessage) -> None:
        barrier.wait()
        released.append(end(settings, started))

    threads = [threading.Thread(target=finish, args=(e,)) for e in ends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(len, released)) == [0, 1] and [job["d"]] in released
    assert statuses(client, body["id"])["d"] == "SCHEDULED"


def test_a_failure_branch_runs_and_the_success_branch_is_skipped(client: FlaskClient, settings: Settings) -> None:
    body = create(client, [task("export"), task("upload", "export"), task("alert", "export", run_if="failure"),
                           task("cleanup", "upload", "alert", run_if="always")], failure_policy="continue")
    job = ids(body)
    assert run(settings, job["export"], "FAILED") == [job["alert"]]
    now = statuses(client, body["id"])
    assert (now["upload"], now["alert"], now["cleanup"]) == ("SKIPPED", "SCHEDULED", "WAITING")
    upload = client.get(f"/api/jobs/{job['upload']}").get_json()
    assert upload["error"] == "skipped: dependency 'export' ended FAILED"
    assert run(settings, job["alert"]) == [job["cleanup"]]
    run(settings, job["cleanup"])
    assert statuses(client, body["id"])[""] == "FAILED"  # export failed and may not


def test_a_skipped_task_skips_the_chain_after_it(client: FlaskClient, settings: Settings) -> None:
    body = create(client, [task("a"), task("b", "a", run_if="failure"), task("c", "b"), task("d", "c"),
                           task("e", "a")])
    job = ids(body)
    assert run(settings, job["a"]) == [job["e"]]
    now = statuses(client, body["id"])
    assert (now["b"], now["c"], now["d"]) == ("SKIPPED", "SKIPPED", "SKIPPED")
    run(settings, job["e"])
    assert statuses(client, body["id"])[""] == "SUCCESS"  # skips do not fail a workflow


def test_fail_fast_cancels_what_has_not_started_but_runs_the_handlers(client: FlaskClient, settings: Settings) -> None:
    body = create(client, [task("a"), task("b", "a"), task("c", "a"), task("d", "b"), task("e", "c"),
                           task("notify", "b", run_if="failure")])
    job = ids(body)
    run(settings, job["a"])
    c = start(settings, job["c"])  # c is running when b fails
    assert run(settings, job["b"], "FAILED") == [job["notify"]]
    now = statuses(client, body["id"])
    assert (now["c"], now["d"], now["e"], now["notify"]) == ("RUNNING", "CANCELLED", "CANCELLED", "SCHEDULED")
    d = client.get(f"/api/jobs/{job['d']}").get_json()
    assert d["error"] == "cancelled: task 'b' failed (failure_policy fail_fast)"
    assert end(settings, c) == []  # c's end releases nothing: e was cancelled
    run(settings, job["notify"])
    assert statuses(client, body["id"])[""] == "FAILED"


def test_continue_runs_every_branch_that_still_can(client: FlaskClient, settings: Settings) -> None:
    body = create(client, [task("a"), task("b", "a"), task("c", "a"), task("d", "b"), task("e", "c")],
                  failure_policy="continue")
    job = ids(body)
    run(settings, job["a"])
    assert run(settings, job["b"], "FAILED") == []
    assert statuses(client, body["id"])["d"] == "SKIPPED"
    assert run(settings, job["c"]) == [job["e"]]
    run(settings, job["e"])
    assert statuses(client, body["id"])[""] == "FAILED"


def test_allow_failure_lets_the_workflow_succeed(client: FlaskClient, settings: Settings) -> None:
    body = create(client, [task("a", allow_failure=True), task("b", "a", run_if="always")])
    job = ids(body)
    assert run(settings, job["a"], "FAILED") == [job["b"]]
    run(settings, job["b"])
    assert statuses(client, body["id"])[""] == "SUCCESS"


def test_a_condition_on_output_and_a_template_rendered_at_release(any_client: FlaskClient, database: Settings) -> None:
    client, settings = any_client, database
    body = create(client, [
        task("export"),
        task("upload", "export", run_if={"path": "tasks.export.output.rows", "op": "gt", "value": 0},
             payload={"file": "{{ tasks.export.output.path }}", "note": "{{ tasks.export.output.rows }} rows",
                      "rows": "{{tasks.export.output.rows}}"}),
        task("empty", "export", run_if={"path": "tasks.export.output.rows", "op": "eq", "value": 0}),
    ])
    job = ids(body)
    assert run(settings, job["export"], output={"rows": 3, "path": "s3://b/x.csv"}) == [job["upload"]]
    upload = client.get(f"/api/jobs/{job['upload']}").get_json()
    assert upload["payload"] == {"file": "s3://b/x.csv", "note": "3 rows", "rows": 3}
    empty = client.get(f"/api/jobs/{job['empty']}").get_json()
    assert empty["status"] == "SKIPPED"
    assert empty["error"] == "skipped: condition tasks.export.output.rows eq 0 is false (the value is 3)"


def test_a_template_naming_nothing_fails_its_task_without_running_it(client: FlaskClient, settings: Settings) -> None:
    body = create(client, [task("a"), task("b", "a", payload={"p": "{{ tasks.a.output.missing }}"}),
                           task("c", "b", run_if="failure")])
    job = ids(body)
    assert run(settings, job["a"], output={"x": 1}) == [job["c"]]
    b = client.get(f"/api/jobs/{job['b']}").get_json()
    assert b["status"] == "FAILED" and b["attempts"] == 0
    assert b["error"] == "payload: tasks.a.output.missing: tasks.a.output has no 'missing'"


# --- control --------------------------------------------------------------------------------


def test_cancel_stops_what_has_not_started_and_a_second_cancel_is_a_409(client: FlaskClient, settings: Settings) -> None:
    body = create(client, DIAMOND)
    job = ids(body)
    run(settings, job["a"])
    b = start(settings, job["b"])
    response = client.delete(f"/api/workflows/{body['id']}")
    assert response.status_code == 200
    assert {t["key"]: t["status"] for t in response.get_json()["tasks"]} == {
        "a": "SUCCESS", "b": "RUNNING", "c": "CANCELLED", "d": "CANCELLED"}
    assert response.get_json()["status"] == "CANCELLED"
    assert end(settings, b) == []
    again = client.delete(f"/api/workflows/{body['id']}")
    assert again.status_code == 409 and "is CANCELLED" in again.get_json()["message"]
    assert client.delete(f"/api/workflows/{uuid.uuid4()}").status_code == 404


def test_cancelling_one_task_releases_and_dispatches_its_handlers(kafka_client: FlaskClient,
                                                                  kafka_settings: Settings) -> None:
    client = kafka_client
    body = create(client, [task("a"), task("b", "a"), task("tidy", "b", run_if="always")])
    job = ids(body)
    run(kafka_settings, job["a"])
    assert client.delete(f"/api/jobs/{job['b']}").status_code == 200
    assert statuses(client, body["id"])["tidy"] == "QUEUED"  # dispatched by the request that cancelled b


def test_rerun_runs_the_failed_tasks_again_and_keeps_the_succeeded(kafka_client: FlaskClient,
                                                                   kafka_settings: Settings) -> None:
    client, settings = kafka_client, kafka_settings
    body = create(client, DIAMOND, failure_policy="continue")
    job = ids(body)
    run(settings, job["a"], output={"n": 1})
    run(settings, job["b"], "FAILED")
    run(settings, job["c"])
    assert statuses(client, body["id"]) == {"a": "SUCCESS", "b": "FAILED", "c": "SUCCESS", "d": "SKIPPED",
                                            "": "FAILED"}
    assert client.post(f"/api/jobs/{job['b']}/rerun").status_code == 409  # rerun the workflow instead
    response = client.post(f"/api/workflows/{body['id']}/rerun")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["runs"] == 2 and response.get_json()["status"] == "RUNNING"
    now = statuses(client, body["id"])
    assert (now["a"], now["c"], now["d"], now["b"]) == ("SUCCESS", "SUCCESS", "WAITING", "QUEUED")
    assert client.post(f"/api/workflows/{body['id']}/rerun").status_code == 409  # RUNNING
    # b's new run was published by the rerun request: an executor starts it from that record.
    records = read_topic(settings, settings.topic_jobs, expect=1)
    dispatch = decode_dispatch(records[-1].value)
    assert dispatch.job_id == job["b"] and dispatch.attempt == 2
    with session_scope(settings) as session:
        assert store.claim_starts(session, [dispatch], executor="test", now=utcnow(), lease=LEASE)
    started = UpdateMessage(job_id=job["b"], token=dispatch.token, status="RUNNING", attempt=2, at=utcnow(),
                            executor="test", started_at=utcnow())
    assert end(settings, started) == [job["d"]]
    run(settings, job["d"])
    final = client.get(f"/api/workflows/{body['id']}").get_json()
    assert final["status"] == "SUCCESS"
    attempts = client.get(f"/api/jobs/{job['b']}/attempts").get_json()["items"]
    assert [a["status"] for a in attempts] == ["FAILED", "SUCCESS"]


def test_the_sweep_releases_what_a_settle_outside_chronoq_left_waiting(client: FlaskClient, settings: Settings) -> None:
    body = create(client, DIAMOND)
    job = ids(body)
    with session_scope(settings) as session:  # a's end written as if no release ran with it
        session.execute(sa.update(Job).where(Job.id == job["a"]).values(status="SUCCESS", finished_at=utcnow()))
    assert statuses(client, body["id"])["b"] == "WAITING"
    with session_scope(settings) as session:
        assert workflow_release.sweep(session, now=utcnow()) == 2
        assert sorted(workflow_release.released(session)) == sorted([job["b"], job["c"]])
    with session_scope(settings) as session:
        assert workflow_release.sweep(session, now=utcnow()) == 0  # b and c are under way: nothing stuck
        assert session.get(Workflow, uuid.UUID(body["id"])).status == "RUNNING"


# --- tenants, roles, quotas, audit ------------------------------------------------------------


def test_workflows_belong_to_a_tenant_obey_roles_and_quotas_and_are_audited(settings: Settings) -> None:
    from common.core import apikeys
    from common.core.models import AuditRecord, Tenant
    from common.core.roles import Role

    secure = replace(settings, auth_enabled=True)
    with session_scope(secure) as session:
        keys = {
            (tenant, role): {"Authorization": "Bearer " + apikeys.create_key(
                session, tenant=tenant, role=Role.parse(role), name=f"{tenant}-{role}", created_by="test",
                keyring=None, now=utcnow()).key}
            for tenant in ("red", "blue") for role in ("viewer", "writer")
        }
    app = create_app(secure)
    client = app.test_client()
    try:
        made = client.post("/api/workflows", json=workflow_body(DIAMOND), headers=keys[("red", "writer")])
        assert made.status_code == 201 and made.get_json()["tenant"] == "red"
        workflow_id = made.get_json()["id"]
        assert client.post("/api/workflows", json=workflow_body(DIAMOND),
                           headers=keys[("red", "viewer")]).status_code == 403
        shell = client.post("/api/workflows", json=workflow_body([task("a", type="shell", payload={"argv": ["true"]})]),
                            headers=keys[("red", "writer")])
        assert shell.status_code in (403, 422)  # admins only, where shell is enabled at all
        # Another tenant sees nothing of it, even by id.
        blue = keys[("blue", "writer")]
        assert client.get(f"/api/workflows/{workflow_id}", headers=blue).status_code == 404
        assert client.delete(f"/api/workflows/{workflow_id}", headers=blue).status_code == 404
        assert client.post(f"/api/workflows/{workflow_id}/rerun", headers=blue).status_code == 404
        assert client.get("/api/workflows", headers=blue).get_json()["items"] == []
        assert client.get(f"/api/jobs?workflow_id={workflow_id}", headers=blue).get_json()["items"] == []
        assert client.get(f"/api/workflows/{workflow_id}", headers=keys[("red", "viewer")]).status_code == 200
        # Each task counts against the tenant's limit of unfinished jobs: 4 pending, limit 6.
        with session_scope(secure) as session:
            session.merge(Tenant(name="red", signing_secret="s", max_pending_jobs=6))
        app.extensions["chronoq"].quotas.forget("red")
        refused = client.post("/api/workflows", json=workflow_body(DIAMOND), headers=keys[("red", "writer")])
        assert refused.status_code == 429, refused.get_data(as_text=True)
        assert client.delete(f"/api/workflows/{workflow_id}", headers=keys[("red", "writer")]).status_code == 200
    finally:
        app.extensions["chronoq"].close()
    with session_scope(secure) as session:
        actions = {(a.action, a.outcome) for a in session.scalars(sa.select(AuditRecord).where(AuditRecord.tenant == "red"))}
    assert {("workflows.create", 201), ("workflows.cancel", 200)} <= actions
    assert any(outcome == 403 for _, outcome in actions)  # the viewer's refused create is on record too


def test_the_scanner_releases_and_dispatches_a_stuck_workflows_tasks(kafka_client: FlaskClient,
                                                                     kafka_settings: Settings) -> None:
    from scheduler_service.scanner import Scanner

    body = create(kafka_client, DIAMOND, execute_at=utcnow().isoformat())  # a: dispatched by the API
    job = ids(body)
    with session_scope(kafka_settings) as session:  # a's end written as if no release ran with it
        session.execute(sa.update(Job).where(Job.id == job["a"]).values(status="SUCCESS", finished_at=utcnow()))
    scanner = Scanner(kafka_settings, threading.Event())
    try:
        result = scanner.scan(utcnow())
    finally:
        scanner.producer.close()
    assert result.published == 2
    now = statuses(kafka_client, body["id"])
    assert (now["b"], now["c"], now["d"]) == ("QUEUED", "QUEUED", "WAITING")
    records = read_topic(kafka_settings, kafka_settings.topic_jobs, expect=3)
    assert {decode_dispatch(r.value).job_id for r in records} == {job["a"], job["b"], job["c"]}
