"""Stopping a child process the launcher or a benchmark started."""

from __future__ import annotations

import signal
import subprocess


def terminate(process: subprocess.Popen | None, timeout: float, sig: int = signal.SIGTERM) -> int | None:
    """Send ``sig`` (SIGTERM: a clean stop) to ``process``, SIGKILL it if it has not exited
    after ``timeout`` seconds; its exit code (None when there was no process)."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
