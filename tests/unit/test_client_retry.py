"""Which failures the client sends a request again after (chronoq/client.py), with the HTTP
layer replaced by canned answers: the decision is pure logic. The real thing — a connection
dropped after the API stored a job — is tests/integration/test_client.py."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from chronoq import errors
from chronoq.client import Client


def answer(status: int, body: bytes = b'{"status": "ok"}', **headers: str) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body
    response.headers.update({"Content-Type": "application/json", **headers})
    return response


class Canned(requests.Session):
    """Answers from a list (an exception is raised); records the requests."""

    def __init__(self, *answers: Any) -> None:
        super().__init__()
        self.answers = list(answers)
        self.sent: list[tuple[str, str, dict[str, str]]] = []

    def request(self, method: str, url: str, **kw: Any) -> Any:  # type: ignore[override]
        self.sent.append((method, url, dict(kw.get("headers") or {})))
        item = self.answers.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def client(*answers: Any, retries: int = 3) -> tuple[Client, Canned, list[float]]:
    session = Canned(*answers)
    made = Client("http://api.test", "cq_t", retries=retries, session=session)
    pauses: list[float] = []
    made._sleep = pauses.append
    return made, session, pauses


DROPPED = requests.ConnectionError("Connection aborted.")
BUSY = answer(503, b'{"code": 503, "status": "Service Unavailable", "message": "later"}', **{"Retry-After": "5"})


def test_reads_are_retried_after_a_dropped_connection_and_a_503() -> None:
    c, session, pauses = client(DROPPED, BUSY, answer(200))
    assert c.health() == {"status": "ok"}
    assert len(session.sent) == 3 and session.sent[0][2]["Authorization"] == "Bearer cq_t"
    assert 0.25 <= pauses[0] <= 0.375 and pauses[1] == 5.0  # the backoff, then the server's Retry-After


def test_a_create_is_retried_with_the_same_idempotency_key() -> None:
    job = b'{"id": "j1", "name": "n", "type": "noop", "status": "SCHEDULED"}'
    c, session, _ = client(DROPPED, answer(504), answer(200, job))
    assert c.jobs.create("n", "noop", delay_seconds=1).id == "j1"
    keys = {headers["Idempotency-Key"] for _, _, headers in session.sent}
    assert len(session.sent) == 3 and len(keys) == 1 and keys.pop().startswith("client-")


def test_a_post_that_may_have_been_applied_is_not_sent_again() -> None:
    c, session, _ = client(DROPPED)
    with pytest.raises(errors.Unavailable, match="not retried"):
        c.jobs.trigger("j1")
    c, session, _ = client(BUSY)
    with pytest.raises(errors.ServiceUnavailable) as busy:
        c.jobs.rerun("j1")
    assert len(session.sent) == 1 and busy.value.retry_after == 5.0 and isinstance(busy.value, errors.Unavailable)


def test_any_request_is_retried_when_it_never_left_or_was_refused_for_a_limit() -> None:
    import urllib3

    refused = requests.ConnectionError(urllib3.exceptions.MaxRetryError(
        None, "/", urllib3.exceptions.NewConnectionError(None, "refused")))
    job = b'{"id": "j1", "status": "QUEUED"}'
    c, session, pauses = client(refused, answer(429, b"{}", **{"Retry-After": "2"}), answer(200, job))
    assert c.jobs.trigger("j1").status == "QUEUED"
    assert len(session.sent) == 3 and pauses[1] == 2.0


def test_the_retries_run_out() -> None:
    c, session, pauses = client(DROPPED, DROPPED, DROPPED, retries=2)
    with pytest.raises(errors.Unavailable) as down:
        c.jobs.get("j1")
    assert down.value.attempts == 3 and len(pauses) == 2
    c, session, _ = client(*[answer(429, b"{}")] * 3, retries=2)
    with pytest.raises(errors.RateLimited):
        c.jobs.stats()
    assert len(session.sent) == 3
