"""``chronoq jobs …``, ``chronoq workflows …`` and ``chronoq schedules …``: the API from a shell, on top of
:class:`chronoq.client.Client`.

:func:`add_parsers` only declares arguments (``chronoq --help`` and the server commands stay
free of the client); :func:`run` imports the client when a client command runs. Tables for
people, ``--json`` for scripts (one JSON document, or JSON lines for ``watch``), and exit codes
that say what happened (:data:`EXIT_CODES`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from chronoq.env import DEFAULT_URL, TOKEN_ENV, URL_ENV

if TYPE_CHECKING:
    from chronoq.client import Client
    from chronoq.models import Job

COMMANDS = ("jobs", "workflows", "schedules")

EXIT_OK = 0
EXIT_FAILED = 1        # the job (workflow) ended, not SUCCESS (wait, watch, create --wait); an import had failed lines
EXIT_USAGE = 2         # bad arguments or input; the API refused the request as invalid (400, 413, 415, 422)
EXIT_UNAVAILABLE = 3   # the API could not be reached, or answered 5xx, after the safe retries
EXIT_NOT_FOUND = 4     # 404: no such job, workflow or schedule (or another tenant's)
EXIT_CONFLICT = 5      # 409: the job's (workflow's) status refuses it (cancel of a running job, rerun of a running one)
EXIT_AUTH = 6          # 401 or 403: no credential, a bad one, or a role too low
EXIT_LIMIT = 7         # 429: over a tenant's limit, still after the retries
EXIT_TIMEOUT = 8       # gave up waiting (--wait-timeout) before the job or workflow finished
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_FAILED: "the job or workflow finished FAILED, CANCELLED or SKIPPED; or an import had failed lines",
    EXIT_USAGE: "usage: bad arguments or input, or the API refused the request as invalid (400, 413, 415, 422)",
    EXIT_UNAVAILABLE: "the API could not be reached or answered 5xx (after the retries that were safe)",
    EXIT_NOT_FOUND: "404: no such job, workflow or schedule",
    EXIT_CONFLICT: "409: the job's (workflow's) status refuses it",
    EXIT_AUTH: "401/403: no credential, a bad one, or a role too low", EXIT_LIMIT: "429: over a tenant's limit",
    EXIT_TIMEOUT: "gave up waiting before the job or workflow finished", EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

STATUSES = ("WAITING", "SCHEDULED", "QUEUED", "RUNNING", "RETRYING", "SUCCESS", "FAILED", "CANCELLED", "SKIPPED")
WORKFLOW_STATUSES = ("RUNNING", "SUCCESS", "FAILED", "CANCELLED")


class UsageError(Exception):
    """A bad argument the parser could not see (unreadable file, invalid JSON)."""


# --- parsers ------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument("--url", help=f"the API ({URL_ENV}; default {DEFAULT_URL})")
    group.add_argument("--token", help=f"API key or JWT ({TOKEN_ENV}; prefer the variable: arguments show in ps)")
    group.add_argument("--json", action="store_true", help="print JSON (one document; JSON lines for watch)")
    group.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    group.add_argument("--retries", type=int, default=3,
                       help="times a request is sent again where that is safe (default 3)")
    return common


def _epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())


def add_parsers(sub: Any) -> None:
    """Add ``jobs``, ``workflows`` and ``schedules`` to the ``chronoq`` command's subparsers."""
    common = [_common()]
    fmt = argparse.RawDescriptionHelpFormatter
    jobs = sub.add_parser("jobs", help="jobs through the API: create, list, get, watch, import, …",
                          epilog=_epilog(), formatter_class=fmt).add_subparsers(dest="action", required=True,
                                                                                metavar="ACTION")

    def leaf(group: Any, name: str, help_text: str) -> argparse.ArgumentParser:
        return group.add_parser(name, help=help_text, description=help_text, parents=common, epilog=_epilog(),
                                formatter_class=fmt)

    p = leaf(jobs, "create", "create a job (due now unless --at or --in)")
    p.add_argument("--name", required=True)
    p.add_argument("--type", required=True, help="job type: http, noop, sleep, fail, shell, or one of yours")
    p.add_argument("--payload", default="{}", help="JSON object, or @FILE (default {})")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--at", help="ISO 8601 time with an offset, e.g. 2030-01-01T09:00:00Z")
    when.add_argument("--in", dest="delay", type=float, help="seconds from now (default 0)")
    p.add_argument("--max-retries", type=int)
    p.add_argument("--timeout-seconds", type=float, help="longest run of one attempt")
    p.add_argument("--priority", type=int)
    p.add_argument("--misfire-grace", type=float, help="fail instead of running when this many seconds late")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE", help="a label (repeat)")
    p.add_argument("--idempotency-key", help="repeat a create safely (default: a new key per command)")
    _wait_args(p, "then wait until the job finishes; exit code by its status")

    p = leaf(jobs, "list", "list jobs in execute_at order")
    p.add_argument("--status", action="append", default=[], help="only these statuses (repeat or comma separate)")
    p.add_argument("--type")
    p.add_argument("--name")
    p.add_argument("--schedule", help="only occurrences of this schedule id")
    p.add_argument("--workflow", help="only the tasks of this workflow id")
    p.add_argument("--after", help="only jobs due at or after this ISO 8601 time")
    p.add_argument("--before", help="only jobs due before this ISO 8601 time")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE", help="all must hold (repeat)")
    p.add_argument("--tenant", help="admins: only this tenant's")
    p.add_argument("--limit", type=int, default=50, help="jobs per page (1-500, default 50)")
    p.add_argument("--cursor", help="next_cursor of the previous page")
    p.add_argument("--all", action="store_true", help="every page")

    for name, help_text in (("get", "show a job"), ("attempts", "show a job's attempts"),
                            ("cancel", "cancel a job that has not started"),
                            ("trigger", "run a SCHEDULED or QUEUED job now"),
                            ("rerun", "run a finished job again, now")):
        p = leaf(jobs, name, help_text)
        p.add_argument("job_id", metavar="JOB_ID")
    p = leaf(jobs, "wait", "wait until a job finishes; exit code by its status")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--wait-timeout", type=float, help="give up after this many seconds (exit 8)")
    leaf(jobs, "stats", "counts by status and type")

    p = leaf(jobs, "watch", "follow job state changes as they happen (one job until it finishes, or all)")
    p.add_argument("job_id", nargs="?", metavar="JOB_ID", help="only this job, until it finishes")
    p.add_argument("--status", action="append", default=[], help="only changes to these statuses (repeat)")
    p.add_argument("--schedule", help="only occurrences of this schedule id")
    p.add_argument("--poll", type=float, default=1.0,
                   help="longest pause between polls of JOB_ID when the API has no event stream (default 1 s)")

    p = leaf(jobs, "import", "create the jobs of a JSON-lines file (one job object per line) in batches")
    p.add_argument("file", metavar="FILE.jsonl", help="one job per line, fields as for POST /api/jobs; - for stdin")
    p.add_argument("--chunk", type=int, default=1000, help="jobs per batch request (1-10000, default 1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    workflows = sub.add_parser("workflows", help="workflows (tasks run in dependency order) through the API: "
                               "create, list, get, wait, …", epilog=_epilog(),
                               formatter_class=fmt).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = leaf(workflows, "create", "create a workflow from its JSON definition (the body of POST /api/workflows)")
    p.add_argument("file", metavar="FILE.json", help="the definition: name, tasks, …; - for stdin")
    p.add_argument("--idempotency-key", help="repeat a create safely (default: a new key per command)")
    p = leaf(workflows, "list", "list workflows, newest first")
    p.add_argument("--status", action="append", default=[],
                   help=f"only these statuses ({', '.join(WORKFLOW_STATUSES)}; repeat or comma separate)")
    p.add_argument("--name")
    p.add_argument("--limit", type=int, default=50, help="workflows per page (default 50)")
    p.add_argument("--cursor", help="next_cursor of the previous page")
    p.add_argument("--all", action="store_true", help="every page")
    for name, help_text in (("get", "show a workflow and its tasks"),
                            ("cancel", "cancel a workflow: its tasks that have not started are cancelled"),
                            ("rerun", "run a FAILED or CANCELLED workflow's unfinished tasks again")):
        p = leaf(workflows, name, help_text)
        p.add_argument("workflow_id", metavar="WORKFLOW_ID")
    p = leaf(workflows, "wait", "wait until a workflow ends; exit code by its status")
    p.add_argument("workflow_id", metavar="WORKFLOW_ID")
    p.add_argument("--wait-timeout", type=float, help="give up after this many seconds (exit 8)")

    schedules = sub.add_parser("schedules", help="recurring schedules through the API: create, list, preview, …",
                               epilog=_epilog(), formatter_class=fmt).add_subparsers(dest="action", required=True,
                                                                                     metavar="ACTION")
    p = leaf(schedules, "create", "create a schedule")
    _definition_args(p)
    p = leaf(schedules, "list", "list schedules, oldest first")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--paused", action="store_true", help="only paused ones")
    state.add_argument("--active", action="store_true", help="only active ones")
    p.add_argument("--name")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor")
    p.add_argument("--all", action="store_true", help="every page")
    for name, help_text in (("get", "show a schedule with its on-time figures"), ("pause", "pause a schedule"),
                            ("resume", "resume a paused schedule"), ("delete", "delete a schedule")):
        p = leaf(schedules, name, help_text)
        p.add_argument("schedule_id", metavar="SCHEDULE_ID")
    p = leaf(schedules, "preview", "next fire times of a schedule, or of a definition not created yet")
    p.add_argument("schedule_id", nargs="?", metavar="SCHEDULE_ID", help="omit to preview the definition given")
    p.add_argument("--count", type=int, default=10)
    _definition_args(p, draft=True)


def _wait_args(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--wait", action="store_true", help=help_text)
    p.add_argument("--wait-timeout", type=float, help="give up waiting after this many seconds (exit 8)")


def _definition_args(p: argparse.ArgumentParser, draft: bool = False) -> None:
    g = p.add_argument_group("definition" + (" (to preview one not created yet)" if draft else ""))
    timing = g.add_mutually_exclusive_group(required=False)
    timing.add_argument("--cron", help="5 fields, or 6 with seconds first, e.g. '30 2 * * *'")
    timing.add_argument("--every", type=float, metavar="SECONDS", help="a fixed interval instead of --cron")
    g.add_argument("--name")
    g.add_argument("--timezone", help="IANA zone the cron is read in (default UTC)")
    g.add_argument("--start", help="no fire time before this ISO 8601 time")
    g.add_argument("--end", help="no fire time at or after this ISO 8601 time")
    g.add_argument("--overlap", choices=("allow", "skip", "queue_one"))
    g.add_argument("--catchup", choices=("skip", "latest", "all"))
    g.add_argument("--jitter", type=float, metavar="SECONDS")
    g.add_argument("--job", help="the job template: JSON object or @FILE, e.g. '{\"name\": \"x\", \"type\": \"noop\"}'")
    g.add_argument("--job-name", help="instead of --job: the template's name")
    g.add_argument("--job-type", help="instead of --job: the template's type")
    g.add_argument("--payload", help="instead of --job: the template's payload (JSON or @FILE)")
    g.add_argument("--definition", help="the whole definition as JSON or @FILE; the options above override it")


# --- running ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run a ``jobs``, ``workflows`` or ``schedules`` command; returns the exit code."""
    from chronoq import errors
    from chronoq.client import Client

    out = Output(args.json)
    _show_retries()
    try:
        client = Client(args.url, args.token, timeout=args.timeout, retries=args.retries)
    except ValueError as exc:
        out.error(f"chronoq {args.command}: {exc}")
        return EXIT_USAGE
    handler = HANDLERS[(args.command, args.action)]
    try:
        with client:
            return handler(client, args, out)
    except UsageError as exc:
        out.error(f"chronoq {args.command} {args.action}: {exc}")
        return EXIT_USAGE
    except errors.ChronoqError as exc:
        out.error(f"chronoq {args.command} {args.action}: {exc}")
        return exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _show_retries() -> None:
    """The client's retry notes ("… retrying in 0.5s") on stderr: a person waiting sees why."""
    import logging

    class ToStderr(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            print(f"chronoq: {record.getMessage()}", file=sys.stderr, flush=True)  # sys.stderr of now

    logger = logging.getLogger("chronoq.client")
    if not any(type(h).__name__ == "ToStderr" for h in logger.handlers):
        logger.addHandler(ToStderr(logging.WARNING))
        logger.setLevel(logging.WARNING)


def exit_code(exc: Exception) -> int:
    """The exit code of an error of the client."""
    from chronoq import errors

    if isinstance(exc, errors.WaitTimeout):
        return EXIT_TIMEOUT
    if isinstance(exc, errors.Unavailable):
        return EXIT_UNAVAILABLE
    if isinstance(exc, (errors.Unauthorized, errors.Forbidden)):
        return EXIT_AUTH
    if isinstance(exc, errors.NotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, errors.Conflict):
        return EXIT_CONFLICT
    if isinstance(exc, errors.RateLimited):
        return EXIT_LIMIT
    if isinstance(exc, (errors.BadRequest, errors.Unprocessable, errors.PayloadTooLarge)):
        return EXIT_USAGE
    if isinstance(exc, errors.ServerError):
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


class Output:
    """Where results go: stdout (tables, or JSON with ``--json``); messages go to stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def result(self, value: Any, human: Callable[[], str]) -> None:
        from chronoq.output import to_json

        print(to_json(value) if self.as_json else human(), flush=True)

    def line(self, document: Any, human: str) -> None:
        print(json.dumps(document, ensure_ascii=False, default=str) if self.as_json else human, flush=True)

    def error(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def _json_arg(raw: str | None, what: str) -> Any:
    """A JSON argument, or the JSON in @FILE (@- for stdin)."""
    if raw is None:
        return None
    text = raw
    if raw.startswith("@"):
        try:
            text = sys.stdin.read() if raw == "@-" else Path(raw[1:]).read_text()
        except OSError as exc:
            raise UsageError(f"{what}: cannot read {raw[1:]}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None


def _pairs(items: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} {item!r} is not KEY=VALUE")
        pairs[key] = value
    return pairs


def _statuses(items: list[str], known: tuple[str, ...] = STATUSES) -> list[str]:
    statuses = [part.strip().upper() for item in items for part in item.split(",") if part.strip()]
    unknown = [s for s in statuses if s not in known]
    if unknown:
        raise UsageError(f"unknown status {', '.join(unknown)}; one of {', '.join(known)}")
    return statuses


# --- jobs ---------------------------------------------------------------------------------

JOB_COLUMNS = ("ID", "NAME", "TYPE", "STATUS", "EXECUTE_AT", "ATTEMPTS")


def _job_row(job: "Job") -> tuple[Any, ...]:
    return (job.id, job.name, job.type, job.status, job.execute_at, f"{job.attempts}/{job.max_retries + 1}")


def _job_block(job: "Job") -> str:
    from chronoq.output import block

    return block([
        ("id", job.id), ("name", job.name), ("type", job.type), ("status", job.status), ("tenant", job.tenant),
        ("execute_at", job.execute_at), ("original_execute_at", job.original_execute_at),
        ("attempts", f"{job.attempts} (max_retries {job.max_retries}, runs {job.runs})"),
        ("priority", job.priority), ("timeout_seconds", job.timeout_seconds), ("payload", job.payload),
        ("metadata", job.metadata or None), ("schedule_id", job.schedule_id), ("workflow_id", job.workflow_id),
        ("task_key", job.task_key), ("created_at", job.created_at),
        ("started_at", job.started_at), ("finished_at", job.finished_at), ("next_attempt_at", job.next_attempt_at),
        ("executor", job.executor), ("output", job.output), ("error", job.error),
    ])


def _finished_code(job: "Job") -> int:
    return EXIT_OK if job.status == "SUCCESS" else EXIT_FAILED


def _show_job(out: Output, job: "Job") -> None:
    out.result(job, lambda: _job_block(job))


def jobs_create(client: "Client", args: argparse.Namespace, out: Output) -> int:
    payload = _json_arg(args.payload, "--payload")
    if not isinstance(payload, dict):
        raise UsageError("--payload must be a JSON object")
    job = client.jobs.create(
        args.name, args.type, payload=payload, execute_at=args.at,
        delay_seconds=None if args.at else (args.delay if args.delay is not None else 0.0),
        max_retries=args.max_retries, timeout_seconds=args.timeout_seconds, priority=args.priority,
        misfire_grace_seconds=args.misfire_grace, metadata=_pairs(args.metadata, "--metadata") or None,
        idempotency_key=args.idempotency_key,
    )
    if not args.wait:
        _show_job(out, job)
        return EXIT_OK
    if not out.as_json:
        from chronoq.output import when

        out.note(f"created job {job.id} ({job.status}, due {when(job.execute_at)}); waiting")
    job = client.wait(job.id, args.wait_timeout)
    _show_job(out, job)
    return _finished_code(job)


def jobs_list(client: "Client", args: argparse.Namespace, out: Output) -> int:
    filters = dict(status=_statuses(args.status) or None, type=args.type, name=args.name, schedule_id=args.schedule,
                   workflow_id=args.workflow, execute_after=args.after, execute_before=args.before,
                   metadata=_pairs(args.metadata, "--metadata") or None, tenant=args.tenant)
    return _list(client.jobs, args, out, JOB_COLUMNS, _job_row, **filters)


def _list(resource: Any, args: argparse.Namespace, out: Output, columns: Any, row: Callable[[Any], Any],
          **filters: Any) -> int:
    """A list command: one page (``--limit``, ``--cursor``) or, with ``--all``, every page of
    ``resource``'s list (``client.jobs``, ``.workflows``, ``.schedules``), as a table or JSON."""
    from chronoq.output import table

    if args.all:
        items, cursor = list(resource.iter_all(page_size=min(max(args.limit, 1), 500), **filters)), None
        raw = {"items": [dict(item.raw) for item in items], "next_cursor": None}
    else:
        page = resource.list(limit=args.limit, cursor=args.cursor, **filters)
        items, cursor, raw = page.items, page.next_cursor, dict(page.raw)
    out.result(raw, lambda: table(columns, [row(item) for item in items]))
    if cursor and not out.as_json:
        out.note(f"more: --cursor {cursor} (or --all)")
    return EXIT_OK


def jobs_get(client: "Client", args: argparse.Namespace, out: Output) -> int:
    _show_job(out, client.jobs.get(args.job_id))
    return EXIT_OK


def jobs_attempts(client: "Client", args: argparse.Namespace, out: Output) -> int:
    from chronoq.output import table

    attempts = client.jobs.attempts(args.job_id)
    out.result(attempts, lambda: table(
        ("ATTEMPT", "STATUS", "STARTED_AT", "FINISHED_AT", "EXECUTOR", "ERROR"),
        [(a.attempt, a.status, a.started_at, a.finished_at, a.executor, a.error) for a in attempts]))
    return EXIT_OK


def jobs_cancel(client: "Client", args: argparse.Namespace, out: Output) -> int:
    _show_job(out, client.jobs.cancel(args.job_id))
    return EXIT_OK


def jobs_trigger(client: "Client", args: argparse.Namespace, out: Output) -> int:
    _show_job(out, client.jobs.trigger(args.job_id))
    return EXIT_OK


def jobs_rerun(client: "Client", args: argparse.Namespace, out: Output) -> int:
    _show_job(out, client.jobs.rerun(args.job_id))
    return EXIT_OK


def jobs_wait(client: "Client", args: argparse.Namespace, out: Output) -> int:
    job = client.wait(args.job_id, args.wait_timeout)
    _show_job(out, job)
    return _finished_code(job)


def jobs_stats(client: "Client", args: argparse.Namespace, out: Output) -> int:
    from chronoq.output import block

    stats = client.jobs.stats()
    out.result(stats, lambda: block([("total", stats.total), ("overdue", stats.overdue)]
                                    + [(status, n) for status, n in stats.by_status.items()]
                                    + [(f"type {name}", n) for name, n in stats.by_type.items()]))
    return EXIT_OK


class _Finished(Exception):
    """The watched job is finished (seen when a stream opened)."""

    def __init__(self, job: "Job") -> None:
        self.job = job


def _change_line(change: dict[str, Any]) -> str:
    from chronoq.models import parse_time
    from chronoq.output import when

    attempt = f" (attempt {change['attempt']})" if change.get("attempt") else ""
    before = f"{change['previous_status']} -> " if change.get("previous_status") else ""
    return (f"{when(parse_time(change.get('at')))}  {change.get('job_id')}  {change.get('name') or '-'}  "
            f"{before}{change.get('status')}{attempt}")


def _state(job: "Job", previous: str | None) -> dict[str, Any]:
    """A job's state in the shape of an event's data (what watch prints when it polls)."""
    return {"id": None, "job_id": job.id, "status": job.status, "previous_status": previous,
            "at": job.raw.get("updated_at"), "attempt": job.attempts, "schedule_id": job.schedule_id,
            "name": job.name, "type": job.type, "tenant": job.tenant}


def jobs_watch(client: "Client", args: argparse.Namespace, out: Output) -> int:
    from chronoq import errors

    statuses = _statuses(args.status)
    if args.job_id is None:
        try:
            for event in client.events(schedule_id=args.schedule, status=statuses or None):
                out.line(dict(event.raw), _change_line(dict(event.raw)))
        except errors.NotFound:
            raise errors.Unavailable("this API has no event stream (GET /api/events); give a JOB_ID to follow "
                                     "one job by polling") from None
        return EXIT_OK
    job = client.jobs.get(args.job_id)
    out.line(_state(job, None), _change_line(_state(job, None)))
    if job.finished:
        return _finished_code(job)
    seen = job.status

    def reread() -> None:  # each time a stream opens: a change made before it is not missed
        nonlocal seen
        now = client.jobs.get(args.job_id)
        if now.status != seen:
            out.line(_state(now, seen), _change_line(_state(now, seen)))
            seen = now.status
        if now.finished:
            raise _Finished(now)

    try:
        for event in client.events(job_id=args.job_id, on_open=reread):
            change = dict(event.raw)
            if statuses and event.status not in statuses and event.status not in ("SUCCESS", "FAILED", "CANCELLED",
                                                                                   "SKIPPED"):
                continue
            out.line(change, _change_line(change))
            seen = event.status
            if event.status in ("SUCCESS", "FAILED", "CANCELLED", "SKIPPED"):
                return EXIT_OK if event.status == "SUCCESS" else EXIT_FAILED
        return EXIT_OK  # not reached: the stream is followed until the job finishes
    except _Finished as done:
        return _finished_code(done.job)
    except errors.NotFound:
        pass  # no event stream on this API: poll
    return _poll(client, args, out, seen, statuses)


def _poll(client: "Client", args: argparse.Namespace, out: Output, seen: str, statuses: list[str]) -> int:
    from common.infra.retry import exponential_delay

    polls = 0
    while True:
        polls += 1
        time.sleep(exponential_delay(polls, base=0.1, cap=max(args.poll, 0.1)))
        job = client.jobs.get(args.job_id)
        if job.status != seen:
            if not statuses or job.status in statuses or job.finished:
                out.line(_state(job, seen), _change_line(_state(job, seen)))
            seen, polls = job.status, 0
        if job.finished:
            return _finished_code(job)


def jobs_import(client: "Client", args: argparse.Namespace, out: Output) -> int:
    from tqdm import tqdm

    from chronoq import errors, importer

    if not 1 <= args.chunk <= 10_000:
        raise UsageError("--chunk must be 1-10000 (the batch endpoint takes at most 10,000 jobs)")
    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    lines, bad = importer.read_lines(raw)
    summary = importer.Summary(lines=len(lines) + len(bad), failures=list(bad))
    done = 0
    bar = tqdm(total=len(lines), unit="job", file=sys.stderr, disable=True if args.no_progress else None,
               desc="import")
    try:
        pending = list(importer.chunks(lines, args.chunk))
        while pending:
            chunk = pending.pop(0)
            try:
                result = client.jobs.create_batch([line.job for line in chunk])
            except errors.PayloadTooLarge:
                if len(chunk) == 1:
                    raise
                half = len(chunk) // 2  # the tenant's max_batch_jobs is lower: halve and go on
                pending[:0] = [chunk[:half], chunk[half:]]
                continue
            importer.count(summary, chunk, result.items)
            done += len(chunk)
            bar.update(len(chunk))
    except errors.ChronoqError as exc:
        bar.close()
        out.error(f"chronoq jobs import: stopped after {done} of {len(lines)} jobs: {exc}")
        _import_summary(out, summary)
        return exit_code(exc)
    bar.close()
    _import_summary(out, summary)
    return EXIT_FAILED if summary.failures else EXIT_OK


def _import_summary(out: Output, summary: Any) -> None:
    document = summary.as_json()
    if out.as_json:
        print(json.dumps(document, ensure_ascii=False), flush=True)
        return
    print(f"{summary.lines} jobs: {summary.created} created, {summary.existing} already there, "
          f"{summary.failed} failed", flush=True)
    for failure in document["failures"]:
        problems = "; ".join(text if path == "_" else f"{path}: {text}" for path, text in failure["errors"].items())
        code = f"{failure['code']} " if failure["code"] else ""
        print(f"  line {failure['line']}: {code}{problems}", flush=True)


# --- workflows ----------------------------------------------------------------------------

WORKFLOW_COLUMNS = ("ID", "NAME", "STATUS", "EXECUTE_AT", "TASKS")
TASK_COLUMNS = ("KEY", "STATUS", "DEPENDS_ON", "RUN_IF", "STARTED", "FINISHED", "ERROR")


def _task_counts(counts: dict[str, int]) -> str:
    """``SUCCESS 2, WAITING 1``: in the order a task goes through its statuses."""
    order = {status: index for index, status in enumerate(STATUSES)}
    return ", ".join(f"{status} {n}" for status, n in sorted(counts.items(), key=lambda item: order.get(item[0], 99)))


def _run_if(value: Any) -> str:
    """A task's condition as people read it: ``success``, or ``tasks.a.output.n gt 0``."""
    if not isinstance(value, dict):
        return str(value)
    text = f"{value.get('path')} {value.get('op')}"
    return text + (f" {json.dumps(value['value'], ensure_ascii=False)}" if "value" in value else "")


def _workflow_row(w: Any) -> tuple[Any, ...]:
    return (w.id, w.name, w.status, w.execute_at, _task_counts(w.task_counts) or None)


def _workflow_text(w: Any) -> str:
    from chronoq.output import block, table

    counts = w.task_counts or {t.status: sum(u.status == t.status for u in w.tasks) for t in w.tasks}
    head = block([
        ("id", w.id), ("name", w.name), ("status", w.status), ("tenant", w.tenant),
        ("failure_policy", w.failure_policy), ("execute_at", w.execute_at), ("created_at", w.created_at),
        ("started_at", w.started_at), ("finished_at", w.finished_at), ("runs", w.runs),
        ("metadata", w.metadata or None), ("schedule_id", w.schedule_id), ("tasks", _task_counts(counts) or None),
    ])
    if not w.tasks:
        return head
    rows = [(t.key, t.status, ", ".join(t.depends_on) or None, _run_if(t.run_if) + (" (allow_failure)" if
             t.allow_failure else ""), t.started_at, t.finished_at, t.error) for t in w.tasks]
    return head + "\n\n" + table(TASK_COLUMNS, rows)


def _show_workflow(out: Output, workflow: Any) -> None:
    out.result(workflow, lambda: _workflow_text(workflow))


def workflows_create(client: "Client", args: argparse.Namespace, out: Output) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    try:
        definition = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{args.file} is not valid JSON: {exc}") from None
    if not isinstance(definition, dict):
        raise UsageError(f"{args.file} must hold one JSON object (the workflow's definition)")
    _show_workflow(out, client.workflows.create(definition, idempotency_key=args.idempotency_key))
    return EXIT_OK


def workflows_list(client: "Client", args: argparse.Namespace, out: Output) -> int:
    filters = dict(status=_statuses(args.status, WORKFLOW_STATUSES) or None, name=args.name)
    return _list(client.workflows, args, out, WORKFLOW_COLUMNS, _workflow_row, **filters)


def workflows_get(client: "Client", args: argparse.Namespace, out: Output) -> int:
    _show_workflow(out, client.workflows.get(args.workflow_id))
    return EXIT_OK


def workflows_cancel(client: "Client", args: argparse.Namespace, out: Output) -> int:
    _show_workflow(out, client.workflows.cancel(args.workflow_id))
    return EXIT_OK


def workflows_rerun(client: "Client", args: argparse.Namespace, out: Output) -> int:
    _show_workflow(out, client.workflows.rerun(args.workflow_id))
    return EXIT_OK


def workflows_wait(client: "Client", args: argparse.Namespace, out: Output) -> int:
    workflow = client.workflows.wait(args.workflow_id, args.wait_timeout)
    _show_workflow(out, workflow)
    return EXIT_OK if workflow.status == "SUCCESS" else EXIT_FAILED


# --- schedules ----------------------------------------------------------------------------

SCHEDULE_COLUMNS = ("ID", "NAME", "TIMING", "TIMEZONE", "PAUSED", "NEXT_FIRE_AT", "JOB")


def _schedule_row(s: Any) -> tuple[Any, ...]:
    timing = s.cron if s.cron else f"every {s.interval_seconds:g}s"
    template = (f"{s.job.get('name')} ({s.job.get('type')})" if s.job else
                f"workflow {s.workflow.get('name')} ({len(s.workflow.get('tasks') or [])} tasks)" if s.workflow else "")
    return (s.id, s.name, timing, s.timezone, "yes" if s.paused else "no", s.next_fire_at, template)


def _schedule_block(s: Any) -> str:
    from chronoq.output import block

    return block([
        ("id", s.id), ("name", s.name), ("cron", s.cron), ("interval_seconds", s.interval_seconds),
        ("timezone", s.timezone), ("start_at", s.start_at), ("end_at", s.end_at), ("paused", s.paused),
        ("next_fire_at", s.next_fire_at), ("overlap_policy", s.overlap_policy), ("catchup_policy", s.catchup_policy),
        ("job" if s.workflow is None else "workflow", s.job if s.workflow is None else s.workflow),
        ("last_occurrence", s.last_occurrence), ("on_time", s.on_time),
    ])


def _definition(args: argparse.Namespace, draft: bool = False) -> dict[str, Any]:
    definition = _json_arg(args.definition, "--definition") or {}
    if not isinstance(definition, dict):
        raise UsageError("--definition must be a JSON object")
    for option, key in (("cron", "cron"), ("every", "interval_seconds"), ("name", "name"), ("timezone", "timezone"),
                        ("start", "start_at"), ("end", "end_at"), ("overlap", "overlap_policy"),
                        ("catchup", "catchup_policy"), ("jitter", "jitter_seconds")):
        value = getattr(args, option)
        if value is not None:
            definition[key] = value
    if args.cron is not None:
        definition.pop("interval_seconds", None)
    if args.every is not None:
        definition.pop("cron", None)
    job = _json_arg(args.job, "--job")
    if job is None and (args.job_type or args.job_name or args.payload):
        job = {"name": args.job_name or args.job_type, "type": args.job_type,
               "payload": _json_arg(args.payload, "--payload") or {}}
    if job is not None:
        definition["job"] = job
        definition.pop("workflow", None)
    if draft and "workflow" not in definition:
        definition.setdefault("job", {"name": "preview", "type": "noop"})  # a preview needs none; the API a template
    elif "job" not in definition and "workflow" not in definition:
        raise UsageError("give the job each occurrence runs: --job JSON, or --job-type (and --job-name, --payload); "
                         "or a workflow template in --definition")
    if "cron" not in definition and "interval_seconds" not in definition:
        raise UsageError("give --cron or --every")
    return definition


def schedules_create(client: "Client", args: argparse.Namespace, out: Output) -> int:
    schedule = client.schedules.create(_definition(args))
    out.result(schedule, lambda: _schedule_block(schedule))
    return EXIT_OK


def schedules_list(client: "Client", args: argparse.Namespace, out: Output) -> int:
    paused = True if args.paused else False if args.active else None
    return _list(client.schedules, args, out, SCHEDULE_COLUMNS, _schedule_row, paused=paused, name=args.name)


def schedules_get(client: "Client", args: argparse.Namespace, out: Output) -> int:
    schedule = client.schedules.get(args.schedule_id)
    out.result(schedule, lambda: _schedule_block(schedule))
    return EXIT_OK


def schedules_pause(client: "Client", args: argparse.Namespace, out: Output) -> int:
    schedule = client.schedules.pause(args.schedule_id)
    out.result(schedule, lambda: _schedule_block(schedule))
    return EXIT_OK


def schedules_resume(client: "Client", args: argparse.Namespace, out: Output) -> int:
    schedule = client.schedules.resume(args.schedule_id)
    out.result(schedule, lambda: _schedule_block(schedule))
    return EXIT_OK


def schedules_delete(client: "Client", args: argparse.Namespace, out: Output) -> int:
    client.schedules.delete(args.schedule_id)
    out.line({"deleted": args.schedule_id}, f"schedule {args.schedule_id} deleted")
    return EXIT_OK


def schedules_preview(client: "Client", args: argparse.Namespace, out: Output) -> int:
    from chronoq.output import table

    if args.schedule_id:
        times = client.schedules.preview(args.schedule_id, args.count)
    else:
        times = client.schedules.preview_draft(_definition(args, draft=True), args.count)
    out.result({"items": [dict(t.raw) for t in times]},
               lambda: table(("AT (UTC)", "LOCAL", "NOTE"), [(t.at, t.local, t.note) for t in times]))
    return EXIT_OK


HANDLERS: dict[tuple[str, str], Callable[["Client", argparse.Namespace, Output], int]] = {
    ("jobs", "create"): jobs_create, ("jobs", "list"): jobs_list, ("jobs", "get"): jobs_get,
    ("jobs", "attempts"): jobs_attempts, ("jobs", "cancel"): jobs_cancel, ("jobs", "trigger"): jobs_trigger,
    ("jobs", "rerun"): jobs_rerun, ("jobs", "wait"): jobs_wait, ("jobs", "stats"): jobs_stats,
    ("jobs", "watch"): jobs_watch, ("jobs", "import"): jobs_import,
    ("workflows", "create"): workflows_create, ("workflows", "list"): workflows_list,
    ("workflows", "get"): workflows_get, ("workflows", "cancel"): workflows_cancel,
    ("workflows", "rerun"): workflows_rerun, ("workflows", "wait"): workflows_wait,
    ("schedules", "create"): schedules_create, ("schedules", "list"): schedules_list,
    ("schedules", "get"): schedules_get, ("schedules", "pause"): schedules_pause,
    ("schedules", "resume"): schedules_resume, ("schedules", "delete"): schedules_delete,
    ("schedules", "preview"): schedules_preview,
}
