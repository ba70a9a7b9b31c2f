"""End to end with CHRONOQ_TRACING=on: the services, run as processes, export their spans over
OTLP/HTTP to a receiver in this test, and one trace runs from the request that created an
``http`` job (its ``traceparent``) through the dispatch (the API's direct dispatch, or the
scanner's), the executor's attempt and the result writer, to the ``traceparent`` header the
job's target receives. One system for the module."""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse,
)

from tests.e2e.conftest import job as get
from tests.e2e.conftest import module_system
from tests.helpers import wait_for
from tests.processes import System
from tests.receiver import Receiver

pytestmark = pytest.mark.e2e

TRACE_ID = "5b8efff798038103d269b633813fc60c"
PARENT_ID = "eee19b7ec3c1b174"


@dataclass(frozen=True)
class Exported:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


class OtlpReceiver:
    """An OTLP/HTTP trace receiver (``POST /v1/traces``, protobuf) that keeps every span."""

    def __init__(self) -> None:
        self.spans: list[Exported] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, request: ExportTraceServiceRequest) -> None:
        for resource in request.resource_spans:
            service = next(a.value.string_value for a in resource.resource.attributes if a.key == "service.name")
            for scope in resource.scope_spans:
                with self.lock:
                    self.spans += [Exported(
                        service, span.name, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
                        {a.key: _value(a.value) for a in span.attributes},
                    ) for span in scope.spans]

    def of(self, trace_id: str) -> list[Exported]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def start(self) -> "OtlpReceiver":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def system(pg_url, broker, tmp_path_factory, otlp: OtlpReceiver) -> Iterator[System]:
    yield from module_system(
        pg_url, broker, tmp_path_factory.mktemp("e2e-tracing-logs"), tracing=True,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "OTEL_BSP_SCHEDULE_DELAY": "100"},
    )


def _one(spans: list[Exported], service: str, name: str, job_id: str) -> Exported:
    found = [s for s in spans if s.service == service and s.name == name and s.attributes.get("chronoq.job_id") == job_id]
    assert len(found) == 1, (service, name, spans)
    return found[0]


def test_one_trace_from_the_request_to_the_target(system: System, otlp: OtlpReceiver, receiver: Receiver) -> None:
    incoming = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "e2e=1", **system.headers}
    jobs = {}
    # Due now: the API dispatches it itself. Five seconds out: past the scanner's next horizon
    # (2 s windows), so the scanner dispatches it from the row.
    for path, delay, dispatcher in (("/direct", 0, "chronoq-api"), ("/scanned", 5, "chronoq-scanner")):
        response = requests.post(f"{system.base_url}/api/jobs", headers=incoming, timeout=10, json={
            "name": f"traced{path}", "type": "http", "delay_seconds": delay,
            "payload": {"url": receiver.url + path, "json": {"hello": path}},
        })
        assert response.status_code == 201, response.text
        jobs[path] = (response.json()["id"], dispatcher)
    for path, (job_id, _) in jobs.items():
        wait_for(lambda: get(system, job_id)["status"] == "SUCCESS", timeout=20, what=f"{path} job")

    def complete() -> list[Exported]:
        spans = otlp.of(TRACE_ID)
        names = {(s.name, s.attributes.get("chronoq.job_id")) for s in spans}
        wanted = {(n, j) for j, _ in jobs.values() for n in ("create job", "dispatch http", "execute http",
                                                               "record SUCCESS")}
        return spans if wanted <= names else []

    spans = wait_for(complete, timeout=10, what="the spans of both jobs")
    for path, (job_id, dispatcher) in jobs.items():
        create = _one(spans, "chronoq-api", "create job", job_id)
        dispatch = _one(spans, dispatcher, "dispatch http", job_id)
        execute = _one(spans, "chronoq-executor", "execute http", job_id)
        # A redelivered update is recorded again (idempotently), in a span of its own.
        records = [s for s in spans if s.service == "chronoq-results" and s.attributes.get("chronoq.job_id") == job_id]
        assert {r.name for r in records} == {"record RUNNING", "record SUCCESS"}
        assert create.parent_id == PARENT_ID
        assert dispatch.parent_id == create.span_id
        assert execute.parent_id == dispatch.span_id
        assert execute.attributes["chronoq.attempt"] == 1 and "chronoq.lateness_seconds" in execute.attributes
        assert all(r.parent_id == execute.span_id for r in records)
        (call,) = receiver.to(path)
        assert call.headers["traceparent"] == f"00-{TRACE_ID}-{execute.span_id}-01"
        assert call.headers["tracestate"] == "e2e=1"


def test_a_payloads_own_traceparent_wins(system: System, receiver: Receiver) -> None:
    own = "00-11111111111111111111111111111111-2222222222222222-01"
    response = requests.post(f"{system.base_url}/api/jobs", headers=system.headers, timeout=10, json={
        "name": "own", "type": "http", "delay_seconds": 0,
        "payload": {"url": receiver.url + "/own", "headers": {"TraceParent": own}},
    })
    assert response.status_code == 201, response.text
    (call,) = wait_for(lambda: receiver.to("/own"), timeout=20, what="the call")
    sent = {k.lower(): v for k, v in call.headers.items()}
    assert sent["traceparent"] == own
