import json
import uuid
from datetime import datetime, timezone

import pytest

from common.core import models
from common.infra.deadletter import DeadLetter
from common.infra.errors import MessageError
from common.core.messages import (
    DEFAULT_TENANT,
    DispatchMessage,
    UpdateMessage,
    decode_dispatch,
    decode_update,
    encode_dispatch,
    encode_update,
)

AT = datetime(2026, 11, 22, 14, 3, 7, 250000, tzinfo=timezone.utc)


def dispatch_message(**kw):
    base = dict(
        job_id=uuid.uuid4(), token=3, name="n", type="noop", payload={"a": 1}, execute_at=AT,
        attempt=1, max_retries=3, timeout_seconds=30.0, misfire_grace_seconds=None,
    )
    return DispatchMessage(**{**base, **kw})


def test_dispatch_round_trip_is_plain_versioned_json():
    message = dispatch_message()
    raw = encode_dispatch(message)
    body = json.loads(raw)
    assert body["v"] == 1 and body["execute_at"] == "2026-11-22T14:03:07.250+00:00"
    assert body["job_id"] == str(message.job_id)
    assert decode_dispatch(raw) == message


def test_update_round_trip():
    message = UpdateMessage(
        job_id=uuid.uuid4(), token=1, status="SUCCESS", attempt=2, at=AT, executor="e1",
        started_at=AT, finished_at=AT, output={"status": 200}, error=None,
    )
    assert decode_update(encode_update(message)) == message


@pytest.mark.parametrize(
    "raw, reason",
    [
        (None, "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1,2]", "not a JSON object"),
        (b'{"v": 2}', "unsupported message version"),
        (encode_dispatch(dispatch_message())[:40], "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_malformed_dispatch_is_rejected_with_a_reason(raw, reason):
    with pytest.raises(MessageError, match=reason):
        decode_dispatch(raw)


def test_missing_and_wrong_fields_are_named():
    body = json.loads(encode_dispatch(dispatch_message()))
    del body["token"]
    body["execute_at"] = "2026-11-22T14:03:07"  # naive
    with pytest.raises(MessageError) as err:
        decode_dispatch(json.dumps(body).encode())
    assert "token" in str(err.value) and "execute_at" in str(err.value)


def test_oversized_message_is_rejected():
    raw = encode_dispatch(dispatch_message(payload={"x": "y" * 2000}))
    with pytest.raises(MessageError, match="exceeds"):
        decode_dispatch(raw, max_bytes=1000)


def test_update_status_must_be_reportable():
    raw = encode_update(UpdateMessage(job_id=uuid.uuid4(), token=1, status="CANCELLED", attempt=1, at=AT, executor="e"))
    with pytest.raises(MessageError, match="status"):
        decode_update(raw)


def test_dead_letter_truncates_the_original():
    body = json.loads(DeadLetter(reason="bad", original="x" * 50).encode(limit=10))
    assert body["reason"] == "bad" and body["original"].startswith("x" * 10) and len(body["original"]) < 30


def test_dispatch_carries_its_tenant():
    message = dispatch_message(tenant="acme")
    body = json.loads(encode_dispatch(message))
    assert body["tenant"] == "acme" and decode_dispatch(encode_dispatch(message)) == message


def test_a_dispatch_without_tenant_belongs_to_the_default_tenant():
    body = json.loads(encode_dispatch(dispatch_message(tenant="acme")))
    del body["tenant"]  # written before tenants existed
    assert decode_dispatch(json.dumps(body).encode()).tenant == DEFAULT_TENANT == models.DEFAULT_TENANT


@pytest.mark.parametrize("tenant", ["", "x" * 65, None, 7])
def test_a_dispatch_with_an_unusable_tenant_is_rejected(tenant):
    body = json.loads(encode_dispatch(dispatch_message()))
    body["tenant"] = tenant
    with pytest.raises(MessageError, match="tenant"):
        decode_dispatch(json.dumps(body).encode())
