"""Secret values in job payloads and tenants' signing secrets, encrypted at rest with Fernet.

A client marks a value in an ``http`` payload's ``headers`` or a ``shell`` payload's ``env`` as
``{"secret": "<value>"}``. The API seals it into ``{"encrypted": "<fernet token>"}`` before the
job is stored; listings, dispatch messages and dead letters carry it redacted (``"***"``); the
executor reveals it in clear just before running. ``CHRONOQ_SECRET_KEY`` holds the keys, comma
separated: the first encrypts, all decrypt, so a new key can be put first and the old ones kept
until :func:`common.core.rekey.rotate_all` has re-encrypted everything.

Pure: no database. Messages never include a key, a token or a secret value.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from marshmallow import ValidationError

from common.infra.config import PREFIX, Settings
from common.infra.errors import ChronoqError, ConfigError

SECRET_KEY_ENV = PREFIX + "SECRET_KEY"

#: The one place that says which payload field of which job type may hold secret values.
SECRET_FIELDS: dict[str, str] = {"http": "headers", "shell": "env"}

#: How a secret value is shown (API responses, dispatch messages, dead letters).
MASK = "***"
#: Prefix of a sealed single string (signing secrets); text without it is stored in clear.
TEXT_PREFIX = "fernet:"

SECRET = "secret"
ENCRYPTED = "encrypted"


class SecretError(ChronoqError):
    """A stored secret cannot be decrypted."""


class Keyring:
    """The Fernet keys of ``CHRONOQ_SECRET_KEY``: the first encrypts, every one decrypts."""

    def __init__(self, keys: list[str]) -> None:
        fernets = []
        for number, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                # Never chain or echo: the exception's context would carry the key.
                raise ConfigError(
                    f"{SECRET_KEY_ENV}: key {number} of {len(keys)} is not a Fernet key (32 url-safe "
                    "base64-encoded bytes); make one with `chronoq secrets new-key`"
                ) from None
        if not fernets:
            raise ConfigError(f"{SECRET_KEY_ENV}: no key given")
        self._fernet = MultiFernet(fernets)

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring | None:
        """The keyring of ``settings.secret_key``, or None when no key is set; a malformed key
        raises :class:`ConfigError` naming ``CHRONOQ_SECRET_KEY``."""
        return _keyring(settings.secret_key)

    def encrypt(self, text: str) -> str:
        """A Fernet token of ``text`` under the first key."""
        return self._fernet.encrypt(text.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """The clear text of ``token``; raises ``InvalidToken`` when no key decrypts it."""
        try:
            return self._fernet.decrypt(token).decode("utf-8")
        except (TypeError, ValueError):  # not a token at all (wrong type, non-ASCII text)
            raise InvalidToken from None

    def rotate(self, token: str) -> str:
        """``token`` re-encrypted under the first key; raises ``InvalidToken`` when no key
        decrypts it."""
        try:
            return self._fernet.rotate(token).decode("ascii")
        except (TypeError, ValueError):
            raise InvalidToken from None


@functools.lru_cache(maxsize=8)
def _keyring(secret_key: str) -> Keyring | None:
    # Settings are rebuilt in tests and by the CLI; building Fernets per call would cost a
    # base64 decode per key on every request, so one keyring per distinct key string.
    keys = [part.strip() for part in secret_key.split(",") if part.strip()]
    return Keyring(keys) if keys else None


def new_key() -> str:
    """A fresh Fernet key as text, for ``CHRONOQ_SECRET_KEY``."""
    return Fernet.generate_key().decode("ascii")


def _marked(job_type: str, payload: Any) -> tuple[str, Mapping[str, Any]] | None:
    """(field, values) when ``payload``'s secret field holds at least one object value."""
    name = SECRET_FIELDS.get(job_type)
    if name is None or not isinstance(payload, Mapping):
        return None
    values = payload.get(name)
    if not isinstance(values, Mapping):
        return None
    for value in values.values():
        if isinstance(value, Mapping):
            return name, values
    return None


def has_secrets(job_type: str, payload: Any) -> bool:
    """Whether ``payload`` holds a marked value (``{"secret": …}`` or ``{"encrypted": …}``)."""
    return _marked(job_type, payload) is not None


def secret_names(job_type: str, payload: Any) -> frozenset[str]:
    """The names (headers, env variables) whose values ``payload`` holds as secrets."""
    marked = _marked(job_type, payload)
    if marked is None:
        return frozenset()
    return frozenset(key for key, value in marked[1].items() if isinstance(value, Mapping))


def _only(value: Mapping[str, Any], key: str) -> str | None:
    """``value[key]`` when ``value`` is exactly ``{key: <string>}``."""
    if len(value) == 1 and isinstance(value.get(key), str):
        return value[key]
    return None


def seal(job_type: str, payload: dict[str, Any], keyring: Keyring | None) -> dict[str, Any]:
    """A new payload with every ``{"secret": v}`` as ``{"encrypted": <token>}``. Raises
    marshmallow's ``ValidationError`` (``{"headers": {"Authorization": [...]}}``) when there is
    no keyring or a marked value is not ``{"secret": "<string>"}``."""
    marked = _marked(job_type, payload)
    if marked is None:
        return dict(payload)
    name, values = marked
    sealed: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for key, value in values.items():
        if not isinstance(value, Mapping) or _only(value, ENCRYPTED) is not None:
            sealed[key] = value
            continue
        clear = _only(value, SECRET)
        if clear is None:
            errors[key] = ['must be a string or {"secret": "<value>"}']
        elif keyring is None:
            errors[key] = [f"secret values need {SECRET_KEY_ENV} on the API"]
        else:
            sealed[key] = {ENCRYPTED: keyring.encrypt(clear)}
    if errors:
        raise ValidationError({name: errors})
    return {**payload, name: sealed}


def redact(job_type: str, payload: Any) -> Any:
    """``payload`` with every marked value as ``"***"``; the same object when there is none
    (this runs for every job of a listing and every dispatch message)."""
    marked = _marked(job_type, payload)
    if marked is None:
        return payload
    name, values = marked
    # Any object is masked, not just the two known shapes: a row written by hand or by an
    # older version must not leak either.
    shown = {key: MASK if isinstance(value, Mapping) else value for key, value in values.items()}
    return {**payload, name: shown}


def reveal(job_type: str, payload: dict[str, Any], keyring: Keyring | None) -> dict[str, Any]:
    """``payload`` with every ``{"encrypted": t}`` in clear (for the executor, just before it
    runs the job); the same object when nothing is marked. Raises :class:`SecretError` naming
    the field when there is no keyring or no key decrypts a value."""
    marked = _marked(job_type, payload)
    if marked is None:
        return payload
    name, values = marked
    clear: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(value, Mapping):
            clear[key] = value
            continue
        where = f"payload.{name}.{key}"
        token = _only(value, ENCRYPTED)
        if token is None:
            # {"secret": v} never reaches the database through the API; a row written some
            # other way still means v, in clear.
            plain = _only(value, SECRET)
            if plain is None:
                raise SecretError(f"{where} is neither a string nor an encrypted secret")
            clear[key] = plain
            continue
        if keyring is None:
            raise SecretError(
                f"{where} is encrypted but {SECRET_KEY_ENV} is not set here; give every executor "
                "the API's keys"
            )
        try:
            clear[key] = keyring.decrypt(token)
        except InvalidToken:
            raise SecretError(
                f"{where}: no key in {SECRET_KEY_ENV} decrypts it (was the key that sealed it "
                "removed before `chronoq secrets rotate`?)"
            ) from None
    return {**payload, name: clear}


def reseal(job_type: str, payload: dict[str, Any], keyring: Keyring) -> tuple[dict[str, Any], int]:
    """``payload`` with every encrypted value re-encrypted under the first key (and a stray
    ``{"secret": v}`` sealed), and how many values that was. Raises :class:`SecretError` when
    no key decrypts a value."""
    marked = _marked(job_type, payload)
    if marked is None:
        return payload, 0
    name, values = marked
    result: dict[str, Any] = {}
    count = 0
    for key, value in values.items():
        token = _only(value, ENCRYPTED) if isinstance(value, Mapping) else None
        plain = _only(value, SECRET) if isinstance(value, Mapping) else None
        if token is not None:
            try:
                result[key] = {ENCRYPTED: keyring.rotate(token)}
            except InvalidToken:
                raise SecretError(f"payload.{name}.{key}: no key in {SECRET_KEY_ENV} decrypts it") from None
            count += 1
        elif plain is not None:
            result[key] = {ENCRYPTED: keyring.encrypt(plain)}
            count += 1
        else:
            result[key] = value
    return {**payload, name: result}, count


def seal_text(text: str, keyring: Keyring | None) -> str:
    """``text`` as stored: ``"fernet:<token>"``, or as is when there is no keyring."""
    if keyring is None:
        return text
    return TEXT_PREFIX + keyring.encrypt(text)


def open_text(stored: str, keyring: Keyring | None, *, what: str = "a stored signing secret") -> str:
    """The clear text of a :func:`seal_text` result; a value without the prefix is returned as
    is (stored before a key was set). Raises :class:`SecretError` naming ``what`` when it is
    sealed and there is no keyring or no key decrypts it."""
    if not stored.startswith(TEXT_PREFIX):
        return stored
    if keyring is None:
        raise SecretError(f"{what} is encrypted but {SECRET_KEY_ENV} is not set here")
    try:
        return keyring.decrypt(stored[len(TEXT_PREFIX):])
    except InvalidToken:
        raise SecretError(f"{what}: no key in {SECRET_KEY_ENV} decrypts it") from None


def reseal_text(stored: str, keyring: Keyring) -> str:
    """``stored`` re-encrypted under the first key; a value in clear gets sealed. Raises
    :class:`SecretError` when no key decrypts it."""
    if not stored.startswith(TEXT_PREFIX):
        return seal_text(stored, keyring)
    try:
        return TEXT_PREFIX + keyring.rotate(stored[len(TEXT_PREFIX):])
    except InvalidToken:
        raise SecretError(f"a stored signing secret: no key in {SECRET_KEY_ENV} decrypts it") from None
