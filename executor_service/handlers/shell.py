"""The ``shell`` job type: run an argv (never a shell string) with a minimal environment."""

from __future__ import annotations

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


def run(payload: dict[str, Any], context: HandlerContext) -> dict[str, Any]:
    """Run ``argv``; output ``{"exit_code", "stdout", "stderr"}`` (tails); non-zero exit fails."""
    remaining = context.remaining()
    if remaining <= 0:
        raise JobTimeout(f"timed out after {context.timeout_seconds:g}s")
    env = {**base_env(), **(payload.get("env") or {})}
    try:
        # subprocess.run kills the child when the timeout expires.
        done = subprocess.run(
            list(payload["argv"]),
            cwd=payload.get("cwd") or None,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=remaining,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise JobTimeout(f"timed out after {context.timeout_seconds:g}s") from exc
    except OSError as exc:  # no such program, not executable, bad cwd
        raise CommandFailed(f"cannot run {payload['argv'][0]!r}: {exc}") from exc
    output = {"exit_code": done.returncode, "stdout": _tail(done.stdout), "stderr": _tail(done.stderr)}
    if done.returncode != 0:
        raise CommandFailed(f"exit code {done.returncode}: {output['stderr'][-500:].strip()}")
    return output
