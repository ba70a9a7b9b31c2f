"""Security through the whole pipeline, with the services as processes and authentication on:
tenants apart, secrets encrypted and never on Kafka in clear, deliveries signed, and the SSRF
defaults against a target on this machine."""

from __future__ import annotations

import time
from typing import Callable

import pytest
import requests
import sqlalchemy as sa

from common.core import signing
from common.infra.db import get_engine
from tests.e2e.conftest import attempts, create, job, key_headers
from tests.helpers import read_to_end, wait_for
from tests.processes import System
from tests.receiver import Receiver

pytestmark = pytest.mark.e2e

FERNET_KEY = "u8b9hpbTL1JihVjvWHEbszczMa9kDUmYPwTg33nyFBo="


def settled(system: System, job_id: str, headers: dict[str, str]) -> dict:
    def done() -> dict | None:
        body = requests.get(f"{system.base_url}/api/jobs/{job_id}", headers=headers, timeout=5).json()
        return body if body["status"] in ("SUCCESS", "FAILED") else None
    return wait_for(done, timeout=30, what=f"job {job_id} settled")


def test_tenants_secrets_and_signed_deliveries(make_system: Callable[..., System], receiver: Receiver) -> None:
    system = make_system(auth_enabled=True, secret_key=FERNET_KEY)
    acme = key_headers(system.settings, "acme", "writer")
    globex = key_headers(system.settings, "globex", "writer")
    secret = "Bearer top-secret-token-41"
    created = create(system, acme, name="signed", type="http", delay_seconds=1, payload={
        "url": f"{receiver.url}/hook", "json": {"hello": "acme"},
        "headers": {"Authorization": {"secret": secret}, "X-Plain": "visible"},
    })
    assert created["payload"]["headers"] == {"Authorization": "***", "X-Plain": "visible"}
    # Another tenant: no such job, and nothing of it in its list.
    assert requests.get(f"{system.base_url}/api/jobs/{created['id']}", headers=globex, timeout=5).status_code == 404
    assert requests.get(f"{system.base_url}/api/jobs", headers=globex, timeout=5).json()["items"] == []
    assert requests.delete(f"{system.base_url}/api/jobs/{created['id']}", headers=globex, timeout=5).status_code == 404
    assert requests.get(f"{system.base_url}/api/jobs", timeout=5).status_code == 401

    done = settled(system, created["id"], acme)
    assert done["status"] == "SUCCESS", done
    (call,) = [c for c in receiver.snapshot() if c.path == "/hook"]
    assert call.headers["Authorization"] == secret  # in clear for the receiver only
    # The delivery is signed with acme's secret, over the exact body, job, attempt and token.
    secrets = requests.get(f"{system.base_url}/api/tenants/acme/signing-secret", headers=system.headers,
                           timeout=5).json()
    signing.verify(
        call.headers[signing.HEADER], secrets["current"], job_id=created["id"],
        attempt=int(call.headers["X-Chronoq-Attempt"]), token=int(call.headers["X-Chronoq-Dispatch-Token"]),
        body=call.body, now=time.time(),
    )
    with pytest.raises(signing.SignatureError):
        signing.verify(call.headers[signing.HEADER], secrets["current"], job_id=created["id"], attempt=1,
                       token=int(call.headers["X-Chronoq-Dispatch-Token"]), body=call.body + b" ", now=time.time())
    # Never in clear at rest, in the API's answers, or on the topics.
    with get_engine(system.settings).connect() as conn:
        stored = conn.execute(sa.text("SELECT CAST(payload AS TEXT) FROM jobs WHERE id = :id"),
                              {"id": created["id"]}).scalar()
    assert "top-secret" not in stored and "encrypted" in stored
    assert "top-secret" not in str(job(system, created["id"])) + str(attempts(system, created["id"]))
    for topic in system.settings.topics:
        records = read_to_end(system.settings.kafka_bootstrap, topic, timeout=10)
        assert not any(b"top-secret" in (record.value or b"") for record in records), topic
    # The audit log names who created it.
    audit = requests.get(f"{system.base_url}/api/audit?action=jobs.create&target_id={created['id']}",
                         headers=system.headers, timeout=5).json()["items"]
    assert [(a["tenant"], a["outcome"]) for a in audit] == [("acme", 201)]


def test_ssrf_defaults_refuse_this_machine(make_system: Callable[..., System], receiver: Receiver) -> None:
    """Without CHRONOQ_HTTP_ALLOW_PRIVATE, a target on this machine is refused at creation, and
    a job that names one anyway (written before the rule, say) fails at run time without a call."""
    system = make_system(auth_enabled=True, secret_key=FERNET_KEY, http_allow_private=())
    writer = key_headers(system.settings, "acme", "writer")
    for url in (f"{receiver.url}/nope", "http://169.254.169.254/latest/meta-data/", "http://[::1]:5432/",
                f"http://localhost:{system.settings.api_port}/api/keys"):
        refused = requests.post(f"{system.base_url}/api/jobs", headers=writer, timeout=10, json={
            "name": "ssrf", "type": "http", "delay_seconds": 1, "payload": {"url": url}})
        assert refused.status_code == 422, (url, refused.text)
        assert "url" in refused.json()["errors"]["json"]["payload"], refused.json()
    # Written straight into the database, as the API of an older deployment would have.
    with get_engine(system.settings).begin() as conn:
        job_id = conn.execute(sa.text(
            "INSERT INTO jobs (id, tenant, name, type, payload, metadata, status, execute_at, priority, max_retries,"
            " timeout_seconds, attempts, lost_attempts, dispatch_token, created_at, updated_at)"
            " VALUES (gen_random_uuid(), 'acme', 'old', 'http', CAST(:payload AS JSON), '{}', 'SCHEDULED',"
            " now() + interval '1 second', 0, 3, 10, 0, 0, 0, now(), now()) RETURNING id"
        ), {"payload": f'{{"url": "{receiver.url}/inside"}}'}).scalar()
    done = settled(system, str(job_id), writer)
    assert done["status"] == "FAILED" and done["attempts"] == 1, done  # refused for good: no retry
    assert "CHRONOQ_HTTP_ALLOW_PRIVATE" in done["error"], done["error"]
    assert not [c for c in receiver.snapshot() if c.path == "/inside"]
