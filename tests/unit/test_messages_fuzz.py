"""Property tests of the topic decoders: any bytes give a message or a MessageError with a reason,
never another exception, and every decoded message re-encodes to itself."""

import json
import math
import uuid
from collections import namedtuple
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from common.core.messages import (
    DispatchMessage,
    UpdateMessage,
    decode_dispatch,
    decode_update,
    encode_dispatch,
    encode_update,
)
from common.core.states import REPORTABLE
from common.infra.deadletter import DeadLetter
from common.infra.errors import MessageError

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(
    max_examples=300, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
CODECS = [(decode_dispatch, encode_dispatch), (decode_update, encode_update)]
AT = datetime(2026, 11, 22, 14, 3, 7, 250000, tzinfo=timezone.utc)
JOB = "0b7e6e52-5b0c-4c57-9a4c-4f3c1a2b3c4d"
MAX_BYTES = 1_000_000
TRUNCATED = "…(truncated)"

Record = namedtuple("Record", "topic partition offset key value")


def _strict_json(raw: bytes):
    """json.loads as a strict reader does it: no NaN/Infinity."""
    return json.loads(raw, parse_constant=lambda name: pytest.fail(f"non-finite {name} written"))


def _decodes_or_rejects(decode, encode, raw, max_bytes=MAX_BYTES):
    """The property: a MessageError with a short reason, or a clean message that round-trips."""
    try:
        message = decode(raw, max_bytes)
    except MessageError as exc:
        reason = str(exc)
        assert reason and len(reason) < 4000, reason
        return None
    assert type(message.token) is int and type(message.attempt) is int  # not bool
    assert message.key == str(message.job_id).encode()
    raw_again = encode(message)
    _strict_json(raw_again)
    json.dumps(_strict_json(raw_again), ensure_ascii=False).encode("utf-8")  # no lone surrogates
    assert decode(raw_again, max(max_bytes, len(raw_again))) == message
    return message


# --- strategies ------------------------------------------------------------------------------

# Text a valid message's own string fields can hold: anything but NUL and lone surrogates.
clean_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters=["\x00"]), max_size=30)
# Any JSON value a payload/output may hold (NUL inside nested strings is fine).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=15,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
aware_datetimes = st.datetimes(
    min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31),
    timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]),
)
positive_int32 = st.integers(min_value=1, max_value=2**31 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)

dispatch_messages = st.builds(
    DispatchMessage,
    job_id=st.uuids(),
    token=st.integers(min_value=1, max_value=2**63 - 1),
    name=clean_text,
    type=clean_text.filter(bool),
    payload=json_objects,
    execute_at=aware_datetimes,
    attempt=positive_int32,
    max_retries=st.integers(min_value=0, max_value=10),
    timeout_seconds=st.floats(min_value=0, max_value=86400 * 365, exclude_min=True),
    misfire_grace_seconds=st.none() | finite,
    key_attempt=st.none() | positive_int32,
)
update_messages = st.builds(
    UpdateMessage,
    job_id=st.uuids(),
    token=st.integers(min_value=1, max_value=2**63 - 1),
    status=st.sampled_from(sorted(s.value for s in REPORTABLE)),
    attempt=positive_int32,
    at=aware_datetimes,
    executor=clean_text,
    started_at=st.none() | aware_datetimes,
    finished_at=st.none() | aware_datetimes,
    next_attempt_at=st.none() | aware_datetimes,
    output=json_values,
    error=st.none() | clean_text,
)
messages = st.one_of(
    dispatch_messages.map(lambda m: (m, decode_dispatch, encode_dispatch)),
    update_messages.map(lambda m: (m, decode_update, encode_update)),
)

# JSON text fragments that once broke the decoders or the re-encoding of what they decoded.
hostile_fragments = st.one_of(
    st.builds(lambda n: "9" * n, st.integers(min_value=1, max_value=6000)),  # huge integers
    st.builds(lambda n: "[" * n + "]" * n, st.integers(min_value=1, max_value=12_000)),  # deep nesting
    st.builds(lambda n: '{"a":' * n + "1" + "}" * n, st.integers(min_value=50, max_value=2000)),
    st.sampled_from([
        "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "true", "false", "null", "1.0", "-0.0",
        '"\\ud800"', '"\\udfff x"', '"\\ud83d\\ude00"', '{"\\ud800":1}', '"\\u0000"', '"3"', '"1_0"', '"nan"',
        '"0001-01-01T00:00:00+01:00"', '"9999-12-31T23:59:59-01:00"', '"2026-11-22T14:03:07"', '"2026-13-01T00:00:00Z"',
        str(2**63), str(2**31), "0", "-1", "[]", "{}", '"SUCCESS"', '"CANCELLED"', f'"{JOB.upper()}"', f'"{{{JOB}}}"',
    ]),
    json_values.map(json.dumps),
    st.text(st.characters(categories=["Cs", "Cc", "L"]), max_size=10).map(json.dumps),  # lone surrogates, NUL
)


@st.composite
def mutated_messages(draw):
    """A valid message whose fields (and a few new ones) are replaced by hostile JSON text."""
    message, decode, encode = draw(messages)
    body = json.loads(encode(message))
    names = sorted(body) + ["v", "unknown"]
    replaced = draw(st.dictionaries(st.sampled_from(names), hostile_fragments, min_size=1, max_size=3))
    for i, name in enumerate(replaced):
        body[name] = f"@@{i}@@"
    text = json.dumps(body)
    for i, fragment in enumerate(replaced.values()):
        text = text.replace(f'"@@{i}@@"', fragment)
    return text.encode("utf-8", errors="surrogatepass"), decode, encode


@st.composite
def damaged_messages(draw):
    """A valid message's bytes, truncated, with bytes flipped, inserted or deleted."""
    message, decode, encode = draw(messages)
    raw = bytearray(encode(message))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete"]))
        if op == "truncate":
            del raw[at:]
        elif op == "flip" and at < len(raw):
            raw[at] = draw(st.integers(min_value=0, max_value=255))
        elif op == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"\xef\xbb\xbf", b"\x00", b"[" * 70, b'"']))
        else:
            del raw[at:at + draw(st.integers(min_value=1, max_value=8))]
    return bytes(raw), decode, encode


# --- any input: a message or a MessageError --------------------------------------------------

@FUZZ
@given(raw=st.none() | st.binary(max_size=300))
@example(raw=b"[" * 10_000 + b"]" * 10_000)
@example(raw=b"\xef\xbb\xbf{}")
@example(raw=b"\x00" * 8)
def test_arbitrary_bytes_are_decoded_or_rejected(raw):
    for decode, encode in CODECS:
        _decodes_or_rejects(decode, encode, raw)


@FUZZ
@given(case=damaged_messages())
def test_damaged_messages_are_decoded_or_rejected(case):
    raw, decode, encode = case
    _decodes_or_rejects(decode, encode, raw)


@SLOW
@given(case=mutated_messages())
def test_messages_with_hostile_fields_are_decoded_or_rejected(case):
    raw, decode, encode = case
    _decodes_or_rejects(decode, encode, raw)


@FUZZ
@given(case=messages)
def test_valid_messages_round_trip_exactly(case):
    message, decode, encode = case
    raw = encode(message)
    assert decode(raw) == message
    assert _decodes_or_rejects(decode, encode, raw) == message


# --- each class of bad input, by name --------------------------------------------------------

def _dispatch_json(**fields_as_json_text):
    """A valid dispatch message as JSON text, with some fields' values replaced by raw JSON text."""
    body = json.loads(encode_dispatch(DispatchMessage(
        job_id=uuid.UUID(JOB), token=3, name="n", type="noop", payload={"a": 1}, execute_at=AT,
        attempt=1, max_retries=3, timeout_seconds=30.0,
    )))
    for name in fields_as_json_text:
        body[name] = f"@@{name}@@"
    text = json.dumps(body)
    for name, value in fields_as_json_text.items():
        text = text.replace(f'"@@{name}@@"', value)
    return text.encode()


def _update_json(**fields_as_json_text):
    body = json.loads(encode_update(UpdateMessage(
        job_id=uuid.UUID(JOB), token=1, status="SUCCESS", attempt=1, at=AT, executor="e1",
    )))
    for name in fields_as_json_text:
        body[name] = f"@@{name}@@"
    text = json.dumps(body)
    for name, value in fields_as_json_text.items():
        text = text.replace(f'"@@{name}@@"', value)
    return text.encode()


BAD_DISPATCH = [
    pytest.param(None, "empty message", id="null value"),
    pytest.param(_dispatch_json()[:-20], "not valid JSON", id="truncated"),
    pytest.param(b"[" * 10_000 + b"]" * 10_000, "nested deeper than 64", id="10000-deep array"),
    pytest.param(_dispatch_json(payload='{"a":' + "[" * 10_000 + "]" * 10_000 + "}"), "nested deeper", id="10000-deep payload"),
    # decoded before, but json.dumps raised RecursionError when the executor re-encoded it
    pytest.param(_dispatch_json(payload='{"a":' + "[" * 900 + "]" * 900 + "}"), "nested deeper", id="900-deep payload"),
    pytest.param(_dispatch_json(token="9" * 5000), "5000 digits", id="5000-digit token"),
    pytest.param(_dispatch_json(payload='{"a":' + "9" * 5000 + "}"), "5000 digits", id="5000-digit int in payload"),
    pytest.param(_dispatch_json(token="9" * 30), "token", id="token beyond bigint"),
    pytest.param(_dispatch_json(attempt=str(2**31)), "attempt", id="attempt beyond int32"),
    pytest.param(_dispatch_json(timeout_seconds="NaN"), "non-finite number NaN", id="NaN"),
    pytest.param(_dispatch_json(payload='{"a":NaN}'), "non-finite number NaN", id="NaN in payload"),
    pytest.param(_dispatch_json(misfire_grace_seconds="-Infinity"), "non-finite", id="-Infinity"),
    pytest.param(_dispatch_json(timeout_seconds="1e400"), "overflows a float", id="1e400"),
    pytest.param(_dispatch_json(timeout_seconds="1e300"), "timeout_seconds", id="timeout beyond Thread.join"),
    pytest.param(_dispatch_json(timeout_seconds="true"), "timeout_seconds", id="bool timeout"),
    pytest.param(_dispatch_json(timeout_seconds='"30"'), "timeout_seconds", id="numeric string timeout"),
    pytest.param(_dispatch_json(token="true"), "token", id="bool token"),
    pytest.param(_dispatch_json(key_attempt="true"), "key_attempt", id="bool key_attempt"),
    pytest.param(_dispatch_json(token="3.0"), "token", id="float token"),
    pytest.param(_dispatch_json(v="true"), "unsupported message version True", id="bool version"),
    pytest.param(_dispatch_json(v='"' + "x" * 100_000 + '"'), r"version 'x+…", id="huge version is cut"),
    pytest.param(b'{"v":1,"name":"\xff"}', "not UTF-8", id="invalid UTF-8"),
    pytest.param(b'{"v":1,"name":"\xed\xa0\x80"}', "not UTF-8", id="UTF-8-encoded surrogate"),
    pytest.param(b"\xef\xbb\xbf" + _dispatch_json(), "BOM", id="BOM"),
    pytest.param(_dispatch_json().decode().encode("utf-16"), "not UTF-8", id="UTF-16"),
    pytest.param(_dispatch_json(name='"\\ud800"'), "lone UTF-16 surrogate", id="lone surrogate"),
    pytest.param(_dispatch_json(payload='{"\\udc00":1}'), "lone UTF-16 surrogate", id="lone surrogate in a key"),
    pytest.param(_dispatch_json(name='"a\\u0000b"'), "NUL", id="NUL in name"),
    pytest.param(b"\x00" * 16, "not valid JSON", id="NUL bytes"),
    pytest.param(_dispatch_json(execute_at='"0001-01-01T00:00:00+01:00"'), "execute_at", id="datetime before year 1 in UTC"),
    pytest.param(_dispatch_json(execute_at='"9999-12-31T23:59:59-01:00"'), "execute_at", id="datetime after 9999 in UTC"),
    pytest.param(_dispatch_json(payload="[1]"), "payload", id="payload not an object"),
    pytest.param(b'"just a string"', "not a JSON object", id="not an object"),
]


@pytest.mark.parametrize("raw, reason", BAD_DISPATCH)
def test_each_kind_of_bad_dispatch_is_rejected_with_its_reason(raw, reason):
    with pytest.raises(MessageError, match=reason) as err:
        decode_dispatch(raw)
    assert len(str(err.value)) < 300


@pytest.mark.parametrize(
    "raw, reason",
    [
        pytest.param(_update_json(output="[" * 10_000 + "]" * 10_000), "nested deeper", id="deep output"),
        pytest.param(_update_json(output="NaN"), "non-finite", id="NaN output"),
        pytest.param(_update_json(output='"\\ud800"'), "surrogate", id="lone surrogate output"),
        pytest.param(_update_json(error='"\\udfff"'), "surrogate", id="lone surrogate error"),
        pytest.param(_update_json(executor='"e\\u0000"'), "NUL", id="NUL in executor"),
        pytest.param(_update_json(status='"CANCELLED"'), '"status"', id="unreportable status"),
        pytest.param(_update_json(token="false"), "token", id="bool token"),
        pytest.param(_update_json(at='"0001-01-01T00:30:00+01:00"'), '"at"', id="datetime out of range"),
    ],
)
def test_each_kind_of_bad_update_is_rejected_with_its_reason(raw, reason):
    with pytest.raises(MessageError, match=reason):
        decode_update(raw)


def test_oversized_message_is_rejected_before_parsing():
    raw = b"[" * 2000  # would be "too deep" if it were parsed
    with pytest.raises(MessageError, match="exceeds the limit of 1000"):
        decode_dispatch(raw, max_bytes=1000)


def test_values_that_stay_valid_are_kept():
    """NUL and escaped astral characters inside a payload are fine (stored as JSON escapes)."""
    message = decode_dispatch(_dispatch_json(payload='{"a":"x\\u0000y","b":"\\ud83d\\ude00","c":' + "9" * 4300 + "}"))
    assert message.payload["a"] == "x\x00y" and message.payload["b"] == "\U0001F600"
    assert decode_dispatch(encode_dispatch(message)) == message


@pytest.mark.parametrize("raw", [bytearray(_dispatch_json()), memoryview(_dispatch_json())])
def test_bytes_like_values_decode(raw):
    assert decode_dispatch(raw).token == 3


def test_a_str_is_not_bytes():
    with pytest.raises(MessageError, match="not bytes"):
        decode_dispatch(_dispatch_json().decode())


# --- dead letters ----------------------------------------------------------------------------

LIMIT = 10_000
record_bytes = st.none() | st.binary(max_size=200) | st.builds(
    lambda chunk, times: chunk * times, st.binary(min_size=1, max_size=16), st.integers(min_value=1, max_value=20_000)
)
odd_text = st.text(st.characters(categories=["Cs", "Cc", "L", "So"]), max_size=50)


def _check_dead_letter(letter, limit=LIMIT):
    out = letter.encode(limit)
    out.decode("ascii")  # plain ASCII: valid UTF-8 for any reader
    body = _strict_json(out)
    json.dumps(body, ensure_ascii=False).encode("utf-8")  # no lone surrogates written
    assert body["v"] == 1
    for name in ("reason", "job_id", "original", "source_topic"):
        if body.get(name) is not None:
            assert len(body[name]) <= limit + len(TRUNCATED)
    assert len(out) <= 6 * 5 * (limit + len(TRUNCATED)) + 2000
    return body


@FUZZ
@given(
    key=record_bytes | odd_text, value=record_bytes | odd_text, reason=odd_text,
    partition=st.none() | st.integers(), offset=st.none() | st.integers(),
)
@example(key=b"\xff" * 100, value=b"\xed\xa0\x80" * 50_000, reason="bad", partition=0, offset=7)
@example(key=None, value=None, reason="empty message (null value)", partition=None, offset=None)
def test_dead_letter_from_any_record_encodes_to_bounded_json(key, value, reason, partition, offset):
    letter = DeadLetter.from_record(Record("jobs", partition, offset, key, value), reason)
    body = _check_dead_letter(letter)
    assert (body["original"] is None) == (value is None)
    assert (body["job_id"] is None) == (key is None)
    assert body["partition"] == partition and body["offset"] == offset
    if isinstance(value, bytes) and len(value) <= LIMIT // 4:
        assert body["original"] == value.decode("utf-8", errors="replace")
    if reason.isascii():
        assert body["reason"] == reason


@FUZZ
@given(extra=st.dictionaries(st.text(max_size=5), json_values | st.floats() | st.builds(object), max_size=4),
       limit=st.integers(min_value=0, max_value=200))
def test_dead_letter_with_any_extra_encodes(extra, limit):
    body = _check_dead_letter(DeadLetter(reason="r" * 300, job_id="j", original="o" * 300, extra=extra), limit)
    assert body["reason"].startswith("r" * limit) and body["original"].startswith("o" * limit)


def test_dead_letter_of_an_odd_record():
    class Unprintable:
        def __str__(self):
            raise RuntimeError("no")

    letter = DeadLetter.from_record(object(), "no attributes at all")
    assert _check_dead_letter(letter)["source_topic"] is None
    letter = DeadLetter.from_record(Record(Unprintable(), 0, 1, bytearray(b"k"), memoryview(b"v")), "odd")
    body = _check_dead_letter(letter)
    assert body["source_topic"] == "<unprintable Unprintable>" and (body["job_id"], body["original"]) == ("k", "v")
    body = _check_dead_letter(DeadLetter(reason="nan", extra={"x": math.nan, (1, 2): "tuple key"}))
    assert body["reason"] == "nan" and "encode_error" in body


def test_dead_letter_of_a_huge_value_is_cut():
    value = b"x" * 5_000_000
    body = _check_dead_letter(DeadLetter.from_record(Record("jobs", 0, 1, b"k", value), "too big"))
    assert body["original"] == "x" * LIMIT + TRUNCATED
