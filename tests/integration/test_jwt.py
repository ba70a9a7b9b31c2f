"""JWT bearer tokens through the real API: HS256 with a shared secret, and RS256 verified
against an issuer's JWKS served over HTTP by a real local server."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask.testing import FlaskClient

from api import create_app
from common.infra.config import Settings

ISSUER = "https://idp.example"
SECRET = "a-shared-secret-of-enough-length-for-hs256"


def token(key: Any = SECRET, algorithm: str = "HS256", kid: str | None = None, **claims: Any) -> str:
    body = {"iss": ISSUER, "aud": "chronoq", "sub": "alice", "tenant": "acme", "role": "writer",
            "exp": int(time.time()) + 300, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=algorithm, headers={"kid": kid} if kid else None)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def client_for(settings: Settings) -> Iterator[FlaskClient]:
    app = create_app(settings)
    yield app.test_client()
    app.extensions["chronoq"].close()


@pytest.fixture
def hs256(settings: Settings) -> Iterator[FlaskClient]:
    yield from client_for(replace(settings, auth_enabled=True, jwt_issuer=ISSUER, jwt_secret=SECRET))


def test_a_valid_token_names_tenant_and_role(hs256: FlaskClient) -> None:
    job = {"name": "j", "type": "noop", "delay_seconds": 3600}
    created = hs256.post("/api/jobs", json=job, headers=bearer(token()))
    assert created.status_code == 201, created.get_data(as_text=True)
    assert created.get_json()["tenant"] == "acme"
    # Another tenant's token does not see it.
    other = hs256.get(f"/api/jobs/{created.get_json()['id']}", headers=bearer(token(tenant="globex")))
    assert other.status_code == 404
    # Roles as a list (the highest known counts) and as OAuth-style space-separated scopes.
    assert hs256.get("/api/keys", headers=bearer(token(role=["viewer", "admin"]))).status_code == 200
    assert hs256.post("/api/jobs", json=job, headers=bearer(token(role="openid viewer"))).status_code == 403


@pytest.mark.parametrize("claims, code, words", [
    ({"aud": "someone-else"}, 401, "audience"),
    ({"iss": "https://evil.example"}, 401, "issuer"),
    ({"exp": int(time.time()) - 3600}, 401, "expired"),
    ({"exp": None}, 401, "exp"),
    ({"tenant": None}, 401, "tenant"),
    ({"tenant": "Not A Tenant"}, 401, "tenant"),
    ({"role": "superuser"}, 403, "role"),
])
def test_invalid_tokens(hs256: FlaskClient, claims: dict[str, Any], code: int, words: str) -> None:
    response = hs256.get("/api/jobs", headers=bearer(token(**claims)))
    assert response.status_code == code, response.get_data(as_text=True)
    assert words in response.get_json()["message"].lower()


def test_a_token_signed_with_another_secret_or_alg_none_is_refused(hs256: FlaskClient) -> None:
    assert hs256.get("/api/jobs", headers=bearer(token(key="another-secret-of-enough-length-x"))).status_code == 401
    unsigned = jwt.encode({"iss": ISSUER, "aud": "chronoq", "tenant": "acme", "role": "admin",
                           "exp": int(time.time()) + 60}, None, algorithm="none")
    assert hs256.get("/api/jobs", headers=bearer(unsigned)).status_code == 401


class _Jwks(BaseHTTPRequestHandler):
    body = b"{}"
    hits = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def jwks_issuer(settings: Settings) -> Iterator[tuple[FlaskClient, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    _Jwks.body = json.dumps({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    try:
        for client in client_for(replace(settings, auth_enabled=True, jwt_issuer=ISSUER, jwt_jwks_url=url)):
            yield client, key
    finally:
        server.shutdown()


def test_rs256_tokens_verified_against_the_issuers_jwks(jwks_issuer: tuple[FlaskClient, Any]) -> None:
    client, key = jwks_issuer
    good = token(key=key, algorithm="RS256", kid="k1")
    assert client.get("/api/jobs", headers=bearer(good)).status_code == 200
    assert client.get("/api/jobs", headers=bearer(good)).status_code == 200
    assert _Jwks.hits >= 1
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert client.get("/api/jobs", headers=bearer(token(key=stranger, algorithm="RS256", kid="k1"))).status_code == 401
    # With a JWKS only asymmetric algorithms count: an HS256 token is refused whatever its secret.
    assert client.get("/api/jobs", headers=bearer(token(kid="k1"))).status_code == 401


def test_an_unreachable_jwks_is_a_503_not_the_callers_fault(settings: Settings) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    gone = replace(settings, auth_enabled=True, jwt_issuer=ISSUER, jwt_jwks_url="http://127.0.0.1:1/jwks.json")
    for client in client_for(gone):
        response = client.get("/api/jobs", headers=bearer(token(key=key, algorithm="RS256", kid="k1")))
        assert response.status_code == 503, response.get_data(as_text=True)
        assert "issuer's keys" in response.get_json()["message"] and response.headers["Retry-After"]
