"""The ``http`` job type: one request on a pooled keep-alive connection (aiohttp); a network
error or a status outside ``expect_status`` fails the attempt.

Every target passes the SSRF policy (:mod:`common.core.netguard`): the connector's resolver
drops refused addresses, IP literals (which aiohttp never resolves) are checked here, and
redirects are followed here, hop by hop, each hop checked again. Each delivery is signed
(:mod:`common.core.signing`) over the exact body bytes sent."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from common.core import signing
from common.core.netguard import GuardedResolver, Policy, TargetRefused
from common.infra.errors import ChronoqError, JobTimeout
from common.infra.tracing import FIELDS as TRACE_HEADERS

from executor_service.context import HandlerContext, PermanentFailure

#: The one error text of every failure before a response arrives (unless detailed errors are
#: on): refused, reset, timed out and unresolvable must look alike, or jobs could map ports.
NO_RESPONSE = "could not reach the target (no response; set CHRONOQ_HTTP_DETAILED_ERRORS=true to see why)"
ERROR_BODY_CHARS = 200  # characters of the response body an error text carries
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Credentials meant for one origin; dropped when a redirect leaves it (as requests does).
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
JOB_ID_HEADER = "X-Chronoq-Job-Id"
ATTEMPT_HEADER = "X-Chronoq-Attempt"
TOKEN_HEADER = "X-Chronoq-Dispatch-Token"
#: Set by chronoq only: a job's own header of the same name is dropped, so none can be forged.
RESERVED_HEADERS = frozenset(h.lower() for h in (JOB_ID_HEADER, ATTEMPT_HEADER, TOKEN_HEADER, signing.HEADER))


class HttpFailed(ChronoqError):
    """The HTTP request failed."""


class Pool:
    """The executor's connection pool: one aiohttp session per event loop, opened on first
    use, so each request reuses a warm connection instead of paying a TCP handshake. The
    session's resolver enforces the policy it was opened with."""

    def __init__(self, size: int) -> None:
        self.size = size
        # One session per policy: an executor has one, tests may mix several on one pool.
        self._sessions: dict[Policy, tuple[aiohttp.ClientSession, GuardedResolver]] = {}

    def session(self, policy: Policy | None = None) -> aiohttp.ClientSession:
        """The pooled session whose connections obey ``policy`` (default: public hosts only)."""
        policy = policy or Policy()
        entry = self._sessions.get(policy)
        if entry is None or entry[0].closed:
            resolver = GuardedResolver(policy)
            session = aiohttp.ClientSession(
                # The DNS cache holds the resolver's answers, which are already checked.
                connector=aiohttp.TCPConnector(limit=self.size, ttl_dns_cache=60, resolver=resolver),
                # Headers and cookies are per job: nothing from one request leaks into the next.
                cookie_jar=aiohttp.DummyCookieJar(),
                # No proxy: a proxy would resolve the host itself, out of the resolver's sight.
                trust_env=False,
            )
            entry = self._sessions[policy] = (session, resolver)
        return entry[0]

    async def close(self) -> None:
        """Close every session and its resolver (aiohttp closes only resolvers it made)."""
        sessions, self._sessions = self._sessions, {}
        for session, resolver in sessions.values():
            if not session.closed:
                await session.close()
            await resolver.close()


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


def _body(payload: dict[str, Any], headers: dict[str, str]) -> bytes:
    """The exact bytes to send (the signature covers them); sets a JSON Content-Type unless
    the job gave one."""
    if payload.get("json") is not None:
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"
        return json.dumps(payload["json"], separators=(",", ":"), ensure_ascii=False).encode()
    if payload.get("body") is not None:
        return str(payload["body"]).encode()
    return b""


def _signed_headers(base: dict[str, str], context: HandlerContext, body: bytes, timestamp: int) -> dict[str, str]:
    headers = {name: value for name, value in base.items() if name.lower() not in RESERVED_HEADERS}
    headers[JOB_ID_HEADER] = str(context.job_id)
    headers[ATTEMPT_HEADER] = str(context.attempt)  # the run, as in the history
    headers[TOKEN_HEADER] = str(context.dispatch_token)
    if context.signing_secrets:
        headers[signing.HEADER] = signing.sign(
            context.signing_secrets, timestamp=timestamp, job_id=context.job_id,
            attempt=context.attempt, token=context.dispatch_token, body=body,
        )
    return headers


def _origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme, (url.host or "").lower(), url.port)


def _keeps_credentials(old: URL, new: URL) -> bool:
    if _origin(old) == _origin(new):
        return True
    # The one change requests also allows: the same host upgraded from http to https on the
    # default ports.
    return (
        old.scheme == "http" and new.scheme == "https" and (old.host or "").lower() == (new.host or "").lower()
        and old.port == 80 and new.port == 443
    )


def _no_response(exc: BaseException, context: HandlerContext) -> ChronoqError:
    """The error of a failure before any response: one text for all unless detailed."""
    if not context.settings.http_detailed_errors:
        return HttpFailed(NO_RESPONSE)
    if isinstance(exc, asyncio.TimeoutError):
        return JobTimeout(f"timed out after {context.timeout_seconds:g}s")
    return HttpFailed(f"{type(exc).__name__}: {exc}")


@dataclass
class _Answer:
    status: int
    text: str = ""
    redirect: URL | None = None  # where to go next, for a redirect that is followed


async def _send(
    session: aiohttp.ClientSession, method: str, url: URL, headers: dict[str, str], body: bytes,
    context: HandlerContext, expected: list[int] | None,
) -> _Answer:
    """One request, no redirect followed; maps aiohttp's errors to the job's."""
    answered = False
    try:
        async with session.request(
            method, url, headers=headers, data=body or None, allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=context.remaining()),
        ) as response:
            answered = True
            status = response.status
            location = response.headers.get("Location")
            if status in REDIRECT_STATUSES and location and not (expected and status in expected):
                return _Answer(status, redirect=response.url.join(URL(location)))
            return _Answer(status, await _read_head(response, context.settings.http_output_bytes))
    except asyncio.TimeoutError as exc:
        if answered:  # the body is slow: the job's own timeout
            raise JobTimeout(f"timed out after {context.timeout_seconds:g}s") from exc
        raise _no_response(exc, context) from None
    except TargetRefused:
        raise
    except ValueError as exc:  # aiohttp.InvalidURL, or a Location that is no URL
        raise HttpFailed(f"invalid URL: {exc}") from None
    except (aiohttp.ClientError, HttpProcessingError, OSError) as exc:
        if answered:
            raise HttpFailed(f"{type(exc).__name__}: {exc}") from exc
        raise _no_response(exc, context) from None


def _redirected(
    status: int, method: str, body: bytes, headers: dict[str, str], old: URL, new: URL,
    secret_names: frozenset[str] = frozenset(),
) -> tuple[str, bytes, dict[str, str]]:
    """The method, body and headers of the request a redirect leads to. Leaving the origin
    drops the credentials: Authorization, cookies, and every header the job marked secret."""
    if status in (301, 302, 303) and method != "HEAD":
        method, body = "GET", b""  # as browsers and requests do; 307 and 308 keep both
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    if not _keeps_credentials(old, new):
        dropped = CREDENTIAL_HEADERS | {name.lower() for name in secret_names}
        headers = {k: v for k, v in headers.items() if k.lower() not in dropped}
    return method, body, headers


async def call(payload: dict[str, Any], context: HandlerContext) -> dict[str, Any]:
    """Send the request, following redirects within the policy; output ``{"status", "body"}``
    (the body's first ``CHRONOQ_HTTP_OUTPUT_BYTES`` as text)."""
    settings = context.settings
    policy = Policy.from_settings(settings)
    method = (payload.get("method") or "POST").upper()
    headers = dict(payload.get("headers") or {})
    if not any(name.lower() == "idempotency-key" for name in headers):
        headers["Idempotency-Key"] = context.idempotency_key  # the job's own key wins if given
    if context.trace_context:
        # The attempt's span (tracing on), unless the job names a trace of its own.
        given = {name.lower() for name in headers}
        if "traceparent" not in given:
            headers.update((name, value) for name, value in context.trace_context.items()
                           if name in TRACE_HEADERS and name not in given)
    body = _body(payload, headers)
    expected = payload.get("expect_status")
    timestamp = int(time.time())  # one delivery, one timestamp, across its redirects
    try:
        url = URL(payload["url"])
    except ValueError as exc:
        raise PermanentFailure(f"invalid URL: {exc}") from None
    limit = max(0, settings.http_max_redirects)
    pool = context.http or Pool(1)
    try:
        for hop in range(limit + 1):
            where = f"redirect {hop} to {url.host!r}" if hop else "target"
            # aiohttp never resolves an IP literal, so the resolver alone would not see one; the
            # host is checked as aiohttp itself parsed it, too.
            problem = policy.static_problem(str(url)) or policy.literal_problem(url.raw_host or "")
            if problem:
                raise PermanentFailure(f"{where} refused: {problem}")
            if context.remaining() <= 0:
                raise JobTimeout(f"timed out after {context.timeout_seconds:g}s")
            try:
                answer = await _send(
                    pool.session(policy), method, url, _signed_headers(headers, context, body, timestamp),
                    body, context, expected,
                )
            except TargetRefused as exc:
                raise PermanentFailure(f"{where} refused: {exc}") from None
            if answer.redirect is None:
                break
            method, body, headers = _redirected(
                answer.status, method, body, headers, url, answer.redirect, context.secret_names,
            )
            url = answer.redirect
        else:
            raise HttpFailed(
                f"too many redirects: HTTP {answer.status} after {limit} followed "
                f"(CHRONOQ_HTTP_MAX_REDIRECTS={limit}); list the status in expect_status to take it as the result"
            )
    finally:
        if context.http is None:
            await pool.close()
    ok = answer.status in expected if expected else 200 <= answer.status < 300
    if not ok:
        want = ", ".join(map(str, expected)) if expected else "2xx"
        raise HttpFailed(f"HTTP {answer.status} (expected {want}): {answer.text[:ERROR_BODY_CHARS]}")
    return {"status": answer.status, "body": answer.text}
