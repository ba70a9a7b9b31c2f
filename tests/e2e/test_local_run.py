"""`chronoq up`: the one-command local run, with its embedded defaults (SQLite, tansu)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from common.launch.broker import free_port
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e


def test_chronoq_up_runs_a_job_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOQ_")}
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "common.launch.cli", "up", "--port", str(port), "--home", str(tmp_path / "state")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: any("chronoq is up" in line for line in lines), timeout=60, what="banner")
        wait_for(lambda: _ready(base), timeout=60, what="API ready")
        # Authentication is on here too: the admin key made on first start, printed once and kept.
        key = (tmp_path / "state" / "admin.key").read_text().strip()
        assert (tmp_path / "state" / "admin.key").stat().st_mode & 0o077 == 0
        assert any(key in line for line in lines), "the new admin key was not printed"
        auth = {"Authorization": f"Bearer {key}"}
        job_body = {"name": "hello", "type": "noop", "delay_seconds": 1}
        assert requests.post(f"{base}/api/jobs", json=job_body, timeout=10).status_code == 401
        created = requests.post(f"{base}/api/jobs", json=job_body, headers=auth, timeout=10)
        assert created.status_code == 201, created.text
        job_url = base + created.headers["Location"]
        wait_for(lambda: requests.get(job_url, headers=auth, timeout=5).json()["status"] == "SUCCESS",
                 timeout=60, what="SUCCESS")
        assert requests.get(f"{base}/openapi.json", timeout=5).status_code == 200
        # The banner names each service's metrics address; the executor's counted the job.
        addresses = dict(re.findall(r"^\s+(?:metrics)?\s+(api|scanner|executor|results)\s+(http://127\.0\.0\.1:\d+/metrics)$",
                                    "".join(lines), re.M))
        assert set(addresses) == {"api", "scanner", "executor", "results"}, addresses
        assert len(set(addresses.values())) == 4
        wait_for(lambda: 'chronoq_executor_fire_lateness_seconds_count{type="noop"} 1.0'
                 in requests.get(addresses["executor"], timeout=5).text, timeout=10, what="the job's lateness")
        assert "chronoq_api_requests_total" in requests.get(addresses["api"], timeout=5).text
        broker_port = int((tmp_path / "state" / "broker.port").read_text())
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=90)
        reader.join(5)
    output = "".join(lines)
    assert code == 0, output[-5000:]
    for name in ("api", "scanner", "executor", "results"):
        assert any(line.startswith(name) and "|" in line for line in lines), f"no prefixed lines of {name}"
    assert (tmp_path / "state" / "chronoq.db").exists()
    assert (tmp_path / "state" / "logs" / "executor.log").stat().st_size > 0
    with pytest.raises(OSError):  # the broker was stopped too
        socket.create_connection(("127.0.0.1", broker_port), timeout=1).close()


def _ready(base: str) -> bool:
    try:
        return requests.get(f"{base}/readyz", timeout=1).status_code == 200
    except requests.RequestException:
        time.sleep(0.2)
        return False
