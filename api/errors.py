"""One JSON error shape for every failure: flask-smorest's ``{"code", "status", "message",
"errors"}``, for aborts, unknown routes, 405, 413, invalid JSON, chronoq's own exceptions and
unexpected ones alike."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from flask_smorest import Api
from werkzeug.exceptions import HTTPException, default_exceptions

from common.infra.errors import ChronoqError, DatabaseUnavailable, JobNotFound

log = logging.getLogger(__name__)


class IdempotencyConflict(ChronoqError):
    """This Idempotency-Key was already used with a different request body."""


class JobNotCancellable(ChronoqError):
    """The job has started or finished and can no longer be cancelled."""


def http_error(code: int, message: str, errors: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> HTTPException:
    """A werkzeug exception carrying flask-smorest's payload fields (like ``abort`` does)."""
    exc = default_exceptions[code]()
    exc.data = {"message": message}
    if errors is not None:
        exc.data["errors"] = errors
    if headers:
        exc.data["headers"] = headers
    return exc


class ChronoqApi(Api):
    """flask-smorest's Api, with a message in every error and the headers werkzeug meant to
    send (``Allow`` on a 405)."""

    def handle_http_exception(self, error: HTTPException) -> tuple[dict[str, Any], int, dict[str, str]]:
        payload, code, headers = super().handle_http_exception(error)
        if "message" not in payload:
            payload["message"] = _default_message(error, payload)
        extra = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        return payload, code, {**extra, **(headers or {})}


def _default_message(error: HTTPException, payload: dict[str, Any]) -> str:
    if error.code == 422:
        return "The request is invalid; see errors."
    if error.code == 400 and "json" in payload.get("errors", {}):
        return "The request body is not valid JSON."
    return error.description or error.name


def register_error_handlers(app: Flask, api: ChronoqApi) -> None:
    """Map chronoq's exceptions onto HTTP errors of the common shape."""
    max_bytes = app.config["MAX_CONTENT_LENGTH"]

    def too_large(error: HTTPException) -> Any:
        if getattr(error, "data", None):  # an abort(413, ...) of a view says what was too large itself
            return api.handle_http_exception(error)
        return api.handle_http_exception(
            http_error(413, f"The request body is larger than {max_bytes} bytes (CHRONOQ_MAX_REQUEST_BYTES).")
        )

    def not_found(error: JobNotFound) -> Any:
        return api.handle_http_exception(http_error(404, str(error)))

    def conflict(error: JobNotCancellable) -> Any:
        return api.handle_http_exception(http_error(409, str(error)))

    def idempotency(error: IdempotencyConflict) -> Any:
        return api.handle_http_exception(
            http_error(422, str(error), errors={"headers": {"Idempotency-Key": [str(error)]}})
        )

    def database(error: DatabaseUnavailable) -> Any:
        # The driver's text names hosts and ports; it goes to the log, not to the client.
        log.warning("answering 503: %s", error)
        return api.handle_http_exception(
            http_error(503, "The database is unavailable; try again shortly.", headers={"Retry-After": "5"})
        )

    app.register_error_handler(413, too_large)
    app.register_error_handler(JobNotFound, not_found)
    app.register_error_handler(JobNotCancellable, conflict)
    app.register_error_handler(IdempotencyConflict, idempotency)
    app.register_error_handler(DatabaseUnavailable, database)
