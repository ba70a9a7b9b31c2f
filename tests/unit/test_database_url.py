"""CHRONOQ_DATABASE_URL as users write it: PostgreSQL URLs without a driver get psycopg2 (the
driver chronoq installs), and a URL no engine can be built from is a ConfigError naming the
variable, with the password masked."""

from __future__ import annotations

import pytest

from common.infra.config import load_settings, normalize_database_url
from common.infra.db import check_database_url, masked_url
from common.infra.errors import ConfigError


@pytest.mark.parametrize("url, expected", [
    ("postgresql://u:p@db:5432/chronoq", "postgresql+psycopg2://u:p@db:5432/chronoq"),
    ("postgres://u:p@db:5432/chronoq", "postgresql+psycopg2://u:p@db:5432/chronoq"),
    ("POSTGRES://u@db/chronoq", "postgresql+psycopg2://u@db/chronoq"),
    ("  postgresql://u@db/chronoq\n", "postgresql+psycopg2://u@db/chronoq"),
    ("postgresql+psycopg2://u@db/chronoq", "postgresql+psycopg2://u@db/chronoq"),
    ("postgresql+asyncpg://u@db/chronoq", "postgresql+asyncpg://u@db/chronoq"),
    ("postgresql+psycopg://u@db/chronoq", "postgresql+psycopg://u@db/chronoq"),
    ("mysql://u@db/chronoq", "mysql://u@db/chronoq"),
    ("sqlite:///state/chronoq.db", "sqlite:///state/chronoq.db"),
])
def test_postgresql_urls_get_the_installed_driver_and_others_stay(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected


def test_settings_resolve_the_url_from_the_environment_and_from_overrides() -> None:
    from_env = load_settings({"CHRONOQ_DATABASE_URL": "postgres://u@db/chronoq"})
    assert from_env.resolved_database_url == "postgresql+psycopg2://u@db/chronoq"
    overridden = load_settings({}, database_url="postgresql://u@db/chronoq")
    assert overridden.resolved_database_url == "postgresql+psycopg2://u@db/chronoq"


def test_a_plain_postgresql_url_passes_the_start_up_check() -> None:
    check_database_url(load_settings({"CHRONOQ_DATABASE_URL": "postgresql://u:p@db.invalid:5432/chronoq"}))


@pytest.mark.parametrize("url, reason", [
    ("mysql://u:s3cret@db/chronoq", "driver is not installed"),
    ("postgresql+psycopg://u:s3cret@db/chronoq", "driver is not installed"),
    ("oracle2://u:s3cret@db/chronoq", "unknown database scheme 'oracle2'"),
    ("not a url u:s3cret@db", "not a usable database URL"),
    ("postgresql://u:s3cret@db:port/chronoq", "not a usable database URL"),
])
def test_an_unusable_url_is_a_config_error_naming_the_variable(url: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_database_url(load_settings({"CHRONOQ_DATABASE_URL": url}))
    message = str(caught.value)
    assert message.startswith("CHRONOQ_DATABASE_URL=") and reason in message
    assert "s3cret" not in message and "\n" not in message


@pytest.mark.parametrize("url, expected", [
    ("postgresql+psycopg2://u:s3cret@db:5432/chronoq", "postgresql+psycopg2://u:***@db:5432/chronoq"),
    ("postgresql+psycopg2://u@db/chronoq", "postgresql+psycopg2://u@db/chronoq"),
    ("weird url //u:s3cret@db", "weird url //u:***@db"),
])
def test_masked_url_hides_only_the_password(url: str, expected: str) -> None:
    assert masked_url(url) == expected
