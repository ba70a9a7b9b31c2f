"""The ``shell`` job type: run an argv (never a shell string) with a minimal environment."""

from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Any

from common.infra.errors import ChronoqError, JobTimeout

from executor_service.context import HandlerContext

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


async def run(payload: dict[str, Any], context: HandlerContext) -> dict[str, Any]:
    """Run ``argv``; output ``{"exit_code", "stdout", "stderr"}`` (tails); non-zero exit fails.
    The command is killed at the job's timeout."""
    remaining = context.remaining()
    if remaining <= 0:
        raise JobTimeout(f"timed out after {context.timeout_seconds:g}s")
    env = {**base_env(), **(payload.get("env") or {})}
    argv = list(payload["argv"])
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
