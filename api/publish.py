"""Publishing the dispatches of jobs the API claimed when it stored them (jobs due before the
scanner's next horizon). The claim is committed first; a dispatch Kafka does not take is handed
back with ``store.unclaim_all`` (SCHEDULED again, for the scanner's next sweep), and one whose
hand-back fails too is recovered by its lease. Either way nothing is lost (README, "What chronoq
guarantees")."""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from flask import Flask, current_app

from common.core import store
from common.core.messages import DispatchMessage, encode_dispatch
from common.infra import clock, tracing
from common.infra.db import session_scope
from common.infra.errors import BrokerUnavailable, DatabaseUnavailable
from common.infra.kafka import records

from api.context import Runtime

log = logging.getLogger(__name__)

EXTENSION = "chronoq.publisher"


class DirectPublisher:
    """Sends claimed dispatches through the app's producer and hands back those Kafka refuses."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        # Hand-backs of asynchronous failures run here, not on the producer's I/O thread
        # (which would stall every other publish while the database answers).
        self._handbacks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chronoq-handback")

    def publish(self, messages: list[DispatchMessage]) -> set[uuid.UUID]:
        """Queue ``messages`` without waiting for Kafka (single creates). Those Kafka refuses
        later are handed back in the background; those it refuses at once (broker unreachable)
        are handed back before this returns. Returns the jobs handed back (SCHEDULED again)."""
        if not messages:
            return set()
        sent, refused = self._send(messages)
        for message, future in sent:
            future.add_callback(self._acknowledged)
            future.add_errback(self._not_acknowledged, message)
        return self._hand_back(refused, "failed")

    def publish_and_wait(self, messages: list[DispatchMessage], timeout: float = 15.0) -> set[uuid.UUID]:
        """Publish all ``messages`` with one flush and hand back every one Kafka did not
        acknowledge (batch creates, whose answer says which jobs are QUEUED). Returns the jobs
        handed back (SCHEDULED again)."""
        if not messages:
            return set()
        with tracing.dispatch_spans(messages) as headers:
            acked = self._rt.producer().send_all(
                self._rt.settings.topic_jobs, records(messages, encode_dispatch, headers), timeout
            )
        self._rt.metrics.direct_dispatches.labels("published").inc(sum(acked))
        unacked = [message for message, ok in zip(messages, acked) if not ok]
        if unacked:
            log.warning("%d of %d direct dispatches not acknowledged by Kafka; handing them back to the scanner",
                        len(unacked), len(messages))
        return self._hand_back(unacked, "unpublished")

    def close(self) -> None:
        """Finish the hand-backs under way (after the producer was flushed and closed)."""
        self._handbacks.shutdown(wait=True)

    def _send(self, messages: list[DispatchMessage]) -> tuple[list[tuple[DispatchMessage, Any]], list[DispatchMessage]]:
        """(message, future) of each message queued, and the messages refused at once."""
        sent: list[tuple[DispatchMessage, Any]] = []
        try:
            producer = self._rt.producer()
            topic = self._rt.settings.topic_jobs
            with tracing.dispatch_spans(messages) as headers:
                for i, message in enumerate(messages):
                    value = encode_dispatch(message)
                    future = producer.send(topic, message.key, value) if headers is None else \
                        producer.send(topic, message.key, value, headers[i])
                    sent.append((message, future))
        except BrokerUnavailable as exc:
            # The producer now refuses every send until its reconnect cool-down ends: the
            # rest would fail the same way.
            log.warning("direct dispatch of %d jobs failed (%s); they stay SCHEDULED for the scanner",
                        len(messages) - len(sent), exc)
            return sent, messages[len(sent):]
        return sent, []

    def _acknowledged(self, _metadata: Any) -> None:
        self._rt.metrics.direct_dispatches.labels("published").inc()

    def _not_acknowledged(self, message: DispatchMessage, exc: BaseException) -> None:
        log.warning("job %s: Kafka did not acknowledge its direct dispatch (%s); handing it back to the scanner",
                    message.job_id, exc)
        try:
            self._handbacks.submit(self._hand_back, [message], "unpublished")
        except RuntimeError:  # shutting down: no thread left to hand it to
            self._hand_back([message], "unpublished")

    def _hand_back(self, messages: list[DispatchMessage], outcome: str) -> set[uuid.UUID]:
        """SCHEDULED again, for the scanner's next sweep; returns the jobs that were. A job
        cancelled meanwhile stays cancelled."""
        if not messages:
            return set()
        self._rt.metrics.direct_dispatches.labels(outcome).inc(len(messages))
        now: datetime = clock.utcnow()
        try:
            with session_scope(self._rt.settings) as session:
                return store.unclaim_all(session, messages, now=now)
        except DatabaseUnavailable as exc:
            # Still QUEUED with a lease: the scanner dispatches them once the lease runs out.
            log.warning("could not hand back %d direct dispatches (%s); their leases will", len(messages), exc)
        except Exception:  # noqa: BLE001 - on the hand-back thread nobody else would see it
            log.exception("could not hand back %d direct dispatches; their leases will", len(messages))
        return set()


def install(app: Flask, rt: Runtime) -> DirectPublisher:
    """Give ``app`` its publisher."""
    publisher = app.extensions[EXTENSION] = DirectPublisher(rt)
    return publisher


def publisher() -> DirectPublisher:
    """The current app's publisher."""
    return current_app.extensions[EXTENSION]
