"""Authentication, roles, tenants, quotas and the audit log, through the real API on the real
PostgreSQL, with CHRONOQ_AUTH on (the default everywhere but the rest of this suite)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from api import create_app
from common.core import apikeys
from common.core.models import AuditRecord, Job
from common.core.roles import Role
from common.core.secrets import Keyring
from common.infra.clock import utcnow
from common.infra.config import Settings
from common.infra.db import get_engine, session_scope

TEST_FERNET_KEY = "u8b9hpbTL1JihVjvWHEbszczMa9kDUmYPwTg33nyFBo="


@pytest.fixture
def secure(settings: Settings) -> Settings:
    return replace(settings, auth_enabled=True, secret_key=TEST_FERNET_KEY)


def client_for(settings: Settings) -> Iterator[FlaskClient]:
    app = create_app(settings)
    yield app.test_client()
    app.extensions["chronoq"].close()


@pytest.fixture
def client(secure: Settings) -> Iterator[FlaskClient]:
    yield from client_for(secure)


def make_key(settings: Settings, tenant: str, role: str, name: str = "test") -> dict[str, str]:
    """Authorization headers of a new key."""
    with session_scope(settings) as session:
        made = apikeys.create_key(session, tenant=tenant, role=Role.parse(role), name=name, created_by="test",
                                  keyring=Keyring.from_settings(settings), now=utcnow())
    return {"Authorization": f"Bearer {made.key}"}


def job_body(**changes: Any) -> dict[str, Any]:
    body = {"name": "ping", "type": "noop", "payload": {}, "execute_at": (utcnow() + timedelta(hours=1)).isoformat()}
    body.update(changes)
    return body


def create(client: FlaskClient, headers: dict[str, str], **changes: Any) -> dict[str, Any]:
    response = client.post("/api/jobs", json=job_body(**changes), headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def assert_error(response: Any, code: int) -> dict[str, Any]:
    assert response.status_code == code, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == code and body["message"], body
    return body


# --- 401 -------------------------------------------------------------------------------------


def test_every_api_route_needs_a_credential(client: FlaskClient, secure: Settings) -> None:
    job_id = uuid.uuid4()
    for method, path in [
        ("get", "/api/jobs"), ("post", "/api/jobs"), ("post", "/api/jobs/batch"), ("get", "/api/jobs/stats"),
        ("get", f"/api/jobs/{job_id}"), ("delete", f"/api/jobs/{job_id}"), ("get", f"/api/jobs/{job_id}/attempts"),
        ("get", "/api/keys"), ("post", "/api/keys"), ("get", "/api/tenants"), ("get", "/api/audit"),
        ("get", "/metrics"),
    ]:
        response = getattr(client, method)(path, json={} if method == "post" else None)
        body = assert_error(response, 401)
        assert "Bearer" in response.headers["WWW-Authenticate"], path
        assert "authentication required" in body["message"], path
    # Nothing was created by the refused POSTs.
    with session_scope(secure) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == 0


def test_probes_and_the_api_description_stay_open(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200


def test_metrics_can_be_opened_by_the_operator(secure: Settings) -> None:
    for client in client_for(replace(secure, metrics_auth=False)):
        assert client.get("/metrics").status_code == 200
        assert client.get("/api/jobs").status_code == 401


@pytest.mark.parametrize("header", [
    "Bearer cq_AAAAAAAAAAAA_" + "x" * 43,   # well-formed, unknown
    "Bearer not-a-key",                      # neither a key nor (here) a JWT
    "Basic dXNlcjpwYXNz",                    # another scheme
    "Bearer ",
])
def test_bad_credentials_are_401(client: FlaskClient, header: str) -> None:
    assert_error(client.get("/api/jobs", headers={"Authorization": header}), 401)


def test_a_revoked_key_stops_working_at_once(client: FlaskClient, secure: Settings) -> None:
    admin = make_key(secure, "ops", "admin")
    writer = make_key(secure, "acme", "writer")
    assert client.get("/api/jobs", headers=writer).status_code == 200
    key_id = next(k["id"] for k in client.get("/api/keys", headers=admin).get_json()["items"] if k["tenant"] == "acme")
    revoked = client.delete(f"/api/keys/{key_id}", headers=admin)
    assert revoked.status_code == 200 and revoked.get_json()["revoked_at"]
    assert_error(client.get("/api/jobs", headers=writer), 401)


def test_failed_attempts_are_logged_without_the_secret_and_rate_limited(
    secure: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "cq_AAAAAAAAAAAA_" + "s3cr3t" * 7
    for client in client_for(replace(secure, auth_failures_per_minute=3)):
        with caplog.at_level(logging.WARNING, logger="api.auth"):
            codes = [client.get("/api/jobs", headers={"Authorization": f"Bearer {secret}"}).status_code
                     for _ in range(5)]
        assert codes == [401, 401, 401, 429, 429]
        limited = client.get("/api/jobs", headers={"Authorization": f"Bearer {secret}"})
        assert_error(limited, 429)
        assert int(limited.headers["Retry-After"]) >= 1
    text = caplog.text
    assert "authentication failed" in text and "127.0.0.1" in text
    assert "s3cr3t" not in text  # the key's public prefix at most


# --- 403: roles ------------------------------------------------------------------------------


def test_roles(client: FlaskClient, secure: Settings) -> None:
    viewer = make_key(secure, "acme", "viewer")
    writer = make_key(secure, "acme", "writer")
    admin = make_key(secure, "ops", "admin")
    assert client.get("/api/jobs", headers=viewer).status_code == 200
    assert client.get("/api/jobs/stats", headers=viewer).status_code == 200
    body = assert_error(client.post("/api/jobs", json=job_body(), headers=viewer), 403)
    assert "writer" in body["message"]
    # The role is checked before the body: a viewer learns nothing from validation errors.
    assert_error(client.post("/api/jobs", json={"nonsense": 1}, headers=viewer), 403)
    job = create(client, writer)
    assert_error(client.delete(f"/api/jobs/{job['id']}", headers=viewer), 403)
    assert client.delete(f"/api/jobs/{job['id']}", headers=writer).status_code == 200
    for path in ("/api/keys", "/api/tenants", "/api/audit"):
        assert_error(client.get(path, headers=writer), 403)
        assert client.get(path, headers=admin).status_code == 200


def test_shell_jobs_are_for_admins(secure: Settings) -> None:
    shell = {"type": "shell", "payload": {"argv": ["true"]}}
    for client in client_for(replace(secure, shell_enabled=True)):
        writer = make_key(secure, "acme", "writer")
        admin = make_key(secure, "ops", "admin")
        assert "admins" in assert_error(client.post("/api/jobs", json=job_body(**shell), headers=writer), 403)["message"]
        batch = client.post("/api/jobs/batch", json={"jobs": [job_body(**shell), job_body()]}, headers=writer)
        assert [item["code"] for item in batch.get_json()["items"]] == [403, 201]
        create(client, admin, **shell)


def test_every_view_declares_its_role() -> None:
    app = create_app(replace(load_test_settings(), auth_enabled=True))
    undeclared = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        if rule.endpoint.startswith("api-docs.") or rule.endpoint == "static":
            continue
        methods = [getattr(view.view_class, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}] \
            if hasattr(view, "view_class") else [view]
        undeclared += [f"{rule.rule} {m.__name__}" for m in methods if not hasattr(m, "_chronoq_role")]
    assert undeclared == []
    spec = app.test_client().get("/openapi.json").get_json()
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            open_ = path in ("/healthz", "/readyz")
            assert (operation.get("security") == []) is open_, (path, method)
            if not open_:
                assert {"401", "403"} <= set(operation["responses"]), (path, method)


def load_test_settings() -> Settings:
    from common.infra.config import load_settings

    return load_settings({}, database_url="sqlite://")


# --- tenants ---------------------------------------------------------------------------------


def test_tenants_cannot_see_or_touch_each_others_jobs(client: FlaskClient, secure: Settings) -> None:
    acme = make_key(secure, "acme", "writer")
    other = make_key(secure, "globex", "writer")
    admin = make_key(secure, "ops", "admin")
    job = create(client, acme)
    assert job["tenant"] == "acme"
    mine = create(client, other)
    # Another tenant's job is a 404, exactly like a job that does not exist.
    missing = assert_error(client.get(f"/api/jobs/{uuid.uuid4()}", headers=other), 404)
    foreign = assert_error(client.get(f"/api/jobs/{job['id']}", headers=other), 404)
    assert foreign["message"].replace(job["id"], "ID") == missing["message"].replace(missing["message"].split("'")[1], "ID")
    assert_error(client.get(f"/api/jobs/{job['id']}/attempts", headers=other), 404)
    assert_error(client.delete(f"/api/jobs/{job['id']}", headers=other), 404)
    assert client.get(f"/api/jobs/{job['id']}", headers=acme).get_json()["status"] == "SCHEDULED"
    assert [j["id"] for j in client.get("/api/jobs", headers=other).get_json()["items"]] == [mine["id"]]
    assert client.get("/api/jobs/stats", headers=other).get_json()["total"] == 1
    # Admins see every tenant's jobs, and may narrow the list to one.
    assert {j["id"] for j in client.get("/api/jobs", headers=admin).get_json()["items"]} == {job["id"], mine["id"]}
    narrowed = client.get("/api/jobs?tenant=acme", headers=admin).get_json()["items"]
    assert [j["id"] for j in narrowed] == [job["id"]]
    assert client.get(f"/api/jobs/{job['id']}", headers=admin).status_code == 200
    # A non-admin cannot widen its view with ?tenant=.
    assert [j["id"] for j in client.get("/api/jobs?tenant=acme", headers=other).get_json()["items"]] == [mine["id"]]


def test_idempotency_keys_are_per_tenant(client: FlaskClient, secure: Settings) -> None:
    acme = make_key(secure, "acme", "writer")
    other = make_key(secure, "globex", "writer")
    body = job_body()
    first = client.post("/api/jobs", json=body, headers={**acme, "Idempotency-Key": "k1"})
    second = client.post("/api/jobs", json=body, headers={**other, "Idempotency-Key": "k1"})
    repeat = client.post("/api/jobs", json=body, headers={**acme, "Idempotency-Key": "k1"})
    assert (first.status_code, second.status_code, repeat.status_code) == (201, 201, 200)
    assert first.get_json()["id"] != second.get_json()["id"]
    assert repeat.get_json()["id"] == first.get_json()["id"]
    batch = client.post("/api/jobs/batch", json={"jobs": [{**body, "idempotency_key": "k1"}]}, headers=other)
    assert batch.get_json()["items"][0]["job"]["id"] == second.get_json()["id"]


# --- quotas ----------------------------------------------------------------------------------


def test_pending_jobs_quota(client: FlaskClient, secure: Settings) -> None:
    admin = make_key(secure, "ops", "admin")
    acme = make_key(secure, "acme", "writer")
    assert client.patch("/api/tenants/acme", json={"max_pending_jobs": 2}, headers=admin).status_code == 200
    create(client, acme)
    create(client, acme)
    refused = client.post("/api/jobs", json=job_body(), headers=acme)
    assert "unfinished jobs" in assert_error(refused, 429)["message"]
    assert refused.headers["Retry-After"]
    # Another tenant is not affected.
    create(client, make_key(secure, "globex", "writer"))


def test_create_rate_quota_answers_429_with_retry_after(client: FlaskClient, secure: Settings) -> None:
    admin = make_key(secure, "ops", "admin")
    acme = make_key(secure, "acme", "writer")
    limits = {"creates_per_second": 3, "max_batch_jobs": 3}
    assert client.patch("/api/tenants/acme", json=limits, headers=admin).status_code == 200
    codes = [client.post("/api/jobs", json=job_body(), headers=acme).status_code for _ in range(5)]
    assert codes[:3] == [201, 201, 201] and 429 in codes[3:]
    limited = client.post("/api/jobs", json=job_body(), headers=acme)
    assert "per second" in assert_error(limited, 429)["message"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 2
    too_big = client.post("/api/jobs/batch", json={"jobs": [job_body()] * 4}, headers=acme)
    assert "at most 3" in assert_error(too_big, 413)["message"]


def test_metadata_and_fields_are_bounded(client: FlaskClient, secure: Settings) -> None:
    writer = make_key(secure, "acme", "writer")
    body = assert_error(client.post("/api/jobs", json=job_body(metadata={"x": "y" * 20000}), headers=writer), 422)
    assert "CHRONOQ_MAX_METADATA_BYTES" in body["errors"]["json"]["metadata"][0]
    body = assert_error(client.post("/api/jobs", json=job_body(type="t" * 101), headers=writer), 422)
    assert "type" in body["errors"]["json"]


# --- keys, tenants, signing secrets ------------------------------------------------------------


def test_keys_through_the_api(client: FlaskClient, secure: Settings) -> None:
    admin = make_key(secure, "ops", "admin")
    made = client.post("/api/keys", json={"tenant": "newco", "role": "viewer", "name": "dashboard"}, headers=admin)
    assert made.status_code == 201, made.get_data(as_text=True)
    key = made.get_json()["key"]
    assert key.startswith("cq_") and made.get_json()["tenant"] == "newco"
    listed = client.get("/api/keys?tenant=newco", headers=admin).get_json()["items"]
    assert len(listed) == 1 and "key" not in listed[0] and "key_hash" not in listed[0]
    with session_scope(secure) as session:  # only a hash is stored
        stored = session.scalars(sa.select(apikeys.ApiKey)).all()
        assert all(key not in (row.key_hash, row.prefix) for row in stored)
    viewer = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/jobs", headers=viewer).status_code == 200
    assert_error(client.post("/api/keys", json={"tenant": "Bad Name", "role": "viewer", "name": "x"}, headers=admin), 422)
    assert_error(client.post("/api/keys", json={"tenant": "x", "role": "root", "name": "x"}, headers=admin), 422)
    assert_error(client.delete(f"/api/keys/{uuid.uuid4()}", headers=admin), 404)


def test_signing_secret_rotation(client: FlaskClient, secure: Settings) -> None:
    admin = make_key(secure, "ops", "admin")
    make_key(secure, "acme", "writer")
    first = client.get("/api/tenants/acme/signing-secret", headers=admin).get_json()
    assert first["current"].startswith("whsec_") and first["previous"] is None
    with session_scope(secure) as session:  # stored encrypted (CHRONOQ_SECRET_KEY is set)
        stored = session.scalar(sa.text("SELECT signing_secret FROM tenants WHERE name = 'acme'"))
        assert first["current"] not in stored
    rotated = client.post("/api/tenants/acme/signing-secret/rotate", headers=admin).get_json()
    assert rotated["previous"] == first["current"] and rotated["current"] != first["current"]
    dropped = client.delete("/api/tenants/acme/signing-secret/previous", headers=admin).get_json()
    assert dropped["previous"] is None and dropped["current"] == rotated["current"]
    assert_error(client.get("/api/tenants/nobody/signing-secret", headers=admin), 404)


# --- audit -----------------------------------------------------------------------------------


def test_changes_are_audited(client: FlaskClient, secure: Settings) -> None:
    admin = make_key(secure, "ops", "admin", name="root")
    writer = make_key(secure, "acme", "writer", name="ci")
    viewer = make_key(secure, "acme", "viewer", name="dash")
    job = create(client, writer)
    assert client.delete(f"/api/jobs/{job['id']}", headers=writer).status_code == 200
    assert client.delete(f"/api/jobs/{job['id']}", headers=writer).status_code == 409
    assert client.post("/api/jobs", json=job_body(), headers=viewer).status_code == 403
    client.post("/api/keys", json={"tenant": "acme", "role": "viewer", "name": "more"}, headers=admin)
    client.get("/api/jobs", headers=writer)  # reads are not audited
    client.post("/api/jobs", headers={"Authorization": "Bearer nope"}, json=job_body())  # nor anonymous refusals
    items = client.get("/api/audit", headers=admin).get_json()["items"]
    seen = [(i["action"], i["tenant"], i["subject"].split(":")[-1], i["outcome"]) for i in reversed(items)]
    assert seen == [
        ("jobs.create", "acme", "ci", 201),
        ("jobs.cancel", "acme", "ci", 200),
        ("jobs.cancel", "acme", "ci", 409),
        ("POST /api/jobs", "acme", "dash", 403),
        ("keys.create", "ops", "root", 201),
    ]
    assert items[-1]["target_id"] == job["id"] and items[-1]["address"] == "127.0.0.1"
    only = client.get(f"/api/audit?action=jobs.cancel&target_id={job['id']}", headers=admin).get_json()["items"]
    assert [i["outcome"] for i in only] == [409, 200]
    page = client.get("/api/audit?limit=2", headers=admin).get_json()
    rest = client.get(f"/api/audit?limit=10&cursor={page['next_cursor']}", headers=admin).get_json()
    assert len(page["items"]) + len(rest["items"]) == 5 and rest["next_cursor"] is None


def test_old_audit_records_are_pruned(secure: Settings) -> None:
    from common.core.store import prune_audit

    now = utcnow()
    with session_scope(secure) as session:
        for days in (100, 10):
            session.add(AuditRecord(at=now - timedelta(days=days), subject="s", action="a", outcome=200))
    with session_scope(secure) as session:
        assert prune_audit(session, before=now - timedelta(days=90), limit=10) == 1
    with get_engine(secure).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM audit_log")).scalar() == 1


# --- hosts -----------------------------------------------------------------------------------


def test_requests_for_other_hosts_are_refused(client: FlaskClient, secure: Settings) -> None:
    admin = make_key(secure, "ops", "admin")
    assert client.get("/api/jobs", headers=admin, base_url="http://localhost:8080").status_code == 200
    assert client.get("/api/jobs", headers=admin, base_url="http://127.0.0.1:8080").status_code == 200
    # A page at attacker.example whose name now points at 127.0.0.1 (DNS rebinding).
    assert client.get("/api/jobs", headers=admin, base_url="http://attacker.example:8080").status_code == 400
    assert client.get("/healthz", base_url="http://attacker.example:8080").status_code == 400


def test_behind_a_proxy_the_forwarded_client_address_counts(secure: Settings) -> None:
    """With CHRONOQ_PROXY_HOPS=1 the failed-login limit and the audit log see each client, not
    the proxy; without it, X-Forwarded-For is ignored (a client could name any address)."""
    bad = {"Authorization": "Bearer cq_AAAAAAAAAAAA_" + "x" * 43}
    for client in client_for(replace(secure, proxy_hops=1, auth_failures_per_minute=2)):
        one, two = {"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "203.0.113.8"}
        codes = [client.get("/api/jobs", headers={**bad, **one}).status_code for _ in range(3)]
        assert codes == [401, 401, 429]
        assert client.get("/api/jobs", headers={**bad, **two}).status_code == 401  # another client
        admin = make_key(secure, "ops", "admin")
        client.post("/api/keys", json={"tenant": "acme", "role": "viewer", "name": "x"}, headers={**admin, **two})
        (record,) = client.get("/api/audit", headers=admin).get_json()["items"]
        assert record["address"] == "203.0.113.8"
    for client in client_for(replace(secure, auth_failures_per_minute=2)):
        codes = [client.get("/api/jobs", headers={**bad, "X-Forwarded-For": f"198.51.100.{i}"}).status_code
                 for i in range(3)]
        assert codes == [401, 401, 429]


@pytest.mark.parametrize("cache_seconds, works_after_revoke", [(60.0, True), (0.0, False)])
def test_a_key_revoked_elsewhere_stops_within_the_cache_time(
    secure: Settings, cache_seconds: float, works_after_revoke: bool
) -> None:
    from api.auth import forget_keys

    forget_keys()
    for client in client_for(replace(secure, key_cache_seconds=cache_seconds)):
        writer = make_key(secure, "acme", "writer")
        assert client.get("/api/jobs", headers=writer).status_code == 200
        with session_scope(secure) as session:  # as `chronoq keys revoke` does, from another process
            (row,) = apikeys.list_keys(session, "acme")
            apikeys.revoke_key(session, row.id, now=utcnow())
        assert (client.get("/api/jobs", headers=writer).status_code == 200) is works_after_revoke
    forget_keys()
