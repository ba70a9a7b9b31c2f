"""The ``http`` job type: one request with requests; a network error or a status outside
``expect_status`` fails the attempt."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests

from common.infra.errors import ChronoqError, JobTimeout
from common.core.jobtypes import host_allowed

from executor_service.context import HandlerContext, PermanentFailure

BODY_LIMIT = 4096  # bytes of the response body kept as output


class HttpFailed(ChronoqError):
    """The HTTP request failed."""


def _read_head(response: requests.Response, limit: int, context: HandlerContext) -> str:
    # Read only what is kept: a huge body must not fill memory or outlast the deadline.
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit or context.remaining() <= 0:
            break
    raw = b"".join(chunks)[:limit]
    return raw.decode(response.encoding or "utf-8", errors="replace")


def call(payload: dict[str, Any], context: HandlerContext) -> dict[str, Any]:
    """Send the request; output ``{"status", "body"}`` (the body's first 4 KiB as text)."""
    url = payload["url"]
    host = urlsplit(url).hostname or ""
    allowed = context.settings.http_allowed_hosts
    if not host_allowed(host, allowed):
        raise PermanentFailure(f"host {host!r} is not in CHRONOQ_HTTP_ALLOWED_HOSTS")
    remaining = context.remaining()
    if remaining <= 0:
        raise JobTimeout(f"timed out after {context.timeout_seconds:g}s")
    headers = dict(payload.get("headers") or {})
    if not any(name.lower() == "idempotency-key" for name in headers):
        headers["Idempotency-Key"] = context.idempotency_key  # the job's own key wins if given
    headers.setdefault("X-Chronoq-Job-Id", str(context.job_id))
    headers.setdefault("X-Chronoq-Attempt", str(context.attempt))  # the run, as in the history
    kwargs: dict[str, Any] = {}
    if payload.get("json") is not None:
        kwargs["json"] = payload["json"]
    elif payload.get("body") is not None:
        kwargs["data"] = payload["body"].encode()
    try:
        with requests.request(
            payload.get("method") or "POST",
            url,
            headers=headers,
            timeout=(remaining, remaining),
            stream=True,
            # With an allow-list, a redirect could lead to a host that is not on it (SSRF), so
            # redirects are not followed; a 3xx then counts like any other status.
            allow_redirects=not allowed,
            **kwargs,
        ) as response:
            body = _read_head(response, BODY_LIMIT, context)
            status = response.status_code
    except requests.Timeout as exc:
        raise JobTimeout(f"timed out after {context.timeout_seconds:g}s: {exc}") from exc
    except requests.RequestException as exc:
        raise HttpFailed(f"{type(exc).__name__}: {exc}") from exc
    expected = payload.get("expect_status")
    ok = status in expected if expected else 200 <= status < 300
    if not ok:
        want = ", ".join(map(str, expected)) if expected else "2xx"
        raise HttpFailed(f"HTTP {status} (expected {want}): {body[:200]}")
    return {"status": status, "body": body}
