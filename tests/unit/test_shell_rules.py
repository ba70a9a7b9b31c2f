"""The ``shell`` rules: which environment names a job may set and which commands it may run,
checked by the payload schema (the API) and again by the handler (run time, real processes)."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from marshmallow import ValidationError

from common.core.jobtypes import command_problem, env_name_problem, load_payload
from common.infra.config import Settings, load_settings
from executor_service.context import HandlerContext, PermanentFailure
from executor_service.handlers import shell

REFUSED_NAMES = ["PATH", "path", "LD_PRELOAD", "ld_library_path", "PYTHONPATH", "PythonStartup", "PYTHONHOME"]
INVALID_NAMES = ["1ABC", "A-B", "A B", "A=B", "", "Ä"]


def schema_errors(payload: dict, settings: Settings | None = None) -> dict:
    with pytest.raises(ValidationError) as info:
        load_payload("shell", payload, settings)
    return info.value.messages


@pytest.mark.parametrize("name", REFUSED_NAMES)
def test_schema_refuses_names_that_change_which_program_runs(name: str) -> None:
    errors = schema_errors({"argv": ["true"], "env": {name: "x", "FINE": "y"}})
    assert errors == {"env": {name: [f"{name} cannot be set by a job (it changes which program runs)"]}}


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_schema_refuses_names_that_are_not_variable_names(name: str) -> None:
    errors = schema_errors({"argv": ["true"], "env": {name: "x"}})
    assert list(errors["env"]) == [name]


@pytest.mark.parametrize("name", ["FOO", "_private", "a1", "LD", "MY_PATH", "PYTHO", "XLD_PRELOAD"])
def test_schema_accepts_ordinary_names(name: str) -> None:
    assert env_name_problem(name) is None
    assert load_payload("shell", {"argv": ["true"], "env": {name: "x"}})["env"] == {name: "x"}


def test_env_value_with_nul_is_refused() -> None:
    assert schema_errors({"argv": ["true"], "env": {"A": "x\0y"}}) == {"env": {"A": ["the value may not contain NUL"]}}


def test_allowed_commands_are_exact_strings_checked_only_with_settings() -> None:
    settings = load_settings({}, shell_allowed_commands=("/usr/bin/true", "backup.sh"))
    assert load_payload("shell", {"argv": ["/usr/bin/true"]}, settings)["argv"] == ["/usr/bin/true"]
    assert load_payload("shell", {"argv": ["backup.sh", "--all"]}, settings)["argv"][0] == "backup.sh"
    for argv0 in ("true", "/usr/bin/true ", "/bin/../usr/bin/true", "./backup.sh"):
        errors = schema_errors({"argv": [argv0]}, settings)
        assert list(errors) == ["argv"]
        assert "CHRONOQ_SHELL_ALLOWED_COMMANDS" in errors["argv"][0] and repr(argv0) in errors["argv"][0]
    # None listed: any command; no settings (the executor's load): not checked here.
    assert load_payload("shell", {"argv": ["anything"]}, load_settings({}))["argv"] == ["anything"]
    assert load_payload("shell", {"argv": ["anything"]})["argv"] == ["anything"]
    assert command_problem([], settings) is not None


# --- the handler: refusals at run time, with a real process -------------------------------


def context(settings: Settings) -> HandlerContext:
    job_id = uuid.uuid4()
    return HandlerContext(
        job_id=job_id, name="test", attempt=1, max_retries=0, idempotency_key=f"{job_id}:1",
        deadline=time.monotonic() + 30.0, timeout_seconds=30.0, settings=settings,
    )


def touch(marker: Path) -> list[str]:
    """An argv that creates ``marker``: proof that the program ran."""
    return [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]


def run(payload: dict[str, Any], settings: Settings) -> Any:
    return asyncio.run(shell.run(payload, context(settings)))


def test_handler_runs_an_allowed_command_with_ordinary_env(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    settings = load_settings({}, shell_allowed_commands=(sys.executable,))
    output = run({"argv": touch(marker), "env": {"MODE": "a"}}, settings)
    assert output["exit_code"] == 0 and marker.exists()


@pytest.mark.parametrize("name", ["LD_PRELOAD", "PATH", "PYTHONSTARTUP", "pythonpath", "BAD-NAME"])
def test_handler_refuses_env_names_and_never_runs_the_program(tmp_path: Path, name: str) -> None:
    # A row written before the rules (or by hand) reaches the handler without the API's check.
    marker = tmp_path / "ran"
    with pytest.raises(PermanentFailure, match=f"env: .*{name}"):
        run({"argv": touch(marker), "env": {name: str(tmp_path)}}, load_settings({}))
    assert not marker.exists()


def test_handler_refuses_a_command_outside_the_allowed_list_and_never_runs_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    settings = load_settings({}, shell_allowed_commands=("/usr/bin/true",))
    with pytest.raises(PermanentFailure, match="argv: .*CHRONOQ_SHELL_ALLOWED_COMMANDS"):
        run({"argv": touch(marker)}, settings)
    assert not marker.exists()


def test_handler_refuses_a_secret_that_was_never_revealed(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(PermanentFailure, match="env: the value of TOKEN is not a string"):
        run({"argv": touch(marker), "env": {"TOKEN": {"encrypted": "gAAAAA"}}}, load_settings({}))
    assert not marker.exists()


def test_handler_fails_permanently_on_a_nul_in_argv() -> None:
    with pytest.raises(PermanentFailure, match="cannot run"):
        run({"argv": [sys.executable, "-c", "pass\0"]}, load_settings({}))

