"""Logging set-up shared by every service: one line per event, UTC timestamps, the service name;
as readable text (the default) or, with ``CHRONOQ_LOG_FORMAT=json``, one JSON object per line
whose fields a log pipeline can index (``job_id``, ``attempt``, ``token`` of a line about a job)."""

from __future__ import annotations

import logging
import sys
import time
from datetime import datetime, timezone
from typing import Any

from pythonjsonlogger.json import JsonFormatter

#: The fields a line about one attempt of a job carries (``log.info(..., extra=job_fields(...))``).
JOB_FIELDS = ("job_id", "attempt", "token")


def job_fields(job_id: Any, attempt: int | None = None, token: int | None = None) -> dict[str, Any]:
    """``extra=`` of a log line about a job: its id, and the attempt and dispatch token when known."""
    fields: dict[str, Any] = {"job_id": str(job_id)}
    if attempt is not None:
        fields["attempt"] = attempt
    if token is not None:
        fields["token"] = token
    return fields


class ChronoqJsonFormatter(JsonFormatter):
    """``{"time": "2026-11-22T14:03:07.250Z", "level": "INFO", "service": "executor",
    "logger": "executor_service.runner", "message": "…", "job_id": "…", "attempt": 1, …}``:
    every ``extra=`` field is a field of its own; an exception is in ``exc_info``."""

    def __init__(self, service: str) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            static_fields={"service": service},
            json_ensure_ascii=False,
        )

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        # The time first, in the text format's form: UTC, milliseconds, Z.
        stamp = datetime.fromtimestamp(record.created, timezone.utc)
        log_record["time"] = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
        super().add_fields(log_record, record, message_dict)


def text_formatter(service: str) -> logging.Formatter:
    """``2026-11-22T14:03:07.250Z INFO scanner common.core.store: …``"""
    formatter = logging.Formatter(
        fmt=f"%(asctime)s.%(msecs)03dZ %(levelname)s {service} %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    formatter.converter = time.gmtime
    return formatter


def make_formatter(service: str, log_format: str = "text") -> logging.Formatter:
    """The formatter of ``CHRONOQ_LOG_FORMAT`` (``text`` or ``json``)."""
    return ChronoqJsonFormatter(service) if log_format == "json" else text_formatter(service)


def setup_logging(level: str = "INFO", service: str = "chronoq", log_format: str = "text") -> None:
    """Log to stderr, one line per event, as text or JSON (see :func:`make_formatter`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(service, log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kafka-python is chatty at INFO about every connection; its warnings still show.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
