"""``chronoq jobs …`` and ``chronoq schedules …`` against the real API (served over HTTP as in
tests/integration/test_client.py): output for people and ``--json`` parsed back, the exit codes,
``watch`` and ``wait``, ``import`` with failing lines, and one run of the installed entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from chronoq import cli as client_cli
from chronoq.client import Jobs
from common.launch.cli import main
from tests.integration import test_client
from tests.integration.test_client import System, names, serve, set_status

system = test_client.system  # the same module-scoped API fixture

CHRONOQ = Path(sys.executable).with_name("chronoq")


def run(capsys: pytest.CaptureFixture[str], system: System, *argv: str, token: str | None = None
        ) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``chronoq ARGV`` against ``system``."""
    code = main([*argv, "--url", system.url, "--token", token or system.admin])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], system: System, *argv: str) -> Any:
    code, out, err = run(capsys, system, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_jobs_commands_print_tables_and_json(capsys: pytest.CaptureFixture[str], system: System) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    job = run_json(capsys, system, "jobs", "create", "--name", name, "--type", "noop", "--in", "3600",
                   "--payload", '{"n": 1}', "--metadata", "team=ops", "--priority", "4")
    assert job["status"] == "SCHEDULED" and job["payload"] == {"n": 1} and job["metadata"] == {"team": "ops"}

    code, out, _ = run(capsys, system, "jobs", "get", job["id"])
    assert code == 0 and "id:" in out and job["id"] in out and "SCHEDULED" in out
    code, out, err = run(capsys, system, "jobs", "list", "--name", name, "--status", "scheduled,queued")
    assert code == 0 and out.splitlines()[0].split() == list(client_cli.JOB_COLUMNS)
    assert job["id"] in out.splitlines()[1] and "0/4" in out
    page = run_json(capsys, system, "jobs", "list", "--name", name, "--metadata", "team=ops")
    assert [j["id"] for j in page["items"]] == [job["id"]] and page["next_cursor"] is None
    assert run_json(capsys, system, "jobs", "attempts", job["id"]) == []
    assert run_json(capsys, system, "jobs", "trigger", job["id"])["original_execute_at"]
    assert run_json(capsys, system, "jobs", "cancel", job["id"])["status"] == "CANCELLED"
    assert run_json(capsys, system, "jobs", "rerun", job["id"])["runs"] == 2
    assert run_json(capsys, system, "jobs", "stats")["total"] >= 1

    for i in range(3):
        run_json(capsys, system, "jobs", "create", "--name", f"{name}-p", "--type", "noop", "--in", str(3600 + i))
    code, out, err = run(capsys, system, "jobs", "list", "--name", f"{name}-p", "--limit", "2")
    assert code == 0 and len(out.splitlines()) == 3 and "--cursor" in err
    every = run_json(capsys, system, "jobs", "list", "--name", f"{name}-p", "--limit", "2", "--all")
    assert len(every["items"]) == 3 and len({j["id"] for j in every["items"]}) == 3


def test_exit_codes_say_what_happened(capsys: pytest.CaptureFixture[str], system: System) -> None:
    code, _, err = run(capsys, system, "jobs", "get", str(uuid.uuid4()))
    assert code == client_cli.EXIT_NOT_FOUND and "404" in err

    job = run_json(capsys, system, "jobs", "create", "--name", "x", "--type", "noop", "--in", "3600")
    run_json(capsys, system, "jobs", "cancel", job["id"])
    code, _, err = run(capsys, system, "jobs", "cancel", job["id"])
    assert code == client_cli.EXIT_CONFLICT and "CANCELLED" in err
    code, _, err = run(capsys, system, "jobs", "trigger", job["id"])
    assert code == client_cli.EXIT_CONFLICT and "status: is CANCELLED" in err  # the field error is shown

    code, _, err = run(capsys, system, "jobs", "create", "--name", "x", "--type", "noop", "--at", "yesterday")
    assert code == client_cli.EXIT_USAGE and "execute_at: Not a valid" in err
    code, _, err = run(capsys, system, "jobs", "create", "--name", "x", "--type", "noop", "--payload", "{nope")
    assert code == client_cli.EXIT_USAGE and "--payload is not valid JSON" in err
    with pytest.raises(SystemExit) as usage:
        main(["jobs", "create", "--type", "noop"])  # argparse: --name is required
    assert usage.value.code == client_cli.EXIT_USAGE

    code, _, err = run(capsys, system, "jobs", "list", token="cq_wrong")
    assert code == client_cli.EXIT_AUTH and "401" in err
    code, _, err = run(capsys, system, "jobs", "create", "--name", "x", "--type", "noop", token=system.viewer)
    assert code == client_cli.EXIT_AUTH and "403" in err
    code = main(["jobs", "list", "--url", "http://127.0.0.1:1", "--retries", "0"])
    assert code == client_cli.EXIT_UNAVAILABLE and "127.0.0.1:1" in capsys.readouterr().err


def test_wait_and_watch_end_with_the_job(capsys: pytest.CaptureFixture[str], system: System,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    job = run_json(capsys, system, "jobs", "create", "--name", "watched", "--type", "noop", "--in", "3600")
    # watch reads the job, opens the stream, then reads the job again (a change made before the
    # stream opened is not missed). The changes below are made after that second read, so that
    # they can only arrive as events: made between the stream's opening and that read, watch
    # would see FAILED in the read and end without a RUNNING line.
    reads: list[str] = []
    read_again = threading.Event()
    get = Jobs.get

    def counted(self: Jobs, job_id: str) -> Any:
        found = get(self, job_id)
        reads.append(job_id)
        if len(reads) == 2:
            read_again.set()
        return found

    monkeypatch.setattr(Jobs, "get", counted)

    def run_it() -> None:  # once watch follows the API's event stream
        assert read_again.wait(20), "watch did not read the job again once its stream was open"
        set_status(system.settings, job["id"], "RUNNING")
        set_status(system.settings, job["id"], "FAILED")

    worker = threading.Thread(target=run_it, daemon=True)
    worker.start()
    code, out, err = run(capsys, system, "jobs", "watch", job["id"], "--json")
    worker.join(20)
    changes = [json.loads(line) for line in out.splitlines()]
    assert code == client_cli.EXIT_FAILED, err
    assert [(c["previous_status"], c["status"]) for c in changes] == [
        (None, "SCHEDULED"), ("SCHEDULED", "RUNNING"), ("RUNNING", "FAILED")]
    assert {c["job_id"] for c in changes} == {job["id"]} and all(c.get("event_id") for c in changes[1:])

    code, out, _ = run(capsys, system, "jobs", "wait", job["id"])
    assert code == client_cli.EXIT_FAILED and "FAILED" in out
    ok = run_json(capsys, system, "jobs", "create", "--name", "ok", "--type", "noop", "--in", "3600")
    threading.Timer(0.2, set_status, (system.settings, ok["id"], "SUCCESS")).start()
    code, out, _ = run(capsys, system, "jobs", "wait", ok["id"], "--json")
    assert code == client_cli.EXIT_OK and json.loads(out)["status"] == "SUCCESS"
    pending = run_json(capsys, system, "jobs", "create", "--name", "pending", "--type", "noop", "--in", "3600")
    code, _, err = run(capsys, system, "jobs", "wait", pending["id"], "--wait-timeout", "0.2")
    assert code == client_cli.EXIT_TIMEOUT and "still SCHEDULED" in err


def test_watch_polls_an_api_without_an_event_stream(capsys: pytest.CaptureFixture[str], system: System) -> None:
    def older_api(environ: dict[str, Any], start_response: Any) -> Any:  # the API before /api/events
        if environ["PATH_INFO"] == "/api/events":
            start_response("404 NOT FOUND", [("Content-Type", "application/json")])
            return [b'{"code": 404, "status": "Not Found", "message": "Not Found"}']
        return system.app(environ, start_response)

    server, thread = serve(older_api)
    job = run_json(capsys, system, "jobs", "create", "--name", "polled", "--type", "noop", "--in", "3600")
    steps = [threading.Timer(0.3, set_status, (system.settings, job["id"], "RUNNING")),
             threading.Timer(0.6, set_status, (system.settings, job["id"], "SUCCESS"))]
    for step in steps:
        step.start()
    try:
        code = main(["jobs", "watch", job["id"], "--poll", "0.1", "--url", f"http://127.0.0.1:{server.server_port}",
                     "--token", system.admin])
        out, err = capsys.readouterr()
    finally:
        for step in steps:
            step.join()
        server.shutdown()
        thread.join(10)
    lines = out.splitlines()
    assert code == client_cli.EXIT_OK, err
    assert "SCHEDULED" in lines[0] and lines[-1].endswith("-> SUCCESS") and job["id"] in lines[-1]


def test_import_reports_failed_lines_and_is_safe_to_repeat(capsys: pytest.CaptureFixture[str], system: System,
                                                           tmp_path: Path) -> None:
    name = f"imported-{uuid.uuid4().hex[:6]}"
    good = json.dumps({"name": name, "type": "noop", "delay_seconds": 3600})
    lines = [good, good, "# a comment", json.dumps({"name": name, "type": "noop", "execute_at": "soon"}),
             "{not json", "", good, json.dumps({"name": name, "type": "nope", "delay_seconds": 1})]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")

    code, out, err = run(capsys, system, "jobs", "import", str(path), "--chunk", "2")
    assert code == client_cli.EXIT_FAILED, err
    assert "6 jobs: 3 created, 0 already there, 3 failed" in out
    assert "line 4: 422 execute_at: Not a valid" in out and "line 5: not valid JSON" in out
    assert "line 8: 422 type: unknown job type 'nope'" in out
    assert names(system.settings, name) == 3

    code, out, _ = run(capsys, system, "jobs", "import", str(path), "--json", "--no-progress")
    summary = json.loads(out)
    assert code == client_cli.EXIT_FAILED
    assert (summary["created"], summary["existing"], summary["failed"]) == (0, 3, 3)  # the same file: no new jobs
    assert [f["line"] for f in summary["failures"]] == [4, 5, 8] and "execute_at" in summary["failures"][0]["errors"]
    assert names(system.settings, name) == 3


def test_schedule_commands(capsys: pytest.CaptureFixture[str], system: System) -> None:
    created = run_json(capsys, system, "schedules", "create", "--name", "cli-nightly", "--cron", "30 2 * * *",
                       "--timezone", "Europe/Berlin", "--job-type", "noop", "--job-name", "export")
    assert created["cron"] == "30 2 * * *" and created["job"]["name"] == "export"
    code, out, _ = run(capsys, system, "schedules", "list", "--name", "cli-nightly")
    assert code == 0 and created["id"] in out and "Europe/Berlin" in out
    times = run_json(capsys, system, "schedules", "preview", created["id"], "--count", "3")["items"]
    assert len(times) == 3 and times[0]["local"].endswith(("+01:00", "+02:00"))
    draft = run_json(capsys, system, "schedules", "preview", "--cron", "30 2 * * *", "--timezone", "Europe/Berlin",
                     "--start", "2027-03-27T00:00:00+01:00", "--count", "2")["items"]
    assert "DST" in draft[1]["note"]
    assert run_json(capsys, system, "schedules", "pause", created["id"])["paused"] is True
    assert run_json(capsys, system, "schedules", "list", "--paused")["items"][0]["id"] == created["id"]
    assert run_json(capsys, system, "schedules", "resume", created["id"])["paused"] is False
    assert run_json(capsys, system, "schedules", "get", created["id"])["on_time"] is not None
    code, _, err = run(capsys, system, "schedules", "create", "--cron", "30 2 * * *")
    assert code == client_cli.EXIT_USAGE and "--job" in err
    assert run_json(capsys, system, "schedules", "delete", created["id"]) == {"deleted": created["id"]}
    code, _, _ = run(capsys, system, "schedules", "get", created["id"])
    assert code == client_cli.EXIT_NOT_FOUND


def test_the_installed_command_reads_url_and_token_from_the_environment(system: System) -> None:
    env = {**os.environ, "CHRONOQ_URL": system.url, "CHRONOQ_TOKEN": system.admin}
    made = subprocess.run([str(CHRONOQ), "jobs", "create", "--name", "entry-point", "--type", "noop", "--in", "3600",
                           "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    job = json.loads(made.stdout)
    missing = subprocess.run([str(CHRONOQ), "jobs", "get", job["id"]], env={**env, "CHRONOQ_TOKEN": ""},
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == client_cli.EXIT_AUTH and "401" in missing.stderr
