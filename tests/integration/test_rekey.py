"""``rotate_all`` on both databases: secrets sealed under key A are re-encrypted so that key B
alone reads them, page by page, and a second run is harmless."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from common.core import rekey
from common.core.models import Tenant
from common.core.secrets import Keyring, new_key, open_text, reveal, seal, seal_text
from common.infra.clock import utcnow
from common.infra.config import Settings, load_settings
from common.infra.db import session_scope
from common.infra.errors import ConfigError
from tests.helpers import add_job, get_job

KEY_A, KEY_B, KEY_LOST = new_key(), new_key(), new_key()


def ring(keys: str) -> Keyring:
    result = Keyring.from_settings(load_settings({}, secret_key=keys))
    assert result is not None
    return result


def sealed_http(value: str, keys: str = KEY_A) -> dict:
    payload = {"url": "https://api.example.com/hook", "headers": {"Authorization": {"secret": value}, "Accept": "a/b"}}
    return seal("http", payload, ring(keys))


def sealed_shell(value: str) -> dict:
    return seal("shell", {"argv": ["true"], "env": {"TOKEN": {"secret": value}, "MODE": "x"}}, ring(KEY_A))


def add_tenant(settings: Settings, name: str, current: str, previous: str | None = None) -> None:
    with session_scope(settings) as session:
        session.add(Tenant(name=name, created_at=utcnow(), signing_secret=current, previous_signing_secret=previous))


def tenant(settings: Settings, name: str) -> Tenant:
    with session_scope(settings) as session:
        row = session.get(Tenant, name)
        assert row is not None
        session.expunge(row)
        return row


def test_rotate_all_makes_every_secret_readable_by_the_new_key_alone(
    database: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(rekey, "PAGE_SIZE", 2)  # several keyset pages with a handful of rows
    http_ids = [add_job(database, type="http", payload=sealed_http(f"Bearer {i}")) for i in range(5)]
    shell_id = add_job(database, type="shell", payload=sealed_shell("t0ken"))
    plain_id = add_job(database, type="http", payload={"url": "https://x.example", "headers": {"A": "b"}})
    # Matches the text filter but is no secret field: left exactly as it is.
    decoy = {"headers": {"A": {"encrypted": "not-a-token"}}, "note": '"encrypted"'}
    decoy_id = add_job(database, type="noop", payload=decoy)
    lost_id = add_job(database, type="http", payload=sealed_http("gone", keys=KEY_LOST))
    before = {job_id: get_job(database, job_id) for job_id in [*http_ids, shell_id, lost_id]}
    add_tenant(database, "sealed", seal_text("whsec_current", ring(KEY_A)), seal_text("whsec_old", ring(KEY_A)))
    add_tenant(database, "clear", "whsec_clear")  # stored before any key was set

    rotating = replace(database, secret_key=f"{KEY_B},{KEY_A}")
    with caplog.at_level(logging.INFO, logger=rekey.__name__):
        result = rekey.rotate_all(rotating, log_every=0.0)

    assert (result.jobs, result.values, result.tenants, result.unreadable) == (6, 6, 2, 1)
    assert "rows/s" in caplog.text and "gone" not in caplog.text and str(lost_id) in caplog.text
    new_only = ring(KEY_B)
    for i, job_id in enumerate(http_ids):
        job = get_job(database, job_id)
        assert reveal("http", job.payload, new_only)["headers"] == {"Authorization": f"Bearer {i}", "Accept": "a/b"}
        assert job.updated_at == before[job_id].updated_at  # not a change anyone should see
        assert job.payload["headers"]["Authorization"] != before[job_id].payload["headers"]["Authorization"]
    assert reveal("shell", get_job(database, shell_id).payload, new_only)["env"] == {"TOKEN": "t0ken", "MODE": "x"}
    assert get_job(database, plain_id).payload == {"url": "https://x.example", "headers": {"A": "b"}}
    assert get_job(database, decoy_id).payload == decoy
    assert get_job(database, lost_id).payload == before[lost_id].payload
    sealed, clear = tenant(database, "sealed"), tenant(database, "clear")
    assert open_text(sealed.signing_secret, new_only) == "whsec_current"
    assert open_text(sealed.previous_signing_secret or "", new_only) == "whsec_old"
    assert clear.signing_secret.startswith("fernet:") and open_text(clear.signing_secret, new_only) == "whsec_clear"
    assert clear.previous_signing_secret is None

    again = rekey.rotate_all(rotating)  # idempotent: re-encrypts again, still readable
    assert (again.jobs, again.values, again.tenants, again.unreadable) == (6, 6, 2, 1)
    assert reveal("http", get_job(database, http_ids[0]).payload, new_only)["headers"]["Authorization"] == "Bearer 0"
    assert open_text(tenant(database, "sealed").signing_secret, new_only) == "whsec_current"


def test_rotate_all_without_a_key_is_a_config_error(database: Settings) -> None:
    with pytest.raises(ConfigError, match="CHRONOQ_SECRET_KEY is not set"):
        rekey.rotate_all(replace(database, secret_key=""))


def test_rotate_all_on_an_empty_database_does_nothing(database: Settings) -> None:
    result = rekey.rotate_all(replace(database, secret_key=KEY_B))
    assert (result.jobs, result.values, result.tenants, result.unreadable) == (0, 0, 0, 0)
    assert str(result) == "0 jobs (0 secret values), 0 tenants' signing secrets"


def test_a_signing_secret_changed_during_the_run_is_not_overwritten(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL only: SQLite serialises writers, so the admin's write could not land between
    # the run's read and its write.
    add_tenant(settings, "busy", seal_text("whsec_before", ring(KEY_A)))
    real = rekey.reseal_text
    newer = seal_text("whsec_after", ring(KEY_B))

    def admin_rotates_meanwhile(stored: str, keyring: Keyring) -> str:
        # What POST /api/tenants/<name>/signing-secret/rotate commits between our read and write.
        with session_scope(settings) as session:
            row = session.get(Tenant, "busy")
            assert row is not None
            row.signing_secret = newer
        return real(stored, keyring)

    monkeypatch.setattr(rekey, "reseal_text", admin_rotates_meanwhile)
    result = rekey.rotate_all(replace(settings, secret_key=f"{KEY_B},{KEY_A}"))
    assert result.tenants == 0
    assert tenant(settings, "busy").signing_secret == newer
