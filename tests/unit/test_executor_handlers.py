"""The executor's job-type handlers, without Kafka or a database (http against a local server)."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from common.core import netguard
from common.infra.config import Settings, load_settings
from common.infra.errors import JobTimeout, JobTypeError
from executor_service.context import HandlerContext, PermanentFailure
from executor_service.deadline import Threads, call_handler
from executor_service.handlers import NATIVE_TIMEOUT, builtin, http, resolve, shell
from executor_service.outcomes import safe_output

#: What a timed-out handler may take beyond its timeout before it is abandoned: generous for a
#: loaded machine, and well short of what each handler below would take if it were not.
ABANDON_MARGIN = 2.0


def make_context(settings: Settings, timeout: float = 30.0) -> HandlerContext:
    job_id = uuid.uuid4()
    return HandlerContext(
        job_id=job_id,
        name="test",
        attempt=2,
        max_retries=3,
        idempotency_key=f"{job_id}:2",
        deadline=time.monotonic() + timeout,
        timeout_seconds=timeout,
        settings=settings,
    )


def run(job_type: str, payload: dict[str, Any], settings: Settings, timeout: float = 30.0) -> Any:
    """What the runner does: resolve, validate the payload, run within the deadline."""
    from common.core.jobtypes import load_payload

    handler = resolve(job_type, settings)
    context = make_context(settings, timeout)
    loaded = load_payload(job_type, payload)
    return run_handler(handler, loaded, context, native=job_type in NATIVE_TIMEOUT)


def run_handler(handler: Any, payload: dict[str, Any], context: HandlerContext, native: bool = False) -> Any:
    """On an event loop of its own, with a connection pool, as the executor runs it (a type that
    enforces its own deadline, ``native``, is not raced against another timer)."""
    async def go() -> Any:
        context.http = http.Pool(4)
        try:
            return await call_handler(handler, payload, context, Threads(2), native=native)
        finally:
            await context.http.close()

    return asyncio.run(go())


class _Server(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        _Server.received.append({"path": self.path, "method": self.command, "headers": dict(self.headers), "body": body,
                                 "client_port": self.client_address[1]})
        if self.path == "/slow":
            time.sleep(10.0)  # a daemon thread: the test does not wait for it
        status = 418 if self.path == "/teapot" else 200
        data = b"x" * 10000 if self.path == "/big" else b"hello"
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:  # keep the test output quiet
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the timeout tests hang up on purpose; the broken pipe that follows is expected


@pytest.fixture
def server() -> Iterator[str]:
    _Server.received = []
    httpd = _QuietServer(("127.0.0.1", 0), _Server)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def settings() -> Settings:
    # The http tests call a server on this machine: a loopback target must be opened on purpose.
    return load_settings({}, http_allow_private=("127.0.0.1/32",))


def test_http_success_sends_json_and_idempotency_key(server: str, settings: Settings) -> None:
    context = make_context(settings)
    output = run_handler(http.call, {"url": f"{server}/ok", "method": "POST", "json": {"a": 1}, "headers": {}}, context)
    assert output == {"status": 200, "body": "hello"}
    (request,) = _Server.received
    assert request["method"] == "POST"
    assert json.loads(request["body"]) == {"a": 1}
    assert request["headers"]["Idempotency-Key"] == context.idempotency_key == f"{context.job_id}:2"
    assert request["headers"]["X-Chronoq-Job-Id"] == str(context.job_id)
    assert request["headers"]["X-Chronoq-Attempt"] == "2"


def test_http_refuses_a_loopback_target_by_default(server: str) -> None:
    with pytest.raises(PermanentFailure, match="127.0.0.1 is a loopback address"):
        run("http", {"url": f"{server}/ok"}, load_settings({}))
    assert _Server.received == []


def test_http_keeps_only_the_first_4_kib_of_the_body(server: str, settings: Settings) -> None:
    output = run("http", {"url": f"{server}/big", "method": "GET"}, settings)
    assert output["status"] == 200 and output["body"] == "x" * 4096


def test_http_unexpected_status_fails_unless_expected(server: str, settings: Settings) -> None:
    with pytest.raises(http.HttpFailed, match="HTTP 418 .expected 2xx"):
        run("http", {"url": f"{server}/teapot"}, settings)
    assert run("http", {"url": f"{server}/teapot", "expect_status": [418]}, settings)["status"] == 418
    with pytest.raises(http.HttpFailed, match="expected 201"):
        run("http", {"url": f"{server}/ok", "expect_status": [201]}, settings)


def test_http_network_error_fails_the_attempt(settings: Settings) -> None:
    from common.launch.broker import free_port

    url = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(http.HttpFailed) as caught:
        run("http", {"url": url}, settings)
    assert str(caught.value) == http.NO_RESPONSE  # no reason given: jobs must not map ports
    detailed = load_settings({}, http_allow_private=("127.0.0.1/32",), http_detailed_errors=True)
    with pytest.raises(http.HttpFailed, match="Cannot connect to host"):
        run("http", {"url": url}, detailed)


def test_http_allow_list_refuses_other_hosts(server: str) -> None:
    settings = load_settings({}, http_allowed_hosts=("*.example.com", "localhost"), http_allow_private=("127.0.0.1/32",))
    with pytest.raises(PermanentFailure, match=r"'127.0.0.1' is not allowed \(CHRONOQ_HTTP_ALLOWED_HOSTS\)"):
        run("http", {"url": f"{server}/ok"}, settings)
    assert _Server.received == []  # refused before any request
    assert netguard.host_allowed("api.EXAMPLE.com", settings.http_allowed_hosts)
    assert not netguard.host_allowed("example.com", settings.http_allowed_hosts)
    assert not netguard.host_allowed("evil.com", settings.http_allowed_hosts)
    assert netguard.host_allowed("anything", ())


def test_http_obeys_the_timeout(server: str, settings: Settings) -> None:
    detailed = load_settings({}, http_allow_private=("127.0.0.1/32",), http_detailed_errors=True)
    started = time.monotonic()
    with pytest.raises(JobTimeout):
        run("http", {"url": f"{server}/slow", "method": "GET"}, detailed, timeout=0.5)
    elapsed = time.monotonic() - started
    print(f"\nhttp timed out after {elapsed * 1000:.0f} ms (timeout 500 ms)")
    assert elapsed < 0.5 + ABANDON_MARGIN
    # Without detailed errors a target silent until the deadline looks like any unreachable one.
    started = time.monotonic()
    with pytest.raises(http.HttpFailed, match="^could not reach the target"):
        run("http", {"url": f"{server}/slow", "method": "GET"}, settings, timeout=0.5)
    assert time.monotonic() - started < 0.5 + ABANDON_MARGIN


def test_shell_is_disabled_by_default(settings: Settings) -> None:
    with pytest.raises(JobTypeError, match="'shell' is disabled"):
        resolve("shell", settings)


def test_shell_runs_argv_with_a_minimal_env(tmp_path: Path) -> None:
    settings = load_settings({}, shell_enabled=True)
    output = run("shell", {"argv": ["echo", "hello", "$HOME; rm -rf /"]}, settings)
    assert output == {"exit_code": 0, "stdout": "hello $HOME; rm -rf /\n", "stderr": ""}  # no shell expansion
    output = run(
        "shell",
        {"argv": [sys.executable, "-c", "import os; print(os.getcwd(), os.environ.get('FOO'), 'CHRONOQ_X' in os.environ)"],
         "cwd": str(tmp_path), "env": {"FOO": "bar"}},
        settings,
    )
    assert output["stdout"].split() == [str(tmp_path), "bar", "False"]


def test_shell_non_zero_exit_fails(settings: Settings) -> None:
    settings = load_settings({}, shell_enabled=True)
    with pytest.raises(shell.CommandFailed, match="exit code 3: oops"):
        run("shell", {"argv": [sys.executable, "-c", "import sys; print('oops', file=sys.stderr); sys.exit(3)"]}, settings)


def test_shell_obeys_the_timeout() -> None:
    settings = load_settings({}, shell_enabled=True)
    started = time.monotonic()
    with pytest.raises(JobTimeout):
        run("shell", {"argv": ["sleep", "5"]}, settings, timeout=0.3)
    elapsed = time.monotonic() - started
    print(f"\nshell timed out after {elapsed * 1000:.0f} ms (timeout 300 ms)")
    assert elapsed < 0.3 + ABANDON_MARGIN


def test_sleep_completes_within_its_timeout(settings: Settings) -> None:
    assert run("sleep", {"seconds": 0.05}, settings, timeout=30) == {"slept": 0.05}


def test_sleep_obeys_the_timeout(settings: Settings) -> None:
    started = time.monotonic()
    with pytest.raises(JobTimeout, match="timed out after 0.3s"):
        run("sleep", {"seconds": 30}, settings, timeout=0.3)
    elapsed = time.monotonic() - started
    print(f"\nsleep timed out after {elapsed * 1000:.0f} ms (timeout 300 ms)")
    assert elapsed < 0.3 + ABANDON_MARGIN


def test_any_handler_is_abandoned_at_its_deadline(settings: Settings) -> None:
    context = make_context(settings, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(JobTimeout):
        run_handler(lambda payload, context: time.sleep(10), {}, context)  # abandoned: a daemon thread
    elapsed = time.monotonic() - started
    print(f"\nabandoned after {elapsed * 1000:.0f} ms (timeout 200 ms)")
    assert elapsed < 0.2 + ABANDON_MARGIN
    assert context.abandoned.is_set()


def test_fail_raises_its_message(settings: Settings) -> None:
    with pytest.raises(builtin.JobFailed, match="^boom$"):
        run("fail", {"message": "boom"}, settings)


def test_noop(settings: Settings) -> None:
    assert run("noop", {"anything": 1}, settings) == {"ok": True}


def test_user_handler_is_imported_and_called(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = f"chronoq_user_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent("""
        def double(payload, context):
            return {"value": payload["n"] * 2, "key": context.idempotency_key}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = load_settings({}, handlers=(f"double={module}:double", f"broken={module}:missing"))
    output = run("double", {"n": 21}, settings)
    assert output["value"] == 42 and output["key"].endswith(":2")
    with pytest.raises(JobTypeError, match="cannot import handler"):
        resolve("broken", settings)
    with pytest.raises(JobTypeError, match="unknown job type 'nope'"):
        resolve("nope", settings)


def test_huge_output_is_truncated() -> None:
    assert safe_output({"a": [1, 2]}) == {"a": [1, 2]}
    big = safe_output({"a": "y" * 200_000}, limit=1000)
    assert big["truncated"] is True and big["size"] > 200_000 and len(big["preview"]) == 500
    assert safe_output({"when": uuid.UUID(int=0)}) == {"when": str(uuid.UUID(int=0))}


def test_coroutine_user_handlers_run_on_the_loop_and_obey_the_timeout(settings: Settings) -> None:
    async def waits(payload: dict[str, Any], context: HandlerContext) -> str:
        await asyncio.sleep(payload["seconds"])
        return "done"

    assert run_handler(waits, {"seconds": 0.01}, make_context(settings)) == "done"
    started = time.monotonic()
    with pytest.raises(JobTimeout):
        run_handler(waits, {"seconds": 30}, make_context(settings, timeout=0.2))
    assert time.monotonic() - started < 0.2 + ABANDON_MARGIN


def test_http_reuses_one_keep_alive_connection(server: str, settings: Settings) -> None:
    """Three jobs in a row on one pool: one TCP connection (no handshake per job)."""
    async def three() -> list[Any]:
        pool = http.Pool(4)
        try:
            out = []
            for _ in range(3):
                context = make_context(settings)
                context.http = pool
                out.append(await http.call({"url": f"{server}/ok", "json": {}}, context))
            return out
        finally:
            await pool.close()

    _Server.protocol_version = "HTTP/1.1"  # keep-alive, as real servers answer
    try:
        assert [o["status"] for o in asyncio.run(three())] == [200, 200, 200]
    finally:
        _Server.protocol_version = "HTTP/1.0"
    ports = {r["client_port"] for r in _Server.received}
    assert len(_Server.received) == 3 and len(ports) == 1
