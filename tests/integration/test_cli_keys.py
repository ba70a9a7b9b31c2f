"""`chronoq keys` and `chronoq config` as a user runs them: real processes, the real database."""

from __future__ import annotations

import os
import subprocess
import sys

from common.core import apikeys
from common.infra.config import Settings
from common.infra.db import session_scope


def chronoq(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOQ_")}
    return subprocess.run(
        [sys.executable, "-m", "common.launch.cli", *args], capture_output=True, text=True, timeout=60,
        env={**clean, "CHRONOQ_DATABASE_URL": settings.database_url, **env},
    )


def test_keys_create_list_revoke(settings: Settings) -> None:
    made = chronoq(settings, "keys", "create", "--tenant", "acme", "--role", "writer", "--name", "ci")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("cq_") and "Shown once" in made.stderr
    with session_scope(settings) as session:
        row = apikeys.find_key(session, key)
        assert row is not None and (row.tenant, row.role, row.name) == ("acme", "writer", "ci")
        key_id = str(row.id)
    listed = chronoq(settings, "keys", "list", "--tenant", "acme")
    assert listed.returncode == 0 and key_id in listed.stdout and "active" in listed.stdout
    assert key.split("_")[2] not in listed.stdout  # the secret part is never shown again
    revoked = chronoq(settings, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    with session_scope(settings) as session:
        assert apikeys.find_key(session, key) is None
    assert "revoked" in chronoq(settings, "keys", "list").stdout
    unknown = chronoq(settings, "keys", "revoke", "not-a-key-id")
    assert unknown.returncode == 64 and "no key" in unknown.stderr
    bad = chronoq(settings, "keys", "create", "--tenant", "Not Valid", "--role", "admin", "--name", "x")
    assert bad.returncode == 64 and "tenant names" in bad.stderr


def test_config_never_prints_a_password(settings: Settings) -> None:
    shown = chronoq(
        settings, "config",
        CHRONOQ_DATABASE_URL="postgresql://chronoq:pg-pass-123@db:5432/chronoq",
        CHRONOQ_SECRET_KEY="u8b9hpbTL1JihVjvWHEbszczMa9kDUmYPwTg33nyFBo=",
        CHRONOQ_JWT_ISSUER="https://idp.example", CHRONOQ_JWT_SECRET="jwt-secret-456",
        CHRONOQ_KAFKA_SECURITY_PROTOCOL="SASL_SSL", CHRONOQ_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        CHRONOQ_KAFKA_SASL_USERNAME="chronoq", CHRONOQ_KAFKA_SASL_PASSWORD="sasl-pass-789",
        CHRONOQ_RATE_LIMIT_STORAGE="redis://:redis-pass-0@cache:6379",
    )
    assert shown.returncode == 0, shown.stderr
    for secret in ("pg-pass-123", "u8b9hpbTL1", "jwt-secret-456", "sasl-pass-789", "redis-pass-0"):
        assert secret not in shown.stdout + shown.stderr, secret
    assert "CHRONOQ_DATABASE_URL='postgresql://chronoq:***@db:5432/chronoq'" in shown.stdout
    assert "CHRONOQ_SECRET_KEY='***'" in shown.stdout
