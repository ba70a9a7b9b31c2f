"""What the client raises. Every error is a :class:`ChronoqError`; an answer of the API with an
error status is an :class:`ApiError` (one subclass per status a caller handles differently)
carrying the API's one error shape: ``status`` (HTTP code), ``code``, ``message`` and the
field ``errors``."""

from __future__ import annotations

from typing import Any, Iterator


class ChronoqError(Exception):
    """Something the client could not do. ``attempts`` is how many requests it took."""

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.attempts = attempts


class Unavailable(ChronoqError):
    """The API could not be reached (connection refused or dropped, timeout) or answered
    502/503/504, after the retries that were safe."""


class WaitTimeout(ChronoqError):
    """:meth:`chronoq.client.Client.wait` gave up before the job finished; ``job`` is its last state
    (for :meth:`chronoq.client.Workflows.wait`, the workflow's)."""

    def __init__(self, message: str, job: Any) -> None:
        super().__init__(message)
        self.job = job


class ApiError(ChronoqError):
    """The API answered with an error status: ``status``, ``code``, ``message`` and ``errors``
    (each field and what is wrong with it, as the API names them, e.g.
    ``{"json": {"payload": {"url": ["Missing data for required field."]}}}``)."""

    def __init__(self, status: int, message: str, errors: dict[str, Any] | None = None, *,
                 reason: str = "", retry_after: float | None = None, attempts: int = 1) -> None:
        super().__init__(message, attempts=attempts)
        self.status = status
        self.code = status  # the API's "code" field is the HTTP status
        self.reason = reason  # the API's "status" field, e.g. "Not Found"
        self.errors = errors or {}
        self.retry_after = retry_after

    def field_errors(self) -> list[tuple[str, str]]:
        """(field path, message) of every field error, e.g. ``("payload.url", "Missing data…")``;
        the location (``json``, ``query``, ``headers``) is left out of the path."""
        return list(flatten(self.errors, ""))

    def __str__(self) -> str:
        lines = [f"{self.status} {self.reason}: {self.message}".replace(": : ", ": ")]
        lines += [f"  {path}: {text}" for path, text in self.field_errors()]
        return "\n".join(lines)


_LOCATIONS = {"json", "query", "headers", "form", "files", "path", "querystring"}


def flatten(errors: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(field path, message) of each message in the API's ``errors`` (locations left out)."""
    if isinstance(errors, dict):
        for key, value in errors.items():
            key = str(key)
            if not path and key in _LOCATIONS:
                yield from flatten(value, "")
            else:
                yield from flatten(value, f"{path}.{key}" if path else key)
    elif isinstance(errors, list) and all(isinstance(item, str) for item in errors):
        for item in errors:
            yield (path or "_", item)
    elif isinstance(errors, list):
        for index, item in enumerate(errors):
            yield from flatten(item, f"{path}[{index}]")
    else:
        yield (path or "_", str(errors))


class BadRequest(ApiError):
    """400: the request itself is malformed (not JSON, an untrusted Host)."""


class Unauthorized(ApiError):
    """401: no credential, or a bad one (CHRONOQ_TOKEN)."""


class Forbidden(ApiError):
    """403: the credential's role may not do this."""


class NotFound(ApiError):
    """404: no such job, workflow or schedule (or another tenant's)."""


class Conflict(ApiError):
    """409: the job's (or workflow's) status refuses the operation (the message names it), or a key
    was reused."""


class PayloadTooLarge(ApiError):
    """413: the request or the batch is too large."""


class Unprocessable(ApiError):
    """422: invalid fields; :meth:`field_errors` names each."""


class RateLimited(ApiError):
    """429: over a tenant's limit, after the retries; ``retry_after`` seconds as the API said."""


class ServerError(ApiError):
    """5xx: the API failed."""


class ServiceUnavailable(ServerError, Unavailable):
    """502, 503 or 504 (the database or a proxy is away), after the retries that were safe."""


BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 415: BadRequest, 422: Unprocessable, 429: RateLimited,
}


def error_class(status: int) -> type[ApiError]:
    """The class of an error answer with ``status``."""
    if status in BY_STATUS:
        return BY_STATUS[status]
    if status in (502, 503, 504):
        return ServiceUnavailable
    return ServerError if status >= 500 else ApiError
