"""Starting against CHRONOQ_DATABASE_URL as users write it: ``postgres://`` and ``postgresql://``
reach the real PostgreSQL through psycopg2, and a database that cannot be used stops a service
(or ``chronoq up``) with one line naming the variable, password masked, and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from common.infra.config import load_settings
from common.infra.db import check_database, session_scope
from common.infra.lifecycle import EXIT_CONFIG, EXIT_UNAVAILABLE
from common.launch.broker import free_port

ROOT = Path(__file__).parents[2]
PASSWORD = "s3cret-pw"


def _run(args: list[str], database_url: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOQ_")}
    env.update(CHRONOQ_DATABASE_URL=database_url, CHRONOQ_HOME=str(home))
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


def _closed_port_url() -> str:
    return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/chronoq"


@pytest.mark.parametrize("url, code, says", [
    (f"mysql://x:{PASSWORD}@127.0.0.1/x", EXIT_CONFIG, "driver is not installed"),
    (None, EXIT_UNAVAILABLE, "cannot connect to the database"),
])
def test_a_service_that_cannot_use_its_database_exits_with_one_line(
    tmp_path: Path, url: str | None, code: int, says: str
) -> None:
    done = _run(["-m", "scheduler_service"], url or _closed_port_url(), tmp_path)
    lines = done.stderr.splitlines()
    assert done.returncode == code, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("chronoq scanner: ") and "CHRONOQ_DATABASE_URL=" in lines[0] and says in lines[0]
    assert PASSWORD not in done.stderr and "Traceback" not in done.stderr


def test_chronoq_up_with_an_unreachable_database_exits_before_starting_anything(tmp_path: Path) -> None:
    home = tmp_path / "state"
    done = _run(["-m", "common.launch.cli", "up", "--home", str(home)], _closed_port_url(), home)
    lines = done.stderr.splitlines()
    assert done.returncode == EXIT_UNAVAILABLE, done.stderr
    assert len(lines) == 1 and "CHRONOQ_DATABASE_URL=postgresql+psycopg2://postgres:***@127.0.0.1:" in lines[0], done.stderr
    assert PASSWORD not in done.stderr + done.stdout and "Traceback" not in done.stderr
    assert not (home / "broker.port").exists(), "the broker was started before the database was checked"


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_a_postgresql_url_without_a_driver_reaches_the_database(pg_url: str, scheme: str) -> None:
    settings = load_settings({"CHRONOQ_DATABASE_URL": f"{scheme}://{pg_url.split('://', 1)[1]}"})
    assert settings.resolved_database_url.startswith("postgresql+psycopg2://")
    check_database(settings)
    with session_scope(settings) as session:
        assert session.execute(text("SELECT current_database()")).scalar_one() == pg_url.rsplit("/", 1)[1]
