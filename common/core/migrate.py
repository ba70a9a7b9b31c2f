"""Schema migrations (Alembic), run by ``chronoq migrate`` and by the local run."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

from common.infra.config import Settings

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the configured database to ``revision`` (idempotent)."""
    url = settings.resolved_database_url
    command.upgrade(alembic_config(url), revision)
    log.info("database schema is at %s", revision)
