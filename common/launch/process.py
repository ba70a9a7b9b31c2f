"""Stopping a child process the launcher or a benchmark started."""

from __future__ import annotations

import signal
import subprocess
import time


def terminate(process: subprocess.Popen | None, timeout: float, sig: int = signal.SIGTERM) -> int | None:
    """Send ``sig`` (SIGTERM: a clean stop) to ``process``, SIGKILL it if it has not exited
    after ``timeout`` seconds; its exit code (None when there was no process)."""
    return terminate_all([process], timeout, sig)[0]


def terminate_all(processes: list[subprocess.Popen | None], timeout: float,
                  sig: int = signal.SIGTERM) -> list[int | None]:
    """:func:`terminate` for many processes at once: ``sig`` to each running one, then each
    waited for within ``timeout`` of the signals (SIGKILL after); their exit codes in order.
    Each process gets one signal only, as a second SIGTERM makes a chronoq service exit at once."""
    for process in processes:
        if process is not None and process.poll() is None:
            process.send_signal(sig)
    deadline = time.monotonic() + timeout
    codes: list[int | None] = []
    for process in processes:
        if process is None:
            codes.append(None)
            continue
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        codes.append(process.returncode)
    return codes
