"""common/infra/tracing.py: the W3C carrier helpers, the span helpers, and the off path (the
default), which imports nothing of OpenTelemetry and adds no header."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from common.core.messages import DispatchMessage, UpdateMessage, decode_dispatch, encode_dispatch, encode_update
from common.infra import tracing
from common.infra.config import load_settings
from common.infra.errors import ConfigError

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def _dispatch(trace: dict[str, str] | None = None) -> DispatchMessage:
    return DispatchMessage(
        job_id=uuid.uuid4(), token=1, name="n", type="noop", payload={}, attempt=1, max_retries=0,
        execute_at=datetime(2030, 1, 1, tzinfo=timezone.utc), timeout_seconds=5.0, trace=trace,
    )


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.setup(load_settings({}, tracing=True), "unit", exporter=exporter)
    yield exporter
    tracing.shutdown()


def _ids(span: object) -> tuple[str, str]:
    context = span.get_span_context()  # type: ignore[attr-defined]
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def test_off_imports_nothing_of_opentelemetry_and_answers_none() -> None:
    code = """
import sys
from common.infra import tracing
from common.infra.config import load_settings
import api.app, api.server, api.create, executor_service.service, scheduler_service.scanner, result_service.writer
import common.infra.lifecycle, common.infra.consumer
assert tracing.setup(load_settings({}), "api") is False
assert not tracing.active()
assert tracing.inject() is None and tracing.extract({"traceparent": "x"}) is None
with tracing.span("x", parent={"traceparent": "x"}) as s:
    assert s is None
with tracing.spans([1, 2], str, parent=lambda _: None) as headers:
    assert headers is None
class M:
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
assert tracing.headers_of([M()]) is None
m = M()
assert tracing.attach(m, [("traceparent", b"x")]) is m
loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
assert not loaded, loaded
print("clean")
"""
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0 and done.stdout.strip() == "clean", done.stderr


def test_on_without_the_extra_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"CHRONOQ_TRACING=on .*'otel' extra .*chronoq\[otel\]"):
        tracing.setup(load_settings({}, tracing=True), "api")
    assert not tracing.active()
    tracing.check(load_settings({}))  # off: nothing to check


def test_inject_and_extract_round_trip_through_a_carrier(spans: InMemorySpanExporter) -> None:
    with tracing.span("outer") as outer:
        carrier = tracing.inject()
    trace_id, span_id = _ids(outer)
    # The flags: sampled (and, for a new trace, the W3C level 2 "random trace id" bit).
    assert carrier is not None and carrier["traceparent"].startswith(f"00-{trace_id}-{span_id}-")
    with tracing.span("child", parent=carrier, kind="consumer") as child:
        pass
    assert _ids(child)[0] == trace_id
    assert child.parent.span_id == outer.get_span_context().span_id
    assert child.kind is SpanKind.CONSUMER
    assert [s.name for s in spans.get_finished_spans()] == ["outer", "child"]


def test_a_span_without_parent_carrier_is_a_child_of_the_current_one(spans: InMemorySpanExporter) -> None:
    with tracing.span("outer") as outer:
        with tracing.span("inner", parent=None) as inner:
            pass
    assert inner.parent.span_id == outer.get_span_context().span_id
    with tracing.span("root") as root:
        pass
    assert root.parent is None


def test_incoming_traceparent_and_tracestate_are_kept(spans: InMemorySpanExporter) -> None:
    incoming = {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
    with tracing.span("create", parent=incoming) as created:
        carrier = tracing.inject()
    assert _ids(created)[0] == TRACE_ID and format(created.parent.span_id, "016x") == PARENT_ID
    assert carrier["tracestate"] == "vendor=abc"
    assert carrier["traceparent"].split("-")[1] == TRACE_ID


def test_a_malformed_traceparent_starts_a_new_trace(spans: InMemorySpanExporter) -> None:
    with tracing.span("create", parent={"traceparent": "00-zz-yy-01"}) as created:
        pass
    assert created.parent is None and _ids(created)[0] != TRACE_ID


def test_record_headers_and_back() -> None:
    carrier = {"traceparent": TRACEPARENT, "tracestate": "a=b"}
    headers = tracing.record_headers(carrier)
    assert headers == [("traceparent", TRACEPARENT.encode()), ("tracestate", b"a=b")]
    assert tracing.carrier_of_headers([("other", b"x"), *headers]) == carrier
    assert tracing.carrier_of_headers([("TraceParent", TRACEPARENT)]) == {"traceparent": TRACEPARENT}
    assert tracing.carrier_of_headers([("other", b"x")]) is None
    assert tracing.carrier_of_headers(None) is None
    assert tracing.record_headers(None) is None and tracing.record_headers({}) is None


def test_the_trace_travels_beside_the_message_never_in_its_json(spans: InMemorySpanExporter) -> None:
    message = _dispatch()
    traced = tracing.attach(message, [("traceparent", TRACEPARENT.encode())])
    assert traced.trace == {"traceparent": TRACEPARENT}
    assert encode_dispatch(traced) == encode_dispatch(message)
    assert b"traceparent" not in encode_dispatch(traced)
    assert decode_dispatch(encode_dispatch(traced)).trace is None
    assert tracing.attach(message, [("other", b"x")]) is message
    update = UpdateMessage(job_id=message.job_id, token=1, status="SUCCESS", attempt=1,
                           at=message.execute_at, executor="e", trace={"traceparent": TRACEPARENT})
    assert b"traceparent" not in encode_update(update)
    assert tracing.headers_of([update, message]) == [[("traceparent", TRACEPARENT.encode())], None]
    assert tracing.headers_of([message]) is None  # nothing to carry: no headers at all


def test_batch_spans_are_children_of_each_items_context(spans: InMemorySpanExporter) -> None:
    items = [_dispatch({"traceparent": TRACEPARENT}), _dispatch(None)]
    with tracing.spans(items, lambda m: f"dispatch {m.type}", parent=lambda m: m.trace, kind="producer",
                       attributes=lambda m: {"chronoq.job_id": str(m.job_id)}) as headers:
        assert spans.get_finished_spans() == ()  # ended with the block
    first, second = spans.get_finished_spans()
    assert _ids(first)[0] == TRACE_ID and format(first.parent.span_id, "016x") == PARENT_ID
    assert second.parent is None and _ids(second)[0] != TRACE_ID  # no stored context: a new trace
    assert first.kind is SpanKind.PRODUCER and first.attributes["chronoq.job_id"] == str(items[0].job_id)
    for span, record in zip((first, second), headers):
        trace_id, span_id = _ids(span)
        (name, value), = record
        assert name == "traceparent" and value.decode().startswith(f"00-{trace_id}-{span_id}-")


def test_batch_spans_fail_with_the_block(spans: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError):
        with tracing.spans([_dispatch()], lambda m: "record", parent=lambda m: None):
            raise RuntimeError("database gone")
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR and "database gone" in span.status.description


def test_failed_marks_a_span_and_ignores_none(spans: InMemorySpanExporter) -> None:
    with tracing.span("execute http") as span:
        tracing.failed(span, "HTTP 500")
    tracing.failed(None, "off")
    (done,) = spans.get_finished_spans()
    assert done.status.status_code is StatusCode.ERROR and done.status.description == "HTTP 500"


def test_a_service_started_with_tracing_on_without_the_extra_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from common.infra.lifecycle import EXIT_CONFIG, load_or_exit

    monkeypatch.setenv("CHRONOQ_TRACING", "on")
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(SystemExit) as stopped:
        load_or_exit("executor")
    assert stopped.value.code == EXIT_CONFIG
    assert "chronoq executor: invalid setting CHRONOQ_TRACING=on needs OpenTelemetry" in capsys.readouterr().err
