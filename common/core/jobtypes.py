"""The job types and the shape of their payloads. The API validates a payload with these
schemas before storing a job; the executor loads it with the same schemas before running it."""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Mapping

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from common.core.netguard import url_problem
from common.core.secrets import ENCRYPTED, MASK, SECRET
from common.infra.config import Settings

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

#: Bounds of ``headers`` and ``env``: far above any real use, low enough that one job cannot
#: make a request or an environment the other side refuses.
MAX_ENTRIES = 64
MAX_NAME_CHARS = 256
MAX_HEADER_VALUE_CHARS = 8192  # what common servers accept in one header
MAX_ENV_VALUE_CHARS = 32768

#: An HTTP header name is a token (RFC 9110 5.1): this also keeps out CR, LF and ':'.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


#: Variables that make a program (or the shell, the C library, an interpreter it starts) load or
#: run other code: a job must not set them, whatever ``argv`` runs.
_RUNS_CODE = frozenset({
    "PATH", "BASH_ENV", "ENV", "SHELLOPTS", "IFS", "GCONV_PATH", "LOCPATH", "NODE_OPTIONS", "NODE_PATH",
    "PERL5OPT", "PERL5LIB", "PERLLIB", "RUBYOPT", "RUBYLIB", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",
})


def env_name_problem(name: str) -> str | None:
    """Why a job may not set environment variable ``name``, or None."""
    if not _ENV_NAME.fullmatch(name):
        return f"{name!r} is not a valid variable name: use letters, digits and '_', not starting with a digit"
    upper = name.upper()
    if upper in _RUNS_CODE or upper.startswith(("LD_", "PYTHON", "DYLD_")):
        return f"{name} cannot be set by a job (it changes which program runs)"
    return None


def command_problem(argv: list[str], settings: Settings) -> str | None:
    """Why ``argv[0]`` may not run under ``settings.shell_allowed_commands`` (exact strings;
    none listed: any), or None."""
    allowed = settings.shell_allowed_commands
    if not allowed or (argv and argv[0] in allowed):
        return None
    shown = argv[0] if argv else ""
    return (
        f"{shown!r} is not an allowed command; CHRONOQ_SHELL_ALLOWED_COMMANDS allows "
        f"{', '.join(repr(c) for c in allowed)} (argv[0] exactly as given)"
    )


class SecretMap(fields.Dict):
    """``headers`` or ``env``: names to values, each value a string or ``{"secret": "<value>"}``
    (the API encrypts it). Errors are keyed by name, e.g. ``{"Authorization": ["..."]}``."""

    def __init__(
        self,
        what: str,
        name_problem: Callable[[str], str | None],
        *,
        bad_chars: str,
        max_value_chars: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys=fields.String(), values=fields.Raw(), **kwargs)
        self.what = what
        self.name_problem = name_problem
        self.bad_chars = bad_chars
        self.max_value_chars = max_value_chars

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ValidationError(f'must be an object of {self.what} names to values')
        if len(value) > MAX_ENTRIES:
            raise ValidationError(f"at most {MAX_ENTRIES} {self.what}s, got {len(value)}")
        errors: dict[str, list[str]] = {}
        for name, item in value.items():
            problem = self._name_problem(name) or self._value_problem(item)
            if problem:
                errors[str(name)] = [problem]
        if errors:
            raise ValidationError(errors)
        return dict(value)

    def _name_problem(self, name: Any) -> str | None:
        if not isinstance(name, str) or not name:
            return "the name must be a non-empty string"
        if len(name) > MAX_NAME_CHARS:
            return f"the name is longer than {MAX_NAME_CHARS} characters"
        return self.name_problem(name)

    def _value_problem(self, item: Any) -> str | None:
        if isinstance(item, Mapping):
            if ENCRYPTED in item:
                return (
                    f'encrypted values cannot be sent; send {{"{SECRET}": "<value>"}} and chronoq '
                    "encrypts it"
                )
            if len(item) != 1 or SECRET not in item:
                return f'must be a string or {{"{SECRET}": "<value>"}}'
            item = item[SECRET]
            if not isinstance(item, str):
                return f'the "{SECRET}" value must be a string'
        elif not isinstance(item, str):
            return f'must be a string or {{"{SECRET}": "<value>"}}'
        if item == MASK:
            return f"send the secret again; {MASK!r} is how chronoq shows a stored secret"
        if len(item) > self.max_value_chars:
            return f"the value is longer than {self.max_value_chars} characters"
        if any(c in item for c in self.bad_chars):
            return f"the value may not contain {_describe(self.bad_chars)}"
        return None


def _describe(chars: str) -> str:
    names = [{"\r": "CR", "\n": "LF", "\0": "NUL"}.get(c, repr(c)) for c in chars]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _header_name_problem(name: str) -> str | None:
    if not _HEADER_NAME.fullmatch(name):
        return f"{name!r} is not a valid header name: letters, digits and !#$%&'*+-.^_`|~ only (no spaces, CR or LF)"
    return None


class HttpPayload(Schema):
    """``http``: call ``url``; a status outside ``expect_status`` (default any 2xx) fails."""

    url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False)
    method = fields.String(load_default="POST", validate=validate.OneOf(HTTP_METHODS))
    # CR/LF in a value would let a job inject headers (or a second request); NUL is refused too.
    headers = SecretMap(
        "header", _header_name_problem, bad_chars="\r\n\0", max_value_chars=MAX_HEADER_VALUE_CHARS,
        load_default=dict,
    )
    json = fields.Raw(load_default=None, allow_none=True)
    body = fields.String(load_default=None, allow_none=True)
    expect_status = fields.List(
        fields.Integer(validate=validate.Range(100, 599)), load_default=None, allow_none=True
    )

    @validates_schema
    def _one_body(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("json") is not None and data.get("body") is not None:
            raise ValidationError("give either 'json' or 'body', not both", "body")


class ShellPayload(Schema):
    """``shell``: run ``argv`` (never through a shell string); a non-zero exit fails."""

    argv = fields.List(fields.String(), required=True, validate=validate.Length(min=1))
    cwd = fields.String(load_default=None, allow_none=True)
    # execve() cannot pass a NUL; refusing it here beats a failure at run time.
    env = SecretMap(
        "variable", env_name_problem, bad_chars="\0", max_value_chars=MAX_ENV_VALUE_CHARS, load_default=dict
    )


class SleepPayload(Schema):
    """``sleep``: wait ``seconds`` (for tests and demos; obeys the timeout)."""

    seconds = fields.Float(load_default=1.0, validate=validate.Range(min=0, max=86400))


class FailPayload(Schema):
    """``fail``: fail every attempt with ``message`` (for tests and demos)."""

    message = fields.String(load_default="failed on purpose")


class AnyPayload(Schema):
    """``noop`` and user handlers: any JSON object."""

    class Meta:
        unknown = "include"


BUILTIN_SCHEMAS: dict[str, type[Schema]] = {
    "http": HttpPayload,
    "shell": ShellPayload,
    "noop": AnyPayload,
    "sleep": SleepPayload,
    "fail": FailPayload,
}


def user_handlers(settings: Settings) -> dict[str, str]:
    """``CHRONOQ_HANDLERS`` as {type: "module:function"}."""
    result = {}
    for item in settings.handlers:
        name, _, target = item.partition("=")
        if name.strip() and target.strip():
            result[name.strip()] = target.strip()
    return result


def enabled_types(settings: Settings) -> set[str]:
    """The job types this deployment accepts."""
    types = set(BUILTIN_SCHEMAS) | set(user_handlers(settings))
    if not settings.shell_enabled:
        types.discard("shell")
    return types


@functools.cache
def _schema(cls: type[Schema]) -> Schema:
    # One instance per type: building a schema costs more than loading a small payload with it,
    # and a schema's load keeps no state between calls.
    return cls()


def load_payload(job_type: str, payload: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Validate and fill defaults of ``payload`` for ``job_type``; raises marshmallow's
    ``ValidationError`` naming the field. Types without a schema accept any object. With
    ``settings`` (the API), an ``http`` URL must also pass the network policy
    (:func:`common.core.netguard.url_problem`) and a ``shell`` ``argv[0]`` must be allowed
    (CHRONOQ_SHELL_ALLOWED_COMMANDS)."""
    cls = BUILTIN_SCHEMAS.get(job_type, AnyPayload)
    data = _schema(cls).load(payload, unknown="include" if cls is AnyPayload else "raise")
    if settings is None:
        return data
    if job_type == "http":
        problem = url_problem(data["url"], settings)
        if problem:
            raise ValidationError({"url": [problem]})
    elif job_type == "shell":
        problem = command_problem(data["argv"], settings)
        if problem:
            raise ValidationError({"argv": [problem]})
    return data
