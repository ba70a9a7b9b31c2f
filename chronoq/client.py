"""The Python client of the chronoq API.

>>> from chronoq import Client
>>> client = Client("http://127.0.0.1:8080", token="cq_…")      # or CHRONOQ_URL, CHRONOQ_TOKEN
>>> job = client.jobs.create("hello", "noop", delay_seconds=5)
>>> client.wait(job.id, timeout=60).status
'SUCCESS'

One method per endpoint, grouped as ``client.jobs``, ``client.workflows``, ``client.schedules`` and
``client.admin``;
typed results (:mod:`chronoq.models`); every error a :class:`chronoq.errors.ChronoqError`.

Retries: a request is sent again after a dropped connection, a timeout, or a 502/503/504 only
where repeating it cannot do a thing twice: reads, DELETE (a repeated cancel that finds its own
work done answers as the first would have), pause and resume (idempotent), and creates, which
always carry an idempotency key (the client makes one per call when the caller gives none, and
one per job of a batch), so a create whose answer was lost returns the job it made instead of
making two. Any request is sent again when the connection was never opened (refused, connect
timeout), and after a 429 (nothing was done), waiting what ``Retry-After`` says. The pauses
follow the project's one backoff formula (:func:`common.infra.retry.exponential_delay`); its
``retry()`` loop is not used because the wait must follow the server's ``Retry-After``."""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
import uuid
from collections import deque
from contextlib import closing
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar
from urllib.parse import quote, urlsplit

import requests
import urllib3

from common.infra.retry import Backoff, exponential_delay

from chronoq import errors
from chronoq.env import DEFAULT_URL, TOKEN_ENV, URL_ENV
from chronoq.models import (
    ApiKey,
    Attempt,
    AuditPage,
    BatchResult,
    Event,
    FireTime,
    Job,
    JobPage,
    RedriveResult,
    Schedule,
    SchedulePage,
    SigningSecret,
    Stats,
    Tenant,
    Workflow,
    WorkflowPage,
)
from chronoq.sse import SseParser

#: What :meth:`Client.wait`-style polling and retried cancels return: a job or a workflow.
_Item = TypeVar("_Item", Job, Workflow)

log = logging.getLogger("chronoq.client")
log.addHandler(logging.NullHandler())  # a library: the application decides what is shown


#: Pauses between retries of one request (plus up to half again of jitter).
RETRY_BACKOFF = Backoff(first=0.25, cap=4.0)
#: Pauses between polls of :meth:`Client.wait`.
WAIT_BACKOFF = Backoff(first=0.1, cap=2.0)
#: Seconds between reads of a workflow :meth:`Workflows.wait` follows when none of its tasks
#: changes (the scanner's sweep may settle a workflow without a task event).
WORKFLOW_RECHECK = 30.0
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
_RETRY_STATUSES = frozenset({502, 503, 504})


def _time(value: datetime | str | None) -> str | None:
    """A time for the API: an aware datetime as ISO 8601, or a string as given."""
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError(f"{value!r} has no timezone: give an aware datetime (e.g. tzinfo=timezone.utc)")
    return value.isoformat()


def _clean(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` without the ones left out (None), times made ISO 8601."""
    return {key: _time(value) if isinstance(value, datetime) else value
            for key, value in values.items() if value is not None}


def _never_sent(exc: Exception) -> bool:
    """Whether the request never left: the connection was refused or not opened in time."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def retry_after(response: requests.Response) -> float | None:
    """The seconds of a ``Retry-After`` header (None if absent or a date)."""
    raw = response.headers.get("Retry-After")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def error_from(response: requests.Response, attempts: int = 1) -> errors.ApiError:
    """The :class:`~chronoq.errors.ApiError` of an error answer (the API's one JSON shape, or
    whatever a proxy in front of it sent)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"message": (response.text or "").strip()[:500] or response.reason}
    cls = errors.error_class(response.status_code)
    return cls(response.status_code, str(body.get("message") or response.reason or ""),
               body.get("errors") if isinstance(body.get("errors"), dict) else None,
               reason=str(body.get("status") or response.reason or ""), retry_after=retry_after(response),
               attempts=attempts)


class Client:
    """A connection to one chronoq API.

    ``url`` defaults to ``$CHRONOQ_URL`` (else http://127.0.0.1:8080) and ``token`` (an API key
    or JWT, sent as ``Authorization: Bearer``) to ``$CHRONOQ_TOKEN``. ``timeout`` bounds each
    request (seconds); ``retries`` is how many times a failed request may be sent again where
    that is safe (see the module's docstring); ``max_retry_wait`` caps one pause, including a
    server's ``Retry-After``. Use it as a context manager, or :meth:`close` it."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 10.0,
                 retries: int = 3, *, max_retry_wait: float = 30.0,
                 session: requests.Session | None = None) -> None:
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL of the chronoq API: {self.url!r} (e.g. {DEFAULT_URL})")
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self._http = session or requests.Session()
        self._sleep: Callable[[float], None] = time.sleep
        self.jobs = Jobs(self)
        self.workflows = Workflows(self)
        self.schedules = Schedules(self)
        self.admin = Admin(self)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # --- the one request path -------------------------------------------------------------

    def request(self, method: str, path: str, *, params: Any = None, json_body: Any = None,
                headers: Mapping[str, str] | None = None, safe: bool | None = None) -> Any:
        """Send one API request and return its JSON (None for an empty answer); errors raise
        :class:`~chronoq.errors.ChronoqError`. ``safe`` says whether repeating the request can
        do nothing twice (default: only for GET, HEAD, OPTIONS and DELETE)."""
        return self._send(method, path, params=params, json_body=json_body, headers=headers, safe=safe)[0]

    def _send(self, method: str, path: str, *, params: Any = None, json_body: Any = None,
              headers: Mapping[str, str] | None = None, safe: bool | None = None) -> tuple[Any, int]:
        """(JSON of the answer, requests it took)."""
        method = method.upper()
        safe = method in _IDEMPOTENT if safe is None else safe
        url = self.url + path
        sent_headers = {"Accept": "application/json", **(headers or {})}
        if self.token:
            sent_headers["Authorization"] = f"Bearer {self.token}"
        attempt = 0
        while True:
            attempt += 1
            retries_left = attempt <= self.retries
            try:
                response = self._http.request(method, url, params=params, json=json_body, headers=sent_headers,
                                              timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if retries_left and (safe or _never_sent(exc)):
                    self._pause(attempt, None, f"{method} {path}: {type(exc).__name__}")
                    continue
                note = "" if safe or _never_sent(exc) else (
                    " (not retried: the request may have been applied; check before sending it again)")
                raise errors.Unavailable(f"{method} {url} failed after {attempt} attempt(s): {_reason(exc)}{note}",
                                         attempts=attempt) from exc
            status = response.status_code
            if retries_left and (status == 429 or (status in _RETRY_STATUSES and safe)):
                self._pause(attempt, retry_after(response), f"{method} {path}: {status}")
                continue
            if status >= 400:
                raise error_from(response, attempt)
            if not response.content:
                return None, attempt
            try:
                return response.json(), attempt
            except ValueError:
                raise errors.ChronoqError(f"{method} {url}: the answer is not JSON ({status}, "
                                          f"{response.headers.get('Content-Type')})", attempts=attempt) from None

    def _pause(self, attempt: int, server_says: float | None, why: str) -> None:
        pause = exponential_delay(attempt, base=RETRY_BACKOFF.first, cap=RETRY_BACKOFF.cap, jitter=0.5)
        if server_says is not None:
            pause = max(pause, server_says)
        pause = min(pause, self.max_retry_wait)
        log.warning("%s; retrying in %.1fs (%d of %d)", why, pause, attempt, self.retries)
        self._sleep(pause)

    # --- health, waiting, events ----------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: the API process is alive."""
        return self.request("GET", "/healthz")

    def ready(self) -> dict[str, Any]:
        """``GET /readyz``: the API and its database answer (503 → :class:`~chronoq.errors.Unavailable`)."""
        return self.request("GET", "/readyz")

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Poll the job (every 0.1 s at first, backing off to every 2 s) until it is finished
        (SUCCESS, FAILED, CANCELLED or SKIPPED) and return it; :class:`~chronoq.errors.WaitTimeout`
        (with the job's last state) after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._poll(lambda: self.jobs.get(job_id), f"job {job_id}", deadline, timeout)

    def _poll(self, read: Callable[[], _Item], what: str, deadline: float | None, timeout: float | None) -> _Item:
        """``read()`` (a job or a workflow) until it is finished, backing off from 0.1 s to 2 s
        between reads; :class:`~chronoq.errors.WaitTimeout` with its last state at ``deadline``."""
        polls = 0
        while True:
            item = read()
            if item.finished:
                return item
            polls += 1
            pause = WAIT_BACKOFF.delay(polls)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.WaitTimeout(f"{what} is still {item.status} after {timeout:g}s", item)
                pause = min(pause, left)
            self._sleep(pause)

    def _cancel(self, path: str, read: Callable[[], _Item], parse: Callable[[Any], _Item]) -> _Item:
        """DELETE ``path`` (a job or a workflow) and parse the answer. A 409 after a retry of our
        own may be our first try's success: then ``read()`` shows it CANCELLED, and that is returned."""
        try:
            body, _ = self._send("DELETE", path)
        except errors.Conflict as exc:
            if exc.attempts > 1:  # our own first try may have cancelled it
                item = read()
                if item.status == "CANCELLED":
                    return item
            raise
        return parse(body)

    def events(self, *, job_id: str | None = None, schedule_id: str | None = None,
               status: str | Iterable[str] | None = None, last_event_id: str | None = None,
               reconnect: bool = True, read_timeout: float = 90.0,
               on_open: Callable[[], None] | None = None, until: float | None = None) -> Iterator[Event]:
        """Follow ``GET /api/events``: each job state change as an :class:`~chronoq.models.Event`,
        filtered by job, schedule and status. A stream the server ends (it bounds each one) or
        that breaks is opened again with ``Last-Event-ID``, so no change is missed or repeated;
        ``reconnect=False`` stops at the end of the first stream. The stream delivers at least
        once; a change seen before (same ``id``) is not yielded again. Raises
        :class:`~chronoq.errors.NotFound` when the API has no event stream, and
        :class:`~chronoq.errors.Unavailable` when it cannot be reached ``retries`` times in a row.
        ``on_open`` is called each time a stream is open, before its first event is read (a
        caller that read a state before following its changes reads it again there, so a
        change made before the stream opened is not missed). ``until`` (a :func:`time.monotonic`
        time) ends the generator then, even when no change comes: it is looked at after every
        chunk of the stream (the API sends a keep-alive every few seconds) and bounds each read."""
        params: dict[str, Any] = _clean({"job_id": job_id, "schedule_id": schedule_id})
        if status:
            params["status"] = [status] if isinstance(status, str) else list(status)
        url = self.url + "/api/events"
        failures = 0
        seen = _Recent()
        while True:
            if until is not None and time.monotonic() >= until:
                return
            read_for = read_timeout if until is None else max(0.01, min(read_timeout, until - time.monotonic()))
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            if last_event_id is not None:
                headers["Last-Event-ID"] = last_event_id
            parser = SseParser()
            parser.last_id = last_event_id  # kept across streams, as an EventSource keeps it
            received = False
            try:
                with self._http.get(url, params=params, headers=headers, stream=True,
                                    timeout=(self.timeout, read_for)) as response:
                    if response.status_code >= 400:
                        if response.status_code in _RETRY_STATUSES | {429} and failures < self.retries:
                            failures += 1
                            self._pause(failures, retry_after(response), f"GET /api/events: {response.status_code}")
                            continue
                        raise error_from(response)
                    if on_open is not None:
                        on_open()
                    for chunk in itertools.chain(_chunks(response), [None]):
                        received = received or bool(chunk)
                        for sse in parser.feed(chunk) if chunk is not None else parser.finish():
                            last_event_id = parser.last_id
                            if sse.event != "job":
                                continue
                            data = json.loads(sse.data)
                            if not seen.add(data.get("id")):
                                continue  # delivery is at least once: a resumed stream may repeat one
                            yield Event.from_json({**data, "event_id": sse.id})
                        last_event_id = parser.last_id
                        if until is not None and time.monotonic() >= until:
                            return
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    urllib3.exceptions.HTTPError) as exc:  # urllib3's own: the body is read from response.raw
                last_event_id = parser.last_id
                if until is not None and time.monotonic() >= until:
                    return
                failures += 1
                if failures > self.retries:
                    raise errors.Unavailable(f"GET {url}: {_reason(exc)}", attempts=failures) from exc
                self._pause(failures, None, f"GET /api/events: {type(exc).__name__}")
                continue
            if not reconnect:
                return
            if received:
                failures = 0
            else:  # a stream that closed without a byte (a proxy?): back off, and give up in the end
                failures += 1
                if failures > self.retries:
                    raise errors.Unavailable(f"GET {url}: the stream closed {failures} times without data",
                                             attempts=failures)
                self._pause(failures, None, "GET /api/events: the stream closed at once")
                continue
            if parser.retry_ms:
                self._sleep(min(parser.retry_ms / 1000, self.max_retry_wait))


class _Recent:
    """The last ``size`` event ids seen, to drop the repeats of an at-least-once stream."""

    def __init__(self, size: int = 10_000) -> None:
        self._ids: set[Any] = set()
        self._order: deque[Any] = deque()
        self._size = size

    def add(self, event_id: Any) -> bool:
        """Whether ``event_id`` is new (None always is)."""
        if event_id is None:
            return True
        if event_id in self._ids:
            return False
        self._ids.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self._size:
            self._ids.discard(self._order.popleft())
        return True


def _reason(exc: Exception) -> str:
    reason = exc.args[0] if exc.args else exc
    reason = getattr(reason, "reason", reason)
    return str(reason)


def _chunks(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives: ``read1`` returns what the socket has (a plain ``read(n)``
    would wait for n bytes, holding back an event until more come)."""
    raw = response.raw
    read1 = getattr(raw, "read1", None)
    if read1 is None:  # urllib3 < 2.3
        yield from response.iter_content(chunk_size=1)
        return
    while True:
        chunk = read1(65536)
        if not chunk:
            return
        yield chunk


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(str(part), safe="") for part in parts)


def _pages(fetch: Callable[[str | None], Any]) -> Iterator[Any]:
    """Every item of every page, following ``next_cursor``."""
    cursor: str | None = None
    while True:
        page = fetch(cursor)
        yield from page.items
        cursor = page.next_cursor
        if cursor is None:
            return


class Jobs:
    """``/api/jobs``: create, list, inspect, cancel and control jobs."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, name: str, type: str, *, payload: Mapping[str, Any] | None = None,
               execute_at: datetime | str | None = None, delay_seconds: float | None = None,
               max_retries: int | None = None, timeout_seconds: float | None = None, priority: int | None = None,
               misfire_grace_seconds: float | None = None, metadata: Mapping[str, Any] | None = None,
               idempotency_key: str | None = None) -> Job:
        """Create a job due at ``execute_at`` (an aware datetime or ISO 8601 with an offset) or
        ``delay_seconds`` from now. Sent with ``idempotency_key`` (a new one when not given), so
        a retried create never makes two jobs; the same key and fields return the first job."""
        body = _clean({"name": name, "type": type, "payload": payload, "execute_at": execute_at,
                       "delay_seconds": delay_seconds, "max_retries": max_retries, "timeout_seconds": timeout_seconds,
                       "priority": priority, "misfire_grace_seconds": misfire_grace_seconds, "metadata": metadata})
        key = idempotency_key or f"client-{uuid.uuid4()}"
        return Job.from_json(self._c.request("POST", "/api/jobs", json_body=body, headers={"Idempotency-Key": key},
                                             safe=True))

    def create_batch(self, jobs: Iterable[Mapping[str, Any]]) -> BatchResult:
        """Create up to 10,000 jobs in one request (``POST /api/jobs/batch``); each mapping has
        the fields of :meth:`create` (times as ISO 8601 strings or aware datetimes) and an
        optional ``idempotency_key``, made up when missing so the request can be retried.
        Each job is answered on its own (:class:`~chronoq.models.BatchItem`)."""
        items = [{"idempotency_key": f"client-{uuid.uuid4()}", **_clean(job)} for job in jobs]
        return BatchResult.from_json(self._c.request("POST", "/api/jobs/batch", json_body={"jobs": items}, safe=True))

    def list(self, *, status: str | Iterable[str] | None = None, type: str | None = None, name: str | None = None,
             execute_after: datetime | str | None = None, execute_before: datetime | str | None = None,
             schedule_id: str | None = None, metadata: Mapping[str, str] | None = None, tenant: str | None = None,
             workflow_id: str | None = None, limit: int = 50, cursor: str | None = None) -> JobPage:
        """One page of jobs in ``execute_at`` order (``limit`` 1-500); pass the page's
        ``next_cursor`` as ``cursor`` for the next. ``metadata`` entries must all hold;
        ``workflow_id`` selects that workflow's tasks."""
        params = _clean({"type": type, "name": name, "execute_after": execute_after, "execute_before": execute_before,
                         "schedule_id": schedule_id, "workflow_id": workflow_id, "tenant": tenant, "limit": limit,
                         "cursor": cursor})
        if status:
            params["status"] = [status] if isinstance(status, str) else list(status)
        if metadata:
            params["metadata"] = [f"{key}={value}" for key, value in metadata.items()]
        return JobPage.from_json(self._c.request("GET", "/api/jobs", params=params))

    def iter_all(self, *, page_size: int = 200, **filters: Any) -> Iterator[Job]:
        """Every job the filters of :meth:`list` match, page after page (keyset cursor)."""
        return _pages(lambda cursor: self.list(limit=page_size, cursor=cursor, **filters))

    def get(self, job_id: str) -> Job:
        """One job (:class:`~chronoq.errors.NotFound` if unknown or another tenant's)."""
        return Job.from_json(self._c.request("GET", _path("api", "jobs", job_id)))

    def attempts(self, job_id: str) -> list[Attempt]:
        """The job's attempts, in order, across all its runs."""
        body = self._c.request("GET", _path("api", "jobs", job_id, "attempts"))
        return [Attempt.from_json(item) for item in body["items"]]

    def cancel(self, job_id: str) -> Job:
        """Cancel a job that has not started (:class:`~chronoq.errors.Conflict` naming its
        status otherwise). A cancel retried after a lost answer returns the cancelled job."""
        return self._c._cancel(_path("api", "jobs", job_id), lambda: self.get(job_id), Job.from_json)

    def trigger(self, job_id: str) -> Job:
        """Run a SCHEDULED or QUEUED job now (it keeps its id; ``original_execute_at`` its time)."""
        return Job.from_json(self._c.request("POST", _path("api", "jobs", job_id, "trigger")))

    def rerun(self, job_id: str) -> Job:
        """Run a finished job again, now (a new run with all its attempts)."""
        return Job.from_json(self._c.request("POST", _path("api", "jobs", job_id, "rerun")))

    def update(self, job_id: str, *, execute_at: datetime | str | None = None, delay_seconds: float | None = None,
               payload: Mapping[str, Any] | None = None, max_retries: int | None = None,
               timeout_seconds: float | None = None, priority: int | None = None,
               metadata: Mapping[str, Any] | None = None) -> Job:
        """Change a job that has not started (``PATCH``); only the fields given change."""
        body = _clean({"execute_at": execute_at, "delay_seconds": delay_seconds, "payload": payload,
                       "max_retries": max_retries, "timeout_seconds": timeout_seconds, "priority": priority,
                       "metadata": metadata})
        return Job.from_json(self._c.request("PATCH", _path("api", "jobs", job_id), json_body=body))

    def redrive(self, *, status: str | Iterable[str] | None = None, type: str | None = None, name: str | None = None,
                schedule_id: str | None = None, finished_after: datetime | str | None = None,
                finished_before: datetime | str | None = None, execute_after: datetime | str | None = None,
                execute_before: datetime | str | None = None, tenant: str | None = None, limit: int | None = None,
                dry_run: bool = False) -> RedriveResult:
        """Rerun every finished job a filter matches (default: the caller's FAILED jobs)."""
        body = _clean({"type": type, "name": name, "schedule_id": schedule_id, "finished_after": finished_after,
                       "finished_before": finished_before, "execute_after": execute_after,
                       "execute_before": execute_before, "tenant": tenant, "limit": limit, "dry_run": dry_run})
        if status:
            body["status"] = [status] if isinstance(status, str) else list(status)
        return RedriveResult.from_json(self._c.request("POST", "/api/jobs/rerun", json_body=body))

    def stats(self) -> Stats:
        """Counts by status and type, and how many SCHEDULED jobs are overdue."""
        return Stats.from_json(self._c.request("GET", "/api/jobs/stats"))

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """:meth:`Client.wait`."""
        return self._c.wait(job_id, timeout)


class _Ended(Exception):
    """The waited-for workflow has ended (seen on a read of it)."""

    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow


class Workflows:
    """``/api/workflows``: sets of tasks (each a job) that run in the order their dependencies say."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, definition: Mapping[str, Any], *, idempotency_key: str | None = None) -> Workflow:
        """Create a workflow from its definition: ``name``, ``tasks`` (each with ``key``,
        ``type`` and any of ``payload``, ``depends_on``, ``run_if``, ``allow_failure``, …) and
        any of ``execute_at`` / ``delay_seconds``, ``failure_policy``, ``metadata``. Sent with
        ``idempotency_key`` (a new one when not given), so a retried create never makes two;
        the same key and definition return the first workflow."""
        key = idempotency_key or f"client-{uuid.uuid4()}"
        return Workflow.from_json(self._c.request("POST", "/api/workflows", json_body=_clean(definition),
                                                  headers={"Idempotency-Key": key}, safe=True))

    def list(self, *, status: str | Iterable[str] | None = None, name: str | None = None, limit: int = 50,
             cursor: str | None = None) -> WorkflowPage:
        """One page of workflows, newest first (each with ``task_counts``, without ``tasks``);
        pass the page's ``next_cursor`` as ``cursor`` for the next."""
        params = _clean({"name": name, "limit": limit, "cursor": cursor})
        if status:
            params["status"] = [status] if isinstance(status, str) else list(status)
        return WorkflowPage.from_json(self._c.request("GET", "/api/workflows", params=params))

    def iter_all(self, *, page_size: int = 200, **filters: Any) -> Iterator[Workflow]:
        """Every workflow the filters of :meth:`list` match, page after page."""
        return _pages(lambda cursor: self.list(limit=page_size, cursor=cursor, **filters))

    def get(self, workflow_id: str) -> Workflow:
        """One workflow with its tasks (:class:`~chronoq.errors.NotFound` if unknown or another tenant's)."""
        return Workflow.from_json(self._c.request("GET", _path("api", "workflows", workflow_id)))

    def cancel(self, workflow_id: str) -> Workflow:
        """Cancel a workflow: its tasks that have not started are CANCELLED, running ones finish
        (:class:`~chronoq.errors.Conflict` if it had ended). A cancel retried after a lost answer
        returns the cancelled workflow."""
        return self._c._cancel(_path("api", "workflows", workflow_id), lambda: self.get(workflow_id),
                               Workflow.from_json)

    def rerun(self, workflow_id: str) -> Workflow:
        """Run a FAILED or CANCELLED workflow again: its FAILED, CANCELLED and SKIPPED tasks run
        again, SUCCESS ones keep their results (:class:`~chronoq.errors.Conflict` otherwise)."""
        return Workflow.from_json(self._c.request("POST", _path("api", "workflows", workflow_id, "rerun")))

    def wait(self, workflow_id: str, timeout: float | None = None) -> Workflow:
        """Wait until the workflow ends (SUCCESS, FAILED or CANCELLED) and return it;
        :class:`~chronoq.errors.WaitTimeout` (``job`` holding the workflow's last state) after
        ``timeout`` seconds (give or take the stream's keep-alive interval).

        It follows the event stream and reads the workflow again whenever one of its tasks
        changes, and each time a stream opens (so a change made before it opened is not missed);
        the stream is opened again every :data:`WORKFLOW_RECHECK` seconds. An API without an
        event stream is polled as :meth:`Client.wait` polls a job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = self.get(workflow_id)
        if last.finished:
            return last
        opened = False

        def reread() -> None:
            nonlocal last, opened
            opened = True
            last = self.get(workflow_id)
            if last.finished:
                raise _Ended(last)

        try:
            while deadline is None or time.monotonic() < deadline:
                until = time.monotonic() + WORKFLOW_RECHECK
                until = until if deadline is None else min(until, deadline)
                with closing(self._c.events(on_open=reread, until=until)) as stream:  # closed: frees the API's thread
                    for event in stream:
                        if event.job_id in {task.id for task in last.tasks}:
                            reread()
        except _Ended as ended:
            return ended.workflow
        except errors.NotFound:
            if opened:
                raise  # the workflow itself is gone
            return self._c._poll(lambda: self.get(workflow_id), f"workflow {workflow_id}", deadline, timeout)
        last = self.get(workflow_id)  # the deadline passed: one last look
        if last.finished:
            return last
        raise errors.WaitTimeout(f"workflow {workflow_id} is still {last.status} after {timeout:g}s", last)


class Schedules:
    """``/api/schedules``: recurring schedules, each occurrence a job."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, definition: Mapping[str, Any]) -> Schedule:
        """Create a schedule from its definition: exactly one of ``cron`` and
        ``interval_seconds``, the ``job`` template, and any of ``name``, ``timezone``,
        ``start_at``, ``end_at``, ``dst_policy``, ``jitter_seconds``, ``catchup_*``, ``overlap_policy``."""
        return Schedule.from_json(self._c.request("POST", "/api/schedules", json_body=_clean(definition)))

    def list(self, *, paused: bool | None = None, name: str | None = None, tenant: str | None = None,
             limit: int = 50, cursor: str | None = None) -> SchedulePage:
        """One page of schedules, oldest first."""
        params = _clean({"name": name, "tenant": tenant, "limit": limit, "cursor": cursor})
        if paused is not None:
            params["paused"] = "true" if paused else "false"
        return SchedulePage.from_json(self._c.request("GET", "/api/schedules", params=params))

    def iter_all(self, *, page_size: int = 200, **filters: Any) -> Iterator[Schedule]:
        """Every schedule the filters of :meth:`list` match, page after page."""
        return _pages(lambda cursor: self.list(limit=page_size, cursor=cursor, **filters))

    def get(self, schedule_id: str) -> Schedule:
        """One schedule with its on-time figures."""
        return Schedule.from_json(self._c.request("GET", _path("api", "schedules", schedule_id)))

    def update(self, schedule_id: str, changes: Mapping[str, Any], *, pending: str | None = None) -> Schedule:
        """Change a schedule (``job`` is replaced whole); ``pending`` is ``cancel`` (default) or
        ``keep`` for the occurrences already made."""
        body = {**changes, **({"pending": pending} if pending else {})}
        return Schedule.from_json(self._c.request("PATCH", _path("api", "schedules", schedule_id),
                                                  json_body={k: _time(v) if isinstance(v, datetime) else v
                                                             for k, v in body.items()}))

    def delete(self, schedule_id: str) -> None:
        """Delete a schedule (its occurrences that ran stay, as unlinked jobs)."""
        try:
            self._c._send("DELETE", _path("api", "schedules", schedule_id))
        except errors.NotFound as exc:
            if exc.attempts == 1:  # a retry that finds it gone: our own first try deleted it
                raise

    def pause(self, schedule_id: str) -> Schedule:
        """Pause a schedule (idempotent): it makes no occurrence until resumed."""
        return Schedule.from_json(self._c.request("POST", _path("api", "schedules", schedule_id, "pause"), safe=True))

    def resume(self, schedule_id: str) -> Schedule:
        """Resume a paused schedule (idempotent); missed fire times follow its ``catchup_policy``."""
        return Schedule.from_json(self._c.request("POST", _path("api", "schedules", schedule_id, "resume"),
                                                  safe=True))

    def preview(self, schedule_id: str, count: int = 10) -> list[FireTime]:
        """The schedule's next ``count`` fire times."""
        body = self._c.request("GET", _path("api", "schedules", schedule_id, "preview"), params={"count": count})
        return [FireTime.from_json(item) for item in body["items"]]

    def preview_draft(self, definition: Mapping[str, Any], count: int = 10) -> list[FireTime]:
        """The next ``count`` fire times of a definition not created yet (nothing is stored)."""
        body = self._c.request("POST", "/api/schedules/preview", params={"count": count},
                               json_body=_clean(definition), safe=True)
        return [FireTime.from_json(item) for item in body["items"]]


class Admin:
    """Admin endpoints (the admin role): API keys, tenants and their signing secrets, audit."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def keys(self, tenant: str | None = None) -> list[ApiKey]:
        """API keys (never their secrets), revoked ones included."""
        body = self._c.request("GET", "/api/keys", params=_clean({"tenant": tenant}))
        return [ApiKey.from_json(item) for item in body["items"]]

    def create_key(self, tenant: str, role: str, name: str) -> ApiKey:
        """Make a key (``role`` viewer, writer or admin); its secret is in ``key``, this once."""
        return ApiKey.from_json(self._c.request("POST", "/api/keys",
                                                json_body={"tenant": tenant, "role": role, "name": name}))

    def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke a key: requests with it get 401."""
        return ApiKey.from_json(self._c.request("DELETE", _path("api", "keys", key_id)))

    def tenants(self) -> list[Tenant]:
        """Tenants and their limits."""
        return [Tenant.from_json(item) for item in self._c.request("GET", "/api/tenants")["items"]]

    def create_tenant(self, name: str, *, max_pending_jobs: int | None = None, creates_per_second: float | None = None,
                      max_batch_jobs: int | None = None) -> Tenant:
        """Create a tenant (with a new signing secret), optionally with limits."""
        body = _clean({"name": name, "max_pending_jobs": max_pending_jobs, "creates_per_second": creates_per_second,
                       "max_batch_jobs": max_batch_jobs})
        return Tenant.from_json(self._c.request("POST", "/api/tenants", json_body=body))

    def get_tenant(self, name: str) -> Tenant:
        """One tenant."""
        return Tenant.from_json(self._c.request("GET", _path("api", "tenants", name)))

    def update_tenant(self, name: str, **limits: int | float | None) -> Tenant:
        """Change limits: ``max_pending_jobs``, ``creates_per_second``, ``max_batch_jobs`` (None:
        back to the default)."""
        return Tenant.from_json(self._c.request("PATCH", _path("api", "tenants", name), json_body=limits, safe=True))

    def signing_secret(self, tenant: str) -> SigningSecret:
        """The secrets the tenant's http deliveries are signed with."""
        return SigningSecret.from_json(self._c.request("GET", _path("api", "tenants", tenant, "signing-secret")))

    def rotate_signing_secret(self, tenant: str) -> SigningSecret:
        """Make a new signing secret (the old one becomes ``previous``)."""
        return SigningSecret.from_json(
            self._c.request("POST", _path("api", "tenants", tenant, "signing-secret", "rotate")))

    def drop_previous_signing_secret(self, tenant: str) -> SigningSecret:
        """Stop signing with the previous secret."""
        return SigningSecret.from_json(
            self._c.request("DELETE", _path("api", "tenants", tenant, "signing-secret", "previous")))

    def audit(self, *, tenant: str | None = None, subject: str | None = None, action: str | None = None,
              target_id: str | None = None, after: datetime | str | None = None, before: datetime | str | None = None,
              limit: int = 100, cursor: int | None = None) -> AuditPage:
        """One page of audit records, newest first."""
        params = _clean({"tenant": tenant, "subject": subject, "action": action, "target_id": target_id,
                         "after": after, "before": before, "limit": limit, "cursor": cursor})
        return AuditPage.from_json(self._c.request("GET", "/api/audit", params=params))
