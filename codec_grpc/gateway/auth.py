"""Bearer-token verification for the HTTP gateway (optional; off unless AUTH_JWKS_URL is set).

The Temporal Web UI can pass the user's OIDC access token as
``Authorization: Bearer <token>``; the CLI sends ``--codec-auth`` verbatim. A
token is accepted only when its signature verifies against the identity
provider's JWKS (RS256 or ES256, never ``none`` or HMAC), it has not expired,
and its issuer and audience are the configured ones. PyJWT's ``PyJWKClient``
caches the JWKS and refetches it when a token names an unknown ``kid`` (key
rotation), at most once per ``refresh_interval`` so that made-up key ids cannot
make us hammer the identity provider.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

ALGORITHMS = ("RS256", "ES256")
# Clock skew tolerated between the identity provider and this server.
LEEWAY_SECONDS = 30
JWKS_CACHE_SECONDS = 300
JWKS_FETCH_TIMEOUT_SECONDS = 5


class AuthError(Exception):
    """The request carries no acceptable token (HTTP 401)."""


class AuthUnavailableError(Exception):
    """The identity provider's JWKS cannot be fetched, so no token can be checked (HTTP 503)."""


@dataclass(frozen=True)
class AuthSettings:
    jwks_url: str
    issuer: str
    audience: Sequence[str]
    namespaces_claim: str | None = None
    refresh_interval: float = 30.0


class TokenVerifier:
    """Verifies bearer tokens and answers which namespaces their holder may use.

    :meth:`verify` may fetch the JWKS over the network: call it off the event loop.
    """

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._jwks = jwt.PyJWKClient(
            settings.jwks_url,
            cache_jwk_set=True,
            lifespan=JWKS_CACHE_SECONDS,
            timeout=JWKS_FETCH_TIMEOUT_SECONDS,
            cooldown_duration=settings.refresh_interval,
        )

    def verify(self, authorization: str | None) -> Mapping[str, Any]:
        """The token's claims; raises :class:`AuthError` or :class:`AuthUnavailableError`."""
        token = _bearer_token(authorization)
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise AuthUnavailableError("cannot fetch the identity provider's keys (AUTH_JWKS_URL)") from exc
        except jwt.PyJWKSetError as exc:
            raise AuthUnavailableError("the identity provider's JWKS (AUTH_JWKS_URL) has no usable keys") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=list(ALGORITHMS),
                audience=list(self._settings.audience),
                issuer=self._settings.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        return claims

    def permits(self, claims: Mapping[str, Any], namespace: str) -> bool:
        """Whether the token's holder may use ``namespace`` (always, without a namespaces claim)."""
        claim = self._settings.namespaces_claim
        if claim is None:
            return True
        granted = claims.get(claim)
        if isinstance(granted, str):
            # Some identity providers can only emit strings: accept "a b" and "a,b".
            granted = granted.replace(",", " ").split()
        if not isinstance(granted, list):
            return False
        return "*" in granted or namespace in granted


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("missing Authorization header: send 'Authorization: Bearer <access token>'")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("the Authorization header must be 'Bearer <access token>'")
    return token.strip()
