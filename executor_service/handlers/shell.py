"""The ``shell`` job type: run an argv (never a shell string) with a minimal environment."""

from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Any

from common.core.jobtypes import command_problem, env_name_problem
from common.infra.config import Settings
from common.infra.errors import ChronoqError, JobTimeout

from executor_service.context import HandlerContext, PermanentFailure

TAIL = 4096  # characters of stdout/stderr kept


class CommandFailed(ChronoqError):
    """The command exited with a non-zero status."""


def _tail(raw: bytes | None) -> str:
    text = (raw or b"").decode("utf-8", errors="replace")
    return text[-TAIL:]


def base_env() -> dict[str, str]:
    """The environment a command starts from: no secrets of the executor leak into it."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }


def check(argv: list[str], env: dict[str, Any], settings: Settings) -> None:
    """Raise :class:`PermanentFailure` unless the API's rules hold now: ``argv[0]`` allowed
    (CHRONOQ_SHELL_ALLOWED_COMMANDS) and no ``env`` name that changes which program runs.
    Checked again at run time: a row may predate the rules, or the deployment may have changed
    since the job was created."""
    problem = command_problem(argv, settings)
    if problem:
        raise PermanentFailure(f"argv: {problem}")
    for name, value in env.items():
        if not isinstance(name, str):
            raise PermanentFailure(f"env: {name!r} is not a variable name")
        problem = env_name_problem(name)
        if problem:
            raise PermanentFailure(f"env: {problem}")
        if not isinstance(value, str):  # a secret that was never revealed, or a bad row
            raise PermanentFailure(f"env: the value of {name} is not a string")


async def run(payload: dict[str, Any], context: HandlerContext) -> dict[str, Any]:
    """Run ``argv``; output ``{"exit_code", "stdout", "stderr"}`` (tails); non-zero exit fails.
    The command is killed at the job's timeout. ``env`` values arrive in clear (revealed)."""
    argv = list(payload["argv"])
    job_env = dict(payload.get("env") or {})
    check(argv, job_env, context.settings)
    remaining = context.remaining()
    if remaining <= 0:
        raise JobTimeout(f"timed out after {context.timeout_seconds:g}s")
    env = {**base_env(), **job_env}
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=payload.get("cwd") or None,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:  # no such program, not executable, bad cwd
        raise CommandFailed(f"cannot run {argv[0]!r}: {exc}") from exc
    except ValueError as exc:  # a NUL in argv or cwd: no attempt can run it
        raise PermanentFailure(f"cannot run {argv[0]!r}: {exc}") from exc
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), remaining)
    except asyncio.TimeoutError:
        await _kill(process)
        raise JobTimeout(f"timed out after {context.timeout_seconds:g}s") from None
    except asyncio.CancelledError:  # the runner's deadline: no child outlives its job
        await asyncio.shield(_kill(process))
        raise
    output = {"exit_code": process.returncode, "stdout": _tail(stdout), "stderr": _tail(stderr)}
    if process.returncode != 0:
        raise CommandFailed(f"exit code {process.returncode}: {output['stderr'][-500:].strip()}")
    return output


async def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        try:
            process.kill()
        except ProcessLookupError:
            pass
    await process.wait()
