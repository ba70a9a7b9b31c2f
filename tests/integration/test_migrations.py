"""The Alembic migrations create exactly the schema the models describe, on PostgreSQL and SQLite."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from common.infra.config import load_settings
from common.infra.db import build_engine, get_engine
from common.core.migrate import upgrade
from common.core.models import Base


def _differences(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def test_postgres_schema_matches_the_models(settings) -> None:
    assert _differences(get_engine(settings)) == []


def test_sqlite_schema_matches_the_models_and_migrating_twice_is_harmless(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chronoq.db'}"
    settings = load_settings({}, database_url=url)
    upgrade(settings)
    upgrade(settings)
    engine = build_engine(url)
    try:
        assert _differences(engine) == []
    finally:
        engine.dispose()
