"""The ``http`` job type against real sockets on this machine: the SSRF policy (default deny,
allowed networks, redirects, DNS rebinding), uniform connection errors, signed deliveries and
bounded output. No database or broker."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from common.core import netguard, signing
from common.infra.config import Settings, load_settings
from common.infra.errors import JobTimeout
from executor_service.context import HandlerContext, PermanentFailure
from executor_service.handlers import http

SECRET = "whsec-test-current"
LOOPBACK_ONLY = ("127.0.0.1/32",)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        server.received.append({"path": self.path, "method": self.command, "headers": dict(self.headers), "body": body})
        status, headers, data = server.route(self.path, self.headers, body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: Any) -> None:  # keep the test output quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str) -> None:
        super().__init__((host, 0), _Handler)
        self.received: list[dict[str, Any]] = []
        self.redirects: dict[str, tuple[int, str]] = {}  # path -> (status, Location)
        self.secrets: tuple[str, ...] = ()
        self.checks: list[str] = []
        self.url = f"http://{host}:{self.server_address[1]}"

    def route(self, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if path in self.redirects:
            status, location = self.redirects[path]
            return status, {"Location": location}, b""
        if path == "/big":
            return 200, {}, b"x" * 10_000
        if path == "/teapot":
            return 418, {}, b"t" * 10_000
        if path == "/signed":
            return self._verify(headers, body)
        return 200, {}, b"hello"

    def _verify(self, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        # What a receiver does: every secret it knows, the delivery's own ids, its own clock.
        for secret in self.secrets:
            try:
                signing.verify(
                    headers.get(signing.HEADER, ""), secret, job_id=headers["X-Chronoq-Job-Id"],
                    attempt=int(headers["X-Chronoq-Attempt"]), token=int(headers["X-Chronoq-Dispatch-Token"]),
                    body=body, now=time.time(),
                )
            except signing.SignatureError as exc:
                self.checks.append(f"{secret}: {exc}")
            else:
                self.checks.append(f"{secret}: ok")
                return 200, {}, b"verified"
        return 401, {}, b"bad signature"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gives up mid-request is expected in the timeout tests


def _serve(host: str) -> Iterator[_Server]:
    server = _Server(host)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def target() -> Iterator[_Server]:
    yield from _serve("127.0.0.1")


@pytest.fixture
def other() -> Iterator[_Server]:
    """A second server on 127.0.0.2: loopback too on Linux, yet outside 127.0.0.1/32."""
    yield from _serve("127.0.0.2")


@pytest.fixture(autouse=True)
def _fresh_lookups() -> Iterator[None]:
    netguard.clear_lookup_cache()
    yield
    netguard.clear_lookup_cache()


def make_settings(**overrides: Any) -> Settings:
    return load_settings({}, **overrides)


def make_context(settings: Settings, timeout: float = 10.0, secrets: tuple[str, ...] = ()) -> HandlerContext:
    job_id = uuid.uuid4()
    return HandlerContext(
        job_id=job_id, name="guard", attempt=3, max_retries=3, idempotency_key=f"{job_id}:3",
        deadline=time.monotonic() + timeout, timeout_seconds=timeout, settings=settings,
        tenant="acme", dispatch_token=41, signing_secrets=secrets,
    )


def call(payload: dict[str, Any], settings: Settings, timeout: float = 10.0, secrets: tuple[str, ...] = (),
         secret_names: frozenset[str] = frozenset()) -> Any:
    """``http.call`` on a pooled session of its own, as the executor runs it."""
    context = make_context(settings, timeout, secrets)
    context.secret_names = secret_names

    async def go() -> Any:
        context.http = http.Pool(4)
        try:
            return await http.call(payload, context)
        finally:
            await context.http.close()

    return asyncio.run(go())


def test_a_loopback_target_is_refused_by_default(target: _Server) -> None:
    refusal = "^target refused: 127.0.0.1 is a loopback address: refused unless CHRONOQ_HTTP_ALLOW_PRIVATE"
    with pytest.raises(PermanentFailure, match=refusal):
        call({"url": f"{target.url}/ok"}, make_settings())
    assert target.received == []


def test_an_allowed_network_is_reached(target: _Server) -> None:
    assert call({"url": f"{target.url}/ok", "method": "GET"}, make_settings(http_allow_private=LOOPBACK_ONLY)) == {
        "status": 200, "body": "hello",
    }
    assert len(target.received) == 1


def test_a_redirect_out_of_the_allowed_network_never_reaches_its_target(target: _Server, other: _Server) -> None:
    target.redirects["/go"] = (302, f"{other.url}/ok")
    with pytest.raises(PermanentFailure, match=r"redirect 1 to '127.0.0.2' refused: 127.0.0.2 is a loopback address"):
        call({"url": f"{target.url}/go"}, make_settings(http_allow_private=LOOPBACK_ONLY))
    assert [r["path"] for r in target.received] == ["/go"]
    assert other.received == []


def test_redirects_are_followed_hop_by_hop(target: _Server, other: _Server) -> None:
    opened = make_settings(http_allow_private=("127.0.0.0/8",))
    target.redirects["/see-other"] = (303, "/ok")
    target.redirects["/temporary"] = (307, f"{other.url}/signed")
    other.secrets = (SECRET,)
    headers = {"Authorization": "Bearer abc", "Cookie": "a=b", "X-Custom": "kept"}
    output = call({"url": f"{target.url}/see-other", "json": {"n": 1}, "headers": headers}, opened)
    assert output == {"status": 200, "body": "hello"}
    first, second = target.received
    assert (first["method"], first["body"]) == ("POST", b'{"n":1}')
    assert (second["path"], second["method"], second["body"]) == ("/ok", "GET", b"")  # 303: GET, no body
    assert second["headers"]["Authorization"] == "Bearer abc"  # same origin: credentials stay

    output = call({"url": f"{target.url}/temporary", "method": "PUT", "json": {"n": 2}, "headers": headers},
                  opened, secrets=(SECRET,))
    assert output == {"status": 200, "body": "verified"}  # 307: same method and body, signed again
    (moved,) = other.received
    assert (moved["method"], moved["body"]) == ("PUT", b'{"n":2}')
    assert "Authorization" not in moved["headers"] and "Cookie" not in moved["headers"]  # another host
    assert moved["headers"]["X-Custom"] == "kept"


def test_a_redirect_to_another_origin_drops_the_headers_marked_secret(target: _Server, other: _Server) -> None:
    opened = make_settings(http_allow_private=("127.0.0.0/8",))
    target.redirects["/away"] = (307, f"{other.url}/landing")
    target.redirects["/here"] = (307, "/ok")
    headers = {"X-Api-Key": "k-123", "X-Plain": "p"}
    call({"url": f"{target.url}/here", "headers": headers}, opened, secret_names=frozenset({"X-Api-Key"}))
    assert target.received[-1]["headers"]["X-Api-Key"] == "k-123"  # same origin: it stays
    call({"url": f"{target.url}/away", "headers": headers}, opened, secret_names=frozenset({"X-Api-Key"}))
    (moved,) = other.received
    assert "X-Api-Key" not in moved["headers"] and moved["headers"]["X-Plain"] == "p"


def test_too_many_redirects_fail_the_attempt(target: _Server) -> None:
    target.redirects["/loop"] = (302, "/loop")
    settings = make_settings(http_allow_private=LOOPBACK_ONLY, http_max_redirects=2)
    with pytest.raises(http.HttpFailed, match=r"too many redirects: HTTP 302 after 2 followed \(CHRONOQ_HTTP_MAX_RED"):
        call({"url": f"{target.url}/loop", "method": "GET"}, settings)
    assert len(target.received) == 3
    # A job that wants the redirect itself lists it.
    assert call({"url": f"{target.url}/loop", "method": "GET", "expect_status": [302]}, settings)["status"] == 302


def test_a_name_that_rebinds_after_creation_is_refused_at_run_time(
    target: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = target.server_address[1]
    real = socket.getaddrinfo
    answers = iter(["8.8.8.8"])  # public when the job is created, loopback from then on

    def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "hooks.rebind.test":
            return real(host, *args, **kwargs)
        return real(next(answers, "127.0.0.1"), *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    url = f"http://hooks.rebind.test:{port}/ok"
    assert netguard.url_problem(url, make_settings()) is None  # accepted at creation
    with pytest.raises(PermanentFailure, match=r"'hooks.rebind.test' resolves to a refused address \(127.0.0.1 is"):
        call({"url": url}, make_settings())
    assert target.received == []
    # The same name, once its network is allowed, connects to the address that was checked.
    assert call({"url": url}, make_settings(http_allow_private=LOOPBACK_ONLY))["body"] == "hello"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port whose connections the kernel completes but nobody ever answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def test_connection_errors_look_alike_unless_detailed(black_hole: int) -> None:
    def failure(port: int, **overrides: Any) -> tuple[type, str]:
        settings = make_settings(http_allow_private=LOOPBACK_ONLY, **overrides)
        with pytest.raises((http.HttpFailed, JobTimeout)) as caught:
            call({"url": f"http://127.0.0.1:{port}/"}, settings, timeout=0.5)
        return type(caught.value), str(caught.value)

    closed, silent = failure(_closed_port()), failure(black_hole)
    assert closed == silent == (http.HttpFailed, http.NO_RESPONSE)
    closed, silent = failure(_closed_port(), http_detailed_errors=True), failure(black_hole, http_detailed_errors=True)
    assert closed != silent
    assert closed[0] is http.HttpFailed and "Cannot connect to host" in closed[1]
    assert silent == (JobTimeout, "timed out after 0.5s")


def test_the_receiver_verifies_the_signature(target: _Server) -> None:
    target.secrets = ("whsec-previous", SECRET)
    settings = make_settings(http_allow_private=LOOPBACK_ONLY)
    output = call(
        {"url": f"{target.url}/signed", "json": {"amount": "12.50", "note": "café"},
         "headers": {"X-Chronoq-Dispatch-Token": "999", "chronoq-signature": "t=1,v1=forged"}},
        settings, secrets=(SECRET, "whsec-previous"),
    )
    assert output == {"status": 200, "body": "verified"}
    assert target.checks == ["whsec-previous: ok"]  # during a rotation either secret verifies
    (request,) = target.received
    assert request["body"] == '{"amount":"12.50","note":"café"}'.encode()
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["X-Chronoq-Dispatch-Token"] == "41"  # the job's own value is dropped
    assert request["headers"]["X-Chronoq-Attempt"] == "3"
    assert request["headers"][signing.HEADER].count("v1=") == 2

    with pytest.raises(http.HttpFailed, match="HTTP 401"):
        call({"url": f"{target.url}/signed", "body": "x"}, settings, secrets=("whsec-wrong",))
    assert target.checks[-1].endswith("no v1 signature matches this secret and delivery")


def test_unsigned_when_the_tenant_has_no_secret(target: _Server) -> None:
    call({"url": f"{target.url}/ok", "headers": {"Chronoq-Signature": "t=1,v1=forged"}},
         make_settings(http_allow_private=LOOPBACK_ONLY))
    (request,) = target.received
    assert signing.HEADER not in request["headers"]
    assert request["headers"]["X-Chronoq-Job-Id"]


def test_output_and_error_text_are_bounded(target: _Server) -> None:
    settings = make_settings(http_allow_private=LOOPBACK_ONLY, http_output_bytes=100)
    assert call({"url": f"{target.url}/big", "method": "GET"}, settings) == {"status": 200, "body": "x" * 100}
    with pytest.raises(http.HttpFailed) as caught:
        call({"url": f"{target.url}/teapot", "method": "GET"}, make_settings(http_allow_private=LOOPBACK_ONLY))
    assert str(caught.value) == "HTTP 418 (expected 2xx): " + "t" * 200
