"""Workflows through the Python client (``client.workflows``) and the CLI (``chronoq workflows …``)
against the real API, served over HTTP with authentication on as in
tests/integration/test_client.py. No executor runs here: the tasks stay WAITING or SCHEDULED, so
``wait`` is tested on workflows that are cancelled or settled by hand (whole runs are the e2e
tests' business)."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from chronoq import cli as client_cli
from chronoq import client as client_module
from chronoq import errors
from chronoq.client import Client
from common.infra.db import get_engine
from tests.helpers import wait_for
from tests.integration import test_client
from tests.integration.test_cli_client import run, run_json
from tests.integration.test_client import DroppingProxy, System, serve

system = test_client.system  # the same module-scoped API fixture
proxy = test_client.proxy

KEYS = ["export", "upload", "alert", "cleanup"]


def definition(name: str, **extra: Any) -> dict[str, Any]:
    """A diamond of four noop tasks, due in an hour: only ``export`` can be SCHEDULED."""
    return {"name": name, "delay_seconds": 3600, "metadata": {"team": "ops"}, "tasks": [
        {"key": "export", "type": "noop", "payload": {"n": 1}},
        {"key": "upload", "type": "noop", "depends_on": ["export"],
         "run_if": {"path": "tasks.export.output.rows", "op": "gt", "value": 0}},
        {"key": "alert", "type": "noop", "depends_on": ["export"], "run_if": "failure"},
        {"key": "cleanup", "type": "noop", "depends_on": ["upload", "alert"], "run_if": "always",
         "allow_failure": True},
    ], **extra}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def settle_by_hand(system: System, workflow_id: str, status: str) -> None:
    """What the scanner's sweep may do: change the workflow's own row, with no task event."""
    with get_engine(system.settings).begin() as conn:
        conn.execute(sa.text("UPDATE workflows SET status = :status, finished_at = now() WHERE id = :id"),
                     {"status": status, "id": workflow_id})


# --- the client ---------------------------------------------------------------------------


def test_create_get_and_a_repeated_create(system: System) -> None:
    client = system.client()
    name = unique("wf")
    made = client.workflows.create(definition(name), idempotency_key=f"key-{name}")
    assert made.status == "RUNNING" and not made.finished and made.metadata == {"team": "ops"}
    assert [t.key for t in made.tasks] == KEYS
    assert [t.status for t in made.tasks] == ["SCHEDULED", "WAITING", "WAITING", "WAITING"]
    export, upload, _alert, cleanup = made.tasks
    assert export.name == f"{name}.export" and export.type == "noop" and export.depends_on == []
    assert upload.run_if == {"path": "tasks.export.output.rows", "op": "gt", "value": 0}
    assert cleanup.depends_on == ["upload", "alert"] and cleanup.run_if == "always" and cleanup.allow_failure
    assert made.execute_at is not None and made.created_at is not None and made.finished_at is None

    got = client.workflows.get(made.id)
    assert (got.id, [t.id for t in got.tasks]) == (made.id, [t.id for t in made.tasks])
    assert got.task("alert").run_if == "failure" and got.task("export").execute_at == export.execute_at

    again = client.workflows.create(definition(name), idempotency_key=f"key-{name}")
    assert again.id == made.id and [t.id for t in again.tasks] == [t.id for t in made.tasks]
    assert [w.id for w in client.workflows.list(name=name).items] == [made.id]

    jobs = client.jobs.list(workflow_id=made.id).items
    assert sorted(j.task_key for j in jobs) == sorted(KEYS) and {j.workflow_id for j in jobs} == {made.id}
    assert client.jobs.get(export.id).task_key == "export"
    with pytest.raises(errors.NotFound) as missing:
        client.workflows.get(str(uuid.uuid4()))
    assert missing.value.status == 404


def test_a_create_whose_answer_was_lost_is_retried_and_makes_one_workflow(system: System,
                                                                         proxy: DroppingProxy) -> None:
    name = unique("wf-lost")
    client = system.client(url=proxy.url, retries=2)
    client._sleep = lambda _seconds: None  # the pauses are not what this test is about
    proxy.drops = 1
    made = client.workflows.create(definition(name))  # no key given: the client makes one per call
    assert proxy.dropped == 1 and proxy.connections == 2  # the first answer was lost; sent again
    assert [w.id for w in system.client().workflows.list(name=name).items] == [made.id]


def test_an_invalid_definition_is_unprocessable_with_the_field_errors(system: System) -> None:
    client = system.client()
    bad = definition(unique("wf-bad"))
    bad["tasks"][1] = {**bad["tasks"][1], "key": "1-not-a-key"}
    with pytest.raises(errors.Unprocessable) as invalid:
        client.workflows.create(bad)
    fields = dict(invalid.value.field_errors())
    assert invalid.value.status == 422 and "1-not-a-key" in fields.get("tasks.1.key", ""), fields
    assert "tasks.1.key" in str(invalid.value)
    with pytest.raises(errors.Forbidden):
        system.client(token=system.viewer).workflows.create(definition(unique("wf-viewer")))


def test_list_pages_newest_first_with_task_counts(system: System) -> None:
    client = system.client()
    name = unique("wf-page")
    made = [client.workflows.create(definition(name)) for _ in range(3)]
    first = client.workflows.list(name=name, limit=2)
    second = client.workflows.list(name=name, limit=2, cursor=first.next_cursor)
    assert [w.id for w in first.items + second.items] == [w.id for w in reversed(made)]
    assert first.next_cursor and second.next_cursor is None
    assert first.items[0].task_counts == {"SCHEDULED": 1, "WAITING": 3} and first.items[0].tasks == []
    assert [w.id for w in client.workflows.iter_all(name=name, page_size=2)] == [w.id for w in reversed(made)]

    client.workflows.cancel(made[0].id)
    assert [w.id for w in client.workflows.list(name=name, status="CANCELLED").items] == [made[0].id]
    assert [w.id for w in client.workflows.list(name=name, status=["RUNNING"]).items] == [
        made[2].id, made[1].id]


def test_cancel_then_conflicts_and_rerun(system: System) -> None:
    client = system.client()
    made = client.workflows.create(definition(unique("wf-cancel")))
    with pytest.raises(errors.Conflict) as running:
        client.workflows.rerun(made.id)  # only a FAILED or CANCELLED workflow is rerun
    assert running.value.status == 409 and "RUNNING" in running.value.message

    cancelled = client.workflows.cancel(made.id)
    assert cancelled.status == "CANCELLED" and cancelled.finished
    assert [t.status for t in cancelled.tasks] == ["CANCELLED"] * 4
    with pytest.raises(errors.Conflict) as again:
        client.workflows.cancel(made.id)
    assert again.value.status == 409 and "CANCELLED" in again.value.message
    assert client.workflows.wait(made.id, timeout=5).status == "CANCELLED"  # ended already: at once

    rerun = client.workflows.rerun(made.id)
    assert rerun.status == "RUNNING" and rerun.runs == 2
    assert rerun.task("export").status in ("SCHEDULED", "QUEUED")  # no dependency: due again now
    assert [t.status for t in rerun.tasks[1:]] == ["WAITING"] * 3
    client.workflows.cancel(made.id)  # nothing of it should run later


def test_a_cancel_retried_after_its_answer_was_lost_returns_the_cancelled_workflow(system: System,
                                                                                    proxy: DroppingProxy) -> None:
    made = system.client().workflows.create(definition(unique("wf-cancel-once")))
    client = system.client(url=proxy.url, retries=2)
    client._sleep = lambda _seconds: None
    proxy.drops = 1
    assert client.workflows.cancel(made.id).status == "CANCELLED"
    assert proxy.dropped == 1


def test_wait_follows_the_event_stream(system: System) -> None:
    client = system.client()
    made = client.workflows.create(definition(unique("wf-wait")))
    reads: list[str] = []
    read = client.workflows.get

    def counted(workflow_id: str) -> Any:
        reads.append(workflow_id)
        return read(workflow_id)

    client.workflows.get = counted  # type: ignore[method-assign]

    def cancel_once_followed() -> None:  # the stream is open and the workflow read again on it
        wait_for(lambda: system.open_streams() >= 1 and len(reads) >= 2, timeout=10, what="wait to follow the stream")
        system.client().workflows.cancel(made.id)

    canceller = threading.Thread(target=cancel_once_followed, daemon=True)
    canceller.start()
    started = time.monotonic()
    ended = client.workflows.wait(made.id, timeout=20)
    canceller.join(10)
    # Seen through a task's change: the stream is not opened again for WORKFLOW_RECHECK (30 s).
    assert ended.status == "CANCELLED" and time.monotonic() - started < 10
    assert len(reads) >= 3  # the first read, the one when the stream opened, the one(s) a task's change caused

    pending = client.workflows.create(definition(unique("wf-pending")))
    started = time.monotonic()
    with pytest.raises(errors.WaitTimeout) as gave_up:
        client.workflows.wait(pending.id, timeout=0.5)
    assert gave_up.value.job.status == "RUNNING" and gave_up.value.job.id == pending.id
    assert time.monotonic() - started < 3  # the stream's keep-alive is 0.5 s here
    client.workflows.cancel(pending.id)


def test_wait_reads_again_a_workflow_settled_without_a_task_event(system: System,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "WORKFLOW_RECHECK", 0.5)
    client = system.client()
    made = client.workflows.create(definition(unique("wf-sweep")))
    timer = threading.Timer(0.3, settle_by_hand, (system, made.id, "SUCCESS"))
    timer.start()
    try:
        assert client.workflows.wait(made.id, timeout=10).status == "SUCCESS"
    finally:
        timer.join()


def test_wait_polls_an_api_without_an_event_stream(system: System) -> None:
    def older_api(environ: dict[str, Any], start_response: Any) -> Any:  # the API before /api/events
        if environ["PATH_INFO"] == "/api/events":
            start_response("404 NOT FOUND", [("Content-Type", "application/json")])
            return [b'{"code": 404, "status": "Not Found", "message": "Not Found"}']
        return system.app(environ, start_response)

    server, thread = serve(older_api)
    client = Client(f"http://127.0.0.1:{server.server_port}", system.admin)
    made = client.workflows.create(definition(unique("wf-polled")))
    timer = threading.Timer(0.3, lambda: system.client().workflows.cancel(made.id))
    timer.start()
    try:
        assert client.workflows.wait(made.id, timeout=10).status == "CANCELLED"
    finally:
        timer.join()
        server.shutdown()
        thread.join(10)


# --- the CLI ------------------------------------------------------------------------------


def test_workflow_commands_print_tables_and_json(capsys: pytest.CaptureFixture[str], system: System,
                                                 tmp_path: Path) -> None:
    name = unique("cli-wf")
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(definition(name)))

    code, out, err = run(capsys, system, "workflows", "create", str(path))
    assert code == client_cli.EXIT_OK, err
    workflow_id = next(line.split()[1] for line in out.splitlines() if line.startswith("id:"))
    assert "status:         RUNNING" in out and "tasks:          WAITING 3, SCHEDULED 1" in out

    code, out, err = run(capsys, system, "workflows", "get", workflow_id)
    assert code == client_cli.EXIT_OK, err
    lines = out.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("KEY")))
    assert lines[header].split() == list(client_cli.TASK_COLUMNS)
    rows = {line.split()[0]: line for line in lines[header + 1:]}
    assert list(rows) == KEYS and rows["export"].split()[1] == "SCHEDULED"
    assert "tasks.export.output.rows gt 0" in rows["upload"] and "failure" in rows["alert"]
    assert "upload, alert" in rows["cleanup"] and "always (allow_failure)" in rows["cleanup"]

    got = run_json(capsys, system, "workflows", "get", workflow_id)
    assert got["id"] == workflow_id and [t["key"] for t in got["tasks"]] == KEYS
    code, out, _ = run(capsys, system, "workflows", "list", "--name", name, "--status", "running")
    assert code == 0 and out.splitlines()[0].split() == list(client_cli.WORKFLOW_COLUMNS)
    assert workflow_id in out.splitlines()[1]
    listed = run_json(capsys, system, "workflows", "list", "--name", name, "--all")
    assert [w["id"] for w in listed["items"]] == [workflow_id] and listed["items"][0]["task_counts"]
    tasks = run_json(capsys, system, "jobs", "list", "--workflow", workflow_id)["items"]
    assert sorted(t["task_key"] for t in tasks) == sorted(KEYS)
    code, out, _ = run(capsys, system, "jobs", "get", got["tasks"][0]["id"])
    assert code == 0 and "workflow_id:" in out and "task_key:" in out and workflow_id in out

    code, _, err = run(capsys, system, "workflows", "rerun", workflow_id)
    assert code == client_cli.EXIT_CONFLICT and "is RUNNING" in err
    code, _, err = run(capsys, system, "workflows", "wait", workflow_id, "--wait-timeout", "0.3")
    assert code == client_cli.EXIT_TIMEOUT and "still RUNNING" in err
    cancelled = run_json(capsys, system, "workflows", "cancel", workflow_id)
    assert cancelled["status"] == "CANCELLED" and {t["status"] for t in cancelled["tasks"]} == {"CANCELLED"}
    code, _, err = run(capsys, system, "workflows", "cancel", workflow_id)
    assert code == client_cli.EXIT_CONFLICT and "is CANCELLED" in err
    code, out, _ = run(capsys, system, "workflows", "wait", workflow_id)
    assert code == client_cli.EXIT_FAILED and "CANCELLED" in out
    rerun = run_json(capsys, system, "workflows", "rerun", workflow_id)
    assert rerun["status"] == "RUNNING" and rerun["runs"] == 2
    run_json(capsys, system, "workflows", "cancel", workflow_id)


def test_workflow_commands_exit_codes(capsys: pytest.CaptureFixture[str], system: System, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    name = unique("cli-wf-stdin")
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(definition(name))))
    made = run_json(capsys, system, "workflows", "create", "-", "--idempotency-key", f"key-{name}")
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(definition(name))))
    assert run_json(capsys, system, "workflows", "create", "-", "--idempotency-key", f"key-{name}")["id"] == made["id"]
    settle_by_hand(system, made["id"], "SUCCESS")
    code, out, _ = run(capsys, system, "workflows", "wait", made["id"], "--json")
    assert code == client_cli.EXIT_OK and json.loads(out)["status"] == "SUCCESS"

    code, _, err = run(capsys, system, "workflows", "get", str(uuid.uuid4()))
    assert code == client_cli.EXIT_NOT_FOUND and "404" in err
    code, _, err = run(capsys, system, "workflows", "wait", str(uuid.uuid4()))
    assert code == client_cli.EXIT_NOT_FOUND
    bad = definition(name)
    bad["tasks"][1]["key"] = "1-not-a-key"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    code, _, err = run(capsys, system, "workflows", "create", str(tmp_path / "bad.json"))
    assert code == client_cli.EXIT_USAGE and "422" in err and "tasks.1.key" in err
    (tmp_path / "broken.json").write_text("{not json")
    code, _, err = run(capsys, system, "workflows", "create", str(tmp_path / "broken.json"))
    assert code == client_cli.EXIT_USAGE and "not valid JSON" in err
    code, _, err = run(capsys, system, "workflows", "create", str(tmp_path / "missing.json"))
    assert code == client_cli.EXIT_USAGE and "cannot read" in err
    code, _, err = run(capsys, system, "workflows", "list", "--status", "WAITING")
    assert code == client_cli.EXIT_USAGE and "unknown status WAITING" in err
    code, _, err = run(capsys, system, "workflows", "create", str(tmp_path / "bad.json"), token=system.viewer)
    assert code == client_cli.EXIT_AUTH and "403" in err
