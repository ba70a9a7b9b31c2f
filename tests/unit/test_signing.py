"""Delivery signatures: what they cover, and every way verification refuses one."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import uuid
from pathlib import Path

import pytest

from common.core.signing import HEADER, SignatureError, TokenFence, sign, signed_content, verify

JOB = uuid.UUID("0b5a8e4c-3f7e-4d2a-9c1b-6a8f0e2d4c71")
NOW = 1_760_000_000
BODY = b'{"order":42,"note":"caf\xc3\xa9"}'


def make(secrets: tuple[str, ...] = ("s3cret",), **change: object) -> str:
    values: dict[str, object] = dict(timestamp=NOW, job_id=JOB, attempt=2, token=7, body=BODY)
    values.update(change)
    return sign(secrets, **values)  # type: ignore[arg-type]


def check(header: str, secret: str = "s3cret", **change: object) -> None:
    values: dict[str, object] = dict(job_id=JOB, attempt=2, token=7, body=BODY, now=NOW + 10)
    values.update(change)
    verify(header, secret, **values)  # type: ignore[arg-type]


def test_header_name_and_signed_content() -> None:
    assert HEADER == "Chronoq-Signature"
    assert signed_content(NOW, JOB, 2, 7, BODY) == f"{NOW}.{JOB}.2.7.".encode() + BODY


def test_signature_is_hmac_sha256_of_the_signed_content() -> None:
    header = make()
    expected = hmac.new(b"s3cret", f"{NOW}.{JOB}.2.7.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"
    check(header)  # round trip


def test_any_change_to_the_delivery_breaks_the_signature() -> None:
    header = make()
    for change in ({"body": BODY + b" "}, {"body": b""}, {"token": 6}, {"attempt": 3}, {"job_id": uuid.uuid4()}):
        with pytest.raises(SignatureError, match="no v1 signature matches"):
            check(header, **change)
    with pytest.raises(SignatureError, match="no v1 signature matches"):
        check(header, secret="other")
    forged = header.replace(f"t={NOW}", f"t={NOW + 5}")  # a fresher timestamp on an old signature
    with pytest.raises(SignatureError, match="no v1 signature matches"):
        check(forged)


def test_stale_or_future_timestamps_are_refused() -> None:
    header = make()
    check(header, now=NOW + 300)
    check(header, now=NOW - 300)
    with pytest.raises(SignatureError, match="stale signature: t=1760000000 is 301s from now"):
        check(header, now=NOW + 301)
    with pytest.raises(SignatureError, match="stale"):
        check(header, now=NOW - 301)
    check(header, now=NOW + 3000, tolerance=3600)


def test_two_secrets_during_a_rotation() -> None:
    header = make(("new-secret", "old-secret"))
    assert re.fullmatch(rf"t={NOW},v1=[0-9a-f]{{64}},v1=[0-9a-f]{{64}}", header)
    check(header, secret="new-secret")
    check(header, secret="old-secret")
    with pytest.raises(SignatureError):
        check(header, secret="unrelated")


@pytest.mark.parametrize(
    "header, reason",
    [
        ("", "not key=value"),
        ("garbage", "not key=value"),
        ("t=abc,v1=00", "give one t="),
        ("t=1,t=2,v1=00", "give one t="),
        ("v1=00", "no t="),
        (f"t={NOW}", "no v1"),
        (f"t={NOW},v2=00", "no v1"),
    ],
)
def test_malformed_headers(header: str, reason: str) -> None:
    with pytest.raises(SignatureError, match=f"malformed Chronoq-Signature header: .*{re.escape(reason)}"):
        check(header)


def test_unknown_schemes_are_skipped() -> None:
    check(make() + ",v2=deadbeef")


def test_sign_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        make(())


def test_token_fence_drops_stale_reruns() -> None:
    fence = TokenFence()
    assert fence.admit(JOB, 5)
    assert fence.admit(JOB, 5)  # the same dispatch again (a retry of the same delivery)
    assert not fence.admit(JOB, 4)
    assert fence.admit(JOB, 6)
    assert not fence.admit(str(JOB), 5)  # job ids compare as text
    assert fence.admit(uuid.uuid4(), 1)  # another job is fenced on its own


def test_the_receiver_check_in_the_docs_verifies_a_real_delivery() -> None:
    """docs/webhooks.md shows receivers a standalone check: it must accept what chronoq sends."""
    doc = (Path(__file__).parents[2] / "docs" / "webhooks.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", doc, re.S)
    namespace: dict[str, object] = {}
    exec(snippet, namespace)  # noqa: S102 - our own documentation
    documented = namespace["verify"]
    now = int(time.time())
    headers = {"X-Chronoq-Job-Id": str(JOB), "X-Chronoq-Attempt": "2", "X-Chronoq-Dispatch-Token": "7",
               "Chronoq-Signature": sign(("old", "s3cret"), timestamp=now, job_id=JOB, attempt=2, token=7, body=BODY)}
    documented(headers, BODY, "s3cret")  # type: ignore[operator]
    with pytest.raises(ValueError, match="bad signature"):
        documented(headers, BODY + b"!", "s3cret")  # type: ignore[operator]
    with pytest.raises(ValueError, match="stale"):
        documented({**headers, "Chronoq-Signature": make()}, BODY, "s3cret")  # type: ignore[operator]
