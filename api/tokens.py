"""JWT bearer tokens from an identity provider: signature (the issuer's JWKS, or a shared HS256
secret), issuer, audience and expiry checked by PyJWT; tenant and role read from configurable
claims."""

from __future__ import annotations

import logging

import jwt

from common.core.tenancy import check_tenant_name
from common.core.roles import highest_role
from common.infra.config import Settings

from api.principal import AuthFailed, AuthUnavailable, Forbidden, Principal

log = logging.getLogger(__name__)

#: Asymmetric algorithms accepted with a JWKS; never "none", never HS* with a public key.
JWKS_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


class TokenVerifier:
    """Verifies tokens for one deployment; the JWKS is fetched lazily and cached (5 minutes,
    and again when a token names a key id it has not seen)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url, lifespan=300, timeout=5) if settings.jwt_jwks_url else None

    def verify(self, token: str) -> Principal:
        """The principal a valid token names; :class:`AuthFailed` (401) for a token that is not
        valid, :class:`Forbidden` (403) for a valid one without a known role."""
        s = self.settings
        try:
            if self._jwks is not None:
                key = self._jwks.get_signing_key_from_jwt(token).key
                algorithms = JWKS_ALGORITHMS
            else:
                key, algorithms = s.jwt_secret, ["HS256"]
            claims = jwt.decode(
                token, key, algorithms=algorithms, audience=s.jwt_audience, issuer=s.jwt_issuer,
                leeway=s.jwt_leeway_seconds, options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWKClientConnectionError as exc:
            log.error("cannot fetch the issuer's keys from %s: %s", s.jwt_jwks_url, exc)
            raise AuthUnavailable("the token cannot be verified now: the issuer's keys are unavailable") from None
        except jwt.PyJWTError as exc:
            # PyJWT's texts ("Signature has expired", "Audience doesn't match") say what to fix
            # and nothing about the key.
            raise AuthFailed(f"invalid token: {exc}") from None
        tenant = claims.get(s.jwt_tenant_claim)
        if not isinstance(tenant, str):
            raise AuthFailed(f"invalid token: no {s.jwt_tenant_claim!r} claim naming the tenant")
        try:
            check_tenant_name(tenant)
        except ValueError as exc:
            raise AuthFailed(f"invalid token: claim {s.jwt_tenant_claim!r}: {exc}") from None
        role = highest_role(claims.get(s.jwt_role_claim))
        subject = f"jwt:{claims.get('sub') or '?'}"
        if role is None:
            raise Forbidden(f"the token's {s.jwt_role_claim!r} claim names no chronoq role (viewer, writer, admin)",
                            subject=subject, tenant=tenant)
        return Principal(subject=subject, tenant=tenant, role=role)
