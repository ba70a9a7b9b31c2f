"""The ``http`` job type: one request on a pooled keep-alive connection (aiohttp); a network
error or a status outside ``expect_status`` fails the attempt."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from common.core.jobtypes import host_allowed
from common.infra.errors import ChronoqError, JobTimeout

from executor_service.context import HandlerContext, PermanentFailure

BODY_LIMIT = 4096  # bytes of the response body kept as output


class HttpFailed(ChronoqError):
    """The HTTP request failed."""


class Pool:
    """The executor's connection pool: one aiohttp session per event loop, opened on first
    use, so each request reuses a warm connection instead of paying a TCP handshake."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.size, ttl_dns_cache=60),
                # Headers and cookies are per job: nothing from one request leaks into the next.
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


async def _read_head(response: aiohttp.ClientResponse, limit: int) -> str:
    # Read only what is kept: a huge body must not fill memory or outlast the deadline.
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks).decode(response.charset or "utf-8", errors="replace")


async def call(payload: dict[str, Any], context: HandlerContext) -> dict[str, Any]:
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
    pool = context.http or Pool(1)
    try:
        async with pool.session().request(
            payload.get("method") or "POST",
            url,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=remaining),
            # With an allow-list, a redirect could lead to a host that is not on it (SSRF), so
            # redirects are not followed; a 3xx then counts like any other status.
            allow_redirects=not allowed,
            **kwargs,
        ) as response:
            body = await _read_head(response, BODY_LIMIT)
            status = response.status
    except asyncio.TimeoutError as exc:
        raise JobTimeout(f"timed out after {context.timeout_seconds:g}s") from exc
    except (aiohttp.ClientError, ValueError) as exc:  # ValueError: a URL aiohttp cannot use
        raise HttpFailed(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if context.http is None:
            await pool.close()
    expected = payload.get("expect_status")
    ok = status in expected if expected else 200 <= status < 300
    if not ok:
        want = ", ".join(map(str, expected)) if expected else "2xx"
        raise HttpFailed(f"HTTP {status} (expected {want}): {body[:200]}")
    return {"status": status, "body": body}
