"""Stopping child processes: each gets one signal (a second SIGTERM makes a chronoq service exit
at once), all are signalled before any is waited for, and one that ignores the signal is killed."""

from __future__ import annotations

import subprocess
import sys
import time

from common.launch.process import terminate, terminate_all

#: A child that counts the SIGTERMs it gets for a moment after the first, then exits with the count
#: (or, given "ignore", ignores them). It prints "ready" once its handler is installed.
CHILD = """
import signal, sys, time
count = 0
def on_term(*_):
    global count
    count += 1
signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[1] == "ignore" else on_term)
print("ready", flush=True)
while count == 0:
    time.sleep(0.01)
time.sleep(0.5)
sys.exit(count)
"""


def child(mode: str = "count") -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", CHILD, mode], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def test_each_process_gets_one_signal_and_all_stop_together() -> None:
    children = [child() for _ in range(3)]
    started = time.monotonic()
    assert terminate_all([children[0], None, *children[1:]], timeout=10) == [1, None, 1, 1]
    # Signalled together: three half-second stops overlap (one after another would take 1.5 s).
    assert time.monotonic() - started < 1.4


def test_a_process_that_ignores_the_signal_is_killed_and_an_exited_one_reports_its_code() -> None:
    stubborn = child("ignore")
    assert terminate(stubborn, timeout=0.5) == -9
    assert terminate(stubborn, timeout=0.5) == -9
    assert terminate(None, timeout=0.5) is None
