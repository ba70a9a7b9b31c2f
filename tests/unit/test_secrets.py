"""Sealing, redacting and revealing secret values, and the keyring: pure, no database."""

from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet
from marshmallow import ValidationError

from common.core.secrets import (
    MASK,
    SECRET_FIELDS,
    Keyring,
    SecretError,
    has_secrets,
    new_key,
    open_text,
    redact,
    reseal,
    reseal_text,
    reveal,
    seal,
    seal_text,
)
from common.infra.config import load_settings
from common.infra.errors import ConfigError

KEY_A = new_key()
KEY_B = new_key()


def keyring(keys: str) -> Keyring:
    result = Keyring.from_settings(load_settings({}, secret_key=keys))
    assert result is not None
    return result


def http_payload(**headers: object) -> dict:
    return {"url": "https://api.example.com/hook", "headers": headers}


def test_no_key_means_no_keyring_and_a_malformed_key_names_the_variable_not_the_key() -> None:
    assert Keyring.from_settings(load_settings({})) is None
    assert Keyring.from_settings(load_settings({}, secret_key=" , ")) is None
    bad = "not-a-fernet-key-but-a-secret-nonetheless"
    with pytest.raises(ConfigError) as info:
        Keyring.from_settings(load_settings({}, secret_key=f"{KEY_A},{bad}"))
    message = str(info.value)
    assert "CHRONOQ_SECRET_KEY" in message and "key 2 of 2" in message
    assert bad not in message and KEY_A not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_keyring_is_cached_per_key_string() -> None:
    assert keyring(KEY_A) is keyring(KEY_A)
    assert keyring(KEY_A) is not keyring(f"{KEY_A},{KEY_B}")


def test_new_key_is_a_usable_fernet_key_as_text() -> None:
    key = new_key()
    assert isinstance(key, str)
    assert Fernet(key).decrypt(Fernet(key).encrypt(b"x")) == b"x"


def test_secret_fields_name_headers_of_http_and_env_of_shell() -> None:
    assert SECRET_FIELDS == {"http": "headers", "shell": "env"}


def test_has_secrets_only_for_marked_values_in_the_secret_field() -> None:
    assert has_secrets("http", http_payload(Authorization={"secret": "s3cr3t"}))
    assert has_secrets("shell", {"argv": ["true"], "env": {"TOKEN": {"encrypted": "t"}}})
    assert not has_secrets("http", http_payload(Accept="text/plain"))
    assert not has_secrets("http", {"url": "https://x.example"})
    # Only the declared field of a declared type counts.
    assert not has_secrets("noop", {"headers": {"A": {"secret": "s"}}})
    assert not has_secrets("shell", {"argv": ["true"], "headers": {"A": {"secret": "s"}}})


def test_seal_then_reveal_round_trips_and_stores_no_clear_text() -> None:
    ring = keyring(KEY_A)
    payload = http_payload(Authorization={"secret": "Bearer s3cr3t"}, Accept="text/plain")
    sealed = seal("http", payload, ring)
    assert payload["headers"]["Authorization"] == {"secret": "Bearer s3cr3t"}  # input untouched
    assert set(sealed["headers"]["Authorization"]) == {"encrypted"}
    assert sealed["headers"]["Accept"] == "text/plain"
    assert sealed["url"] == payload["url"]
    assert "s3cr3t" not in json.dumps(sealed)
    clear = reveal("http", sealed, ring)
    assert clear["headers"] == {"Authorization": "Bearer s3cr3t", "Accept": "text/plain"}


def test_seal_without_a_keyring_is_a_validation_error_naming_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        seal("shell", {"argv": ["true"], "env": {"TOKEN": {"secret": "x"}, "MODE": "a"}}, None)
    assert info.value.messages == {"env": {"TOKEN": ["secret values need CHRONOQ_SECRET_KEY on the API"]}}


def test_seal_refuses_a_malformed_secret_object() -> None:
    with pytest.raises(ValidationError) as info:
        seal("http", http_payload(Authorization={"secret": 5}), keyring(KEY_A))
    assert list(info.value.messages["headers"]) == ["Authorization"]


def test_redact_masks_marked_values_and_leaves_the_rest() -> None:
    ring = keyring(KEY_A)
    sealed = seal("http", http_payload(Authorization={"secret": "s3cr3t"}, Accept="text/plain"), ring)
    shown = redact("http", sealed)
    assert shown["headers"] == {"Authorization": MASK, "Accept": "text/plain"}
    assert "encrypted" not in json.dumps(shown)
    assert sealed["headers"]["Authorization"] != MASK  # the stored payload is not changed
    assert redact("http", http_payload(Authorization={"secret": "s3cr3t"}))["headers"]["Authorization"] == MASK


def test_redact_returns_the_same_object_when_there_is_nothing_to_redact() -> None:
    plain = http_payload(Accept="text/plain")
    assert redact("http", plain) is plain
    other = {"headers": {"A": {"secret": "s"}}}
    assert redact("noop", other) is other
    empty: dict = {}
    assert redact("shell", empty) is empty


def test_reveal_with_the_wrong_key_names_the_field_and_never_the_token() -> None:
    sealed = seal("http", http_payload(Authorization={"secret": "s3cr3t"}), keyring(KEY_A))
    token = sealed["headers"]["Authorization"]["encrypted"]
    with pytest.raises(SecretError) as info:
        reveal("http", sealed, keyring(KEY_B))
    message = str(info.value)
    assert "payload.headers.Authorization" in message and "CHRONOQ_SECRET_KEY" in message
    assert token not in message and "s3cr3t" not in message


def test_reveal_without_a_keyring_or_with_garbage_is_a_secret_error() -> None:
    sealed = seal("shell", {"argv": ["true"], "env": {"TOKEN": {"secret": "x"}}}, keyring(KEY_A))
    with pytest.raises(SecretError, match="payload.env.TOKEN is encrypted but CHRONOQ_SECRET_KEY is not set"):
        reveal("shell", sealed, None)
    for garbage in ("not a token", "ünïcode", ""):
        with pytest.raises(SecretError, match="payload.env.TOKEN"):
            reveal("shell", {"argv": ["true"], "env": {"TOKEN": {"encrypted": garbage}}}, keyring(KEY_A))


def test_reveal_returns_the_same_object_when_nothing_is_encrypted() -> None:
    plain = {"argv": ["true"], "env": {"MODE": "a"}}
    assert reveal("shell", plain, None) is plain


def test_two_keys_old_tokens_stay_readable_and_reseal_makes_them_need_the_new_key_alone() -> None:
    old = seal("http", http_payload(Authorization={"secret": "s3cr3t"}), keyring(KEY_A))
    both = keyring(f"{KEY_B},{KEY_A}")
    assert reveal("http", old, both)["headers"]["Authorization"] == "s3cr3t"
    # New values are sealed with the first key only.
    fresh = seal("http", http_payload(Authorization={"secret": "new"}), both)
    assert reveal("http", fresh, keyring(KEY_B))["headers"]["Authorization"] == "new"
    with pytest.raises(SecretError):
        reveal("http", fresh, keyring(KEY_A))

    rotated, count = reseal("http", old, both)
    assert count == 1
    assert reveal("http", rotated, keyring(KEY_B))["headers"]["Authorization"] == "s3cr3t"
    with pytest.raises(SecretError):
        reveal("http", rotated, keyring(KEY_A))
    again, count = reseal("http", rotated, both)  # idempotent: a second run is harmless
    assert count == 1 and reveal("http", again, keyring(KEY_B))["headers"]["Authorization"] == "s3cr3t"


def test_reseal_of_a_payload_without_secrets_changes_nothing() -> None:
    plain = http_payload(Accept="text/plain")
    assert reseal("http", plain, keyring(KEY_A)) == (plain, 0)


def test_seal_text_and_open_text_with_and_without_a_key() -> None:
    ring = keyring(KEY_A)
    stored = seal_text("whsec_abc", ring)
    assert stored.startswith("fernet:") and "whsec_abc" not in stored
    assert open_text(stored, ring) == "whsec_abc"
    # No key: stored as is; a value without the prefix (from before a key was set) passes through.
    assert seal_text("whsec_abc", None) == "whsec_abc"
    assert open_text("whsec_abc", ring) == "whsec_abc"
    assert open_text("whsec_abc", None) == "whsec_abc"
    with pytest.raises(SecretError, match="CHRONOQ_SECRET_KEY is not set"):
        open_text(stored, None)
    with pytest.raises(SecretError) as info:
        open_text(stored, keyring(KEY_B))
    assert stored.removeprefix("fernet:") not in str(info.value)


def test_reseal_text_rotates_sealed_text_and_seals_clear_text() -> None:
    stored = seal_text("whsec_abc", keyring(KEY_A))
    rotated = reseal_text(stored, keyring(f"{KEY_B},{KEY_A}"))
    assert open_text(rotated, keyring(KEY_B)) == "whsec_abc"
    sealed = reseal_text("whsec_plain", keyring(KEY_B))
    assert sealed.startswith("fernet:") and open_text(sealed, keyring(KEY_B)) == "whsec_plain"
    with pytest.raises(SecretError):
        reseal_text(stored, keyring(KEY_B))


# --- payload schemas: how secret values and headers are accepted (common.core.jobtypes) ------


def load_errors(job_type: str, payload: dict, settings: object = None) -> dict:
    from common.core.jobtypes import load_payload

    with pytest.raises(ValidationError) as info:
        load_payload(job_type, payload, settings)  # type: ignore[arg-type]
    return info.value.messages


def test_schema_accepts_strings_and_secret_objects() -> None:
    from common.core.jobtypes import load_payload

    data = load_payload("http", http_payload(Authorization={"secret": "Bearer x"}, Accept="text/plain"))
    assert data["headers"] == {"Authorization": {"secret": "Bearer x"}, "Accept": "text/plain"}
    data = load_payload("shell", {"argv": ["true"], "env": {"TOKEN": {"secret": "x"}, "MODE": ""}})
    assert data["env"] == {"TOKEN": {"secret": "x"}, "MODE": ""}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"encrypted": "gAAAAA"}, "encrypted values cannot be sent"),
        ({"secret": "x", "encrypted": "y"}, "encrypted values cannot be sent"),
        ({"secret": 5}, 'the "secret" value must be a string'),
        ({"secret": "x", "extra": 1}, 'must be a string or {"secret": "<value>"}'),
        ({}, 'must be a string or {"secret": "<value>"}'),
        (7, 'must be a string or {"secret": "<value>"}'),
        (None, 'must be a string or {"secret": "<value>"}'),
        ("***", "send the secret again; '***' is how chronoq shows a stored secret"),
        ({"secret": "***"}, "send the secret again"),
    ],
)
def test_schema_refuses_other_values_on_their_key(value: object, expected: str) -> None:
    errors = load_errors("http", http_payload(Authorization=value, Accept="text/plain"))
    assert list(errors) == ["headers"] and list(errors["headers"]) == ["Authorization"]
    assert expected in errors["headers"]["Authorization"][0]
    errors = load_errors("shell", {"argv": ["true"], "env": {"TOKEN": value}})
    assert expected in errors["env"]["TOKEN"][0]


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", {"secret": "a\r\nb"}, "a\0b"])
def test_header_values_with_cr_lf_or_nul_are_refused(value: object) -> None:
    errors = load_errors("http", http_payload(**{"X-Note": value}))
    assert errors["headers"]["X-Note"] == ["the value may not contain CR, LF or NUL"]


@pytest.mark.parametrize("name", ["X-Note\r\nX-Injected", "Bad Name", "X:Colon", "Ünï", ""])
def test_header_names_must_be_tokens(name: str) -> None:
    errors = load_errors("http", http_payload(**{name: "v"}))
    assert list(errors["headers"]) == [name]


def test_header_count_and_size_are_bounded() -> None:
    from common.core.jobtypes import MAX_ENTRIES, MAX_HEADER_VALUE_CHARS, load_payload

    many = {f"X-H{i}": "v" for i in range(MAX_ENTRIES)}
    assert len(load_payload("http", http_payload(**many))["headers"]) == MAX_ENTRIES
    errors = load_errors("http", http_payload(**many, Extra="v"))
    assert errors["headers"] == [f"at most {MAX_ENTRIES} headers, got {MAX_ENTRIES + 1}"]
    errors = load_errors("http", http_payload(Big="x" * (MAX_HEADER_VALUE_CHARS + 1)))
    assert "longer than" in errors["headers"]["Big"][0]
    assert load_errors("http", {"url": "https://x.example", "headers": ["A: b"]})["headers"] == [
        "must be an object of header names to values"
    ]


def test_executor_loads_a_revealed_payload() -> None:
    from common.core.jobtypes import load_payload

    ring = keyring(KEY_A)
    sealed = seal("http", http_payload(Authorization={"secret": "Bearer x"}), ring)
    assert load_errors("http", sealed)["headers"]["Authorization"]  # sealed: not runnable as is
    data = load_payload("http", reveal("http", sealed, ring))
    assert data["headers"] == {"Authorization": "Bearer x"}


def test_url_problem_is_asked_with_settings_and_its_answer_lands_on_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core import jobtypes

    calls: list[tuple] = []

    def fake(url: str, settings: object, *, resolve: bool = True) -> str | None:
        calls.append((url, settings, resolve))
        return "host 'evil.example' resolves to a loopback address" if "evil" in url else None

    monkeypatch.setattr(jobtypes, "url_problem", fake)  # where load_payload looks it up
    settings = load_settings({})
    assert jobtypes.load_payload("http", {"url": "https://good.example/x"}, settings)["url"] == "https://good.example/x"
    errors = load_errors("http", {"url": "https://evil.example/x"}, settings)
    assert errors == {"url": ["host 'evil.example' resolves to a loopback address"]}
    assert calls == [("https://good.example/x", settings, True), ("https://evil.example/x", settings, True)]
    # Without settings (the executor's load) the policy is not asked: it checks at connect time.
    jobtypes.load_payload("http", {"url": "https://evil.example/x"})
    assert len(calls) == 2


def test_real_network_policy_refuses_the_metadata_address_and_unlisted_hosts() -> None:
    errors = load_errors("http", {"url": "http://169.254.169.254/latest/meta-data"}, load_settings({}))
    assert "CHRONOQ_HTTP_ALLOW_PRIVATE" in errors["url"][0]
    errors = load_errors(
        "http", {"url": "https://evil.example.net/"}, load_settings({}, http_allowed_hosts=("api.example.com",))
    )
    assert "CHRONOQ_HTTP_ALLOWED_HOSTS" in errors["url"][0]


def test_secret_names_lists_the_marked_headers_only() -> None:
    from common.core.secrets import secret_names

    payload = {"url": "https://x.example", "headers": {"X-Api-Key": {"encrypted": "t"}, "Accept": "text/plain"}}
    assert secret_names("http", payload) == frozenset({"X-Api-Key"})
    assert secret_names("http", {"url": "https://x.example"}) == frozenset()
    assert secret_names("noop", payload) == frozenset()
