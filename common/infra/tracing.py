"""Optional OpenTelemetry tracing: ``CHRONOQ_TRACING=on`` with the ``otel`` extra installed.

A job's trace runs from the request that created it to the call its ``http`` handler makes:
the API stores the W3C Trace Context of its create span on the job's row (``trace_context``),
because the scanner publishes much later from the row; every dispatch and update travels with
a ``traceparent`` (and ``tracestate``) Kafka record header, never inside the message's JSON;
the executor runs the attempt in a span whose context the ``http`` handler sends to the target.
Spans go to an OTLP/HTTP collector configured by the standard ``OTEL_*`` variables
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_TRACES_SAMPLER``, …).
docs/tracing.md has the spans and their links.

Off (the default) nothing here imports opentelemetry, :func:`span` returns one shared no-op
context manager, and every helper answers None at once: no header is added anywhere and no
``trace_context`` is written but NULL."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from common.infra.config import PREFIX
from common.infra.errors import ConfigError

if TYPE_CHECKING:
    from common.infra.config import Settings

log = logging.getLogger(__name__)

#: The extra that installs OpenTelemetry (``pip install 'chronoq[otel]'``).
EXTRA = "otel"
#: The W3C Trace Context fields chronoq carries: on a job's row, as Kafka record headers, and to
#: an ``http`` job's target.
FIELDS = ("traceparent", "tracestate")

#: A W3C Trace Context carrier: ``{"traceparent": "00-…-…-01", "tracestate": "…"}``.
Carrier = dict[str, str]
#: Kafka record headers as kafka-python takes and gives them.
Headers = list[tuple[str, bytes]]

T = TypeVar("T")

# Set by setup(): tracing is on in this process exactly when _tracer is not None.
_tracer: Any = None
_provider: Any = None
_propagator: Any = None
_kinds: Any = None  # opentelemetry.trace.SpanKind
_status: Any = None  # (Status, StatusCode)

#: What :func:`span` returns while tracing is off: one reusable no-op context manager.
_NOOP = contextlib.nullcontext()


def active() -> bool:
    """Whether this process traces (``CHRONOQ_TRACING=on`` and :func:`setup` done)."""
    return _tracer is not None


def check(settings: "Settings") -> None:
    """Raise :class:`ConfigError` naming the extra when tracing is on but OpenTelemetry is not
    installed (called at every service's start, with the other settings' checks)."""
    if not settings.tracing:
        return
    try:
        for module in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter"):
            importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"{PREFIX}TRACING=on needs OpenTelemetry: install chronoq with the '{EXTRA}' extra "
            f"(pip install 'chronoq[{EXTRA}]'); {exc}"
        ) from None


def setup(settings: "Settings", service: str, exporter: Any = None) -> bool:
    """Start tracing in this process as ``chronoq-<service>`` when ``CHRONOQ_TRACING`` is on;
    returns whether it did. Spans are batched to the OTLP/HTTP exporter the ``OTEL_*``
    variables configure, which also becomes the global tracer provider (a user handler's own
    spans join the attempt's trace). ``exporter`` (tests: an in-memory one) takes every span at
    its end instead, and leaves the global provider alone."""
    global _tracer, _provider, _propagator, _kinds, _status
    if not settings.tracing:
        return False
    check(settings)
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    shutdown()
    # The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on).
    provider = TracerProvider(resource=Resource.create({"service.name": f"chronoq-{service}"}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _provider = provider
    _tracer = provider.get_tracer("chronoq")
    # W3C Trace Context only, whatever OTEL_PROPAGATORS says: that is what the row, the record
    # headers and the http call carry.
    _propagator = TraceContextTextMapPropagator()
    _kinds = trace.SpanKind
    _status = (trace.Status, trace.StatusCode)
    log.info("tracing on: spans of chronoq-%s go to %s", service, "OTLP/HTTP" if exporter is None else exporter)
    return True


def shutdown() -> None:
    """Export the spans not yet sent and stop tracing in this process (at a service's stop)."""
    global _tracer, _provider, _propagator
    provider, _provider, _tracer, _propagator = _provider, None, None, None
    if provider is not None:
        try:
            provider.shutdown()
        except Exception:  # noqa: BLE001 - an unreachable collector must not break a clean stop
            log.warning("could not export the last spans", exc_info=True)


# --- the carrier ---------------------------------------------------------------------------


def inject(context: Any = None) -> Carrier | None:
    """The W3C carrier of ``context`` (default: the current one); None when tracing is off or
    there is no span to carry."""
    if _propagator is None:
        return None
    carrier: Carrier = {}
    _propagator.inject(carrier, context=context)
    return carrier or None


def extract(carrier: Mapping[str, str] | None) -> Any:
    """The OpenTelemetry context ``carrier`` describes (a fresh one: not the current), or None
    when tracing is off or there is no carrier."""
    if _propagator is None or not carrier:
        return None
    return _propagator.extract(carrier)


def carrier_of_headers(headers: Iterable[tuple[str, Any]] | None) -> Carrier | None:
    """The :data:`FIELDS` among Kafka record headers (or HTTP headers, any case), or None."""
    if not headers:
        return None
    carrier: Carrier = {}
    for name, value in headers:
        key = name.lower()
        if key in FIELDS and value is not None:
            carrier[key] = value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)
    return carrier or None


def record_headers(carrier: Mapping[str, str] | None) -> Headers | None:
    """``carrier`` as Kafka record headers, or None."""
    if not carrier:
        return None
    return [(name, carrier[name].encode("latin-1")) for name in FIELDS if carrier.get(name)]


def headers_of(messages: Sequence[Any]) -> list[Headers | None] | None:
    """The record headers of each message (from its ``trace``), or None when tracing is off or
    no message carries a trace: the producer then sends no headers at all."""
    if _tracer is None:
        return None
    headers = [record_headers(message.trace) for message in messages]
    return headers if any(headers) else None


def attach(message: T, headers: Iterable[tuple[str, Any]] | None) -> T:
    """``message`` (a decoded dispatch or update) with the trace context of its record's
    ``headers``; the message itself when tracing is off or there is none."""
    if _tracer is None:
        return message
    carrier = carrier_of_headers(headers)
    return dataclasses.replace(message, trace=carrier) if carrier else message  # type: ignore[type-var]


# --- spans ---------------------------------------------------------------------------------


def span(
    name: str, *, parent: Mapping[str, str] | None = None, kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
) -> contextlib.AbstractContextManager[Any]:
    """A span made current for the block, child of the context in ``parent`` (a carrier) or
    else of the current one; it yields the span (None when off) and records an exception that
    leaves the block. Off, it returns one shared no-op context manager."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(
        name, context=extract(parent), kind=_kinds[kind.upper()], attributes=attributes,
    )


def failed(span_: Any, reason: str) -> None:
    """Mark ``span_`` (from :func:`span`; None when off) as failed with ``reason``."""
    if span_ is not None:
        status, code = _status
        span_.set_status(status(code.ERROR, reason))


@contextlib.contextmanager
def spans(
    items: Sequence[T], name: Callable[[T], str], *, parent: Callable[[T], Mapping[str, str] | None],
    kind: str = "internal", attributes: Callable[[T], Mapping[str, Any]] | None = None,
) -> Iterator[list[Headers | None] | None]:
    """One span per item, for a step done for a batch at once (a dispatch's publish, a result
    batch's transaction): each a child of ``parent(item)``'s context (a new trace without one),
    all ended when the block ends, marked failed if it raises. Yields the record headers that
    carry each span's context (None when tracing is off)."""
    if _tracer is None or not items:
        yield None
        return
    started = []
    headers: list[Headers | None] = []
    from opentelemetry.trace import set_span_in_context

    for item in items:
        one = _tracer.start_span(
            name(item), context=extract(parent(item)), kind=_kinds[kind.upper()],
            attributes=attributes(item) if attributes else None,
        )
        started.append(one)
        headers.append(record_headers(inject(set_span_in_context(one))))
    try:
        yield headers
    except BaseException as exc:
        for one in started:
            one.record_exception(exc)
            failed(one, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        for one in started:
            one.end()


# --- chronoq's spans -----------------------------------------------------------------------


def attempt_attributes(message: Any) -> dict[str, Any]:
    """The attributes of a span about one attempt of a job (a dispatch or an update)."""
    return {"chronoq.job_id": str(message.job_id), "chronoq.attempt": message.attempt, "chronoq.token": message.token}


def dispatch_spans(messages: Sequence[Any]) -> contextlib.AbstractContextManager[list[Headers | None] | None]:
    """:func:`spans` of publishing dispatches (the scanner's, the API's direct ones): one
    "dispatch <type>" span per message, a child of the job's stored context; yields the
    record headers that carry each span (None when off)."""
    return spans(messages, lambda m: f"dispatch {m.type}", parent=lambda m: m.trace, kind="producer",
                 attributes=attempt_attributes)
