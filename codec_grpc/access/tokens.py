"""Bearer tokens: verified against the identity provider's JWKS, for both transports.

The Temporal Web UI can pass the user's OIDC access token as
``Authorization: Bearer <token>``; the CLI sends ``--codec-auth`` verbatim; workers send
``authorization`` gRPC metadata. A token is accepted only when its signature verifies
against the JWKS (RS256 or ES256, never ``none`` or HMAC), it has not expired, its issuer
and audience are the configured ones, and it is an **access** token: an ID token with the
right audience must not pass (see :class:`AccessTokenRule`). PyJWT's ``PyJWKClient``
caches the JWKS and refetches it when a token names an unknown ``kid`` (key rotation), at
most once per ``refresh_interval``, so that made-up key ids cannot make us hammer the
identity provider.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt

from codec_grpc import errors
from codec_grpc.access.identity import OPERATIONS, TOKEN, Caller, Grant

ALGORITHMS = ("RS256", "ES256")
# Clock skew tolerated between the identity provider and this server.
LEEWAY_SECONDS = 30
JWKS_CACHE_SECONDS = 300
JWKS_FETCH_TIMEOUT_SECONDS = 5
_LISTED_CHARS = 255


@dataclass(frozen=True)
class AccessTokenRule:
    """How to tell an access token from an ID token: any one alternative suffices.

    ``typ:VALUE`` compares the JOSE header's ``typ`` (RFC 9068 access tokens say ``at+jwt``;
    ``application/`` prefix and case ignored); ``claim:NAME`` needs the claim present (``scp``,
    ``client_id``); ``claim:NAME=VALUE`` needs it equal (Keycloak: ``typ=Bearer``). ``any``
    accepts every token (identity providers that mark nothing; then only the audience protects).
    """

    alternatives: tuple[str, ...] = ("typ:at+jwt",)

    @classmethod
    def parse(cls, text: str) -> AccessTokenRule:
        """The rule of the AUTH_ACCESS_TOKEN setting; ValueError naming what is wrong."""
        items = tuple(filter(None, (part.strip() for part in text.split(","))))
        if not items:
            raise ValueError("give at least one of typ:VALUE, claim:NAME, claim:NAME=VALUE or any")
        for item in items:
            kind, _, value = item.partition(":")
            named = value.partition("=")[0] if kind == "claim" else value
            if item != "any" and (kind not in ("typ", "claim") or not named.strip()):
                raise ValueError(f"expected typ:VALUE, claim:NAME, claim:NAME=VALUE or any, got {item!r}")
        return cls(items)

    def accepts(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> bool:
        return any(self._accepts(item, header, claims) for item in self.alternatives)

    @staticmethod
    def _accepts(item: str, header: Mapping[str, Any], claims: Mapping[str, Any]) -> bool:
        if item == "any":
            return True
        kind, _, value = item.partition(":")
        if kind == "typ":
            typ = str(header.get("typ", "")).lower().removeprefix("application/")
            return typ == value.lower().removeprefix("application/")
        name, equals, expected = value.partition("=")
        return name in claims and (not equals or str(claims[name]) == expected)


@dataclass(frozen=True)
class AuthSettings:
    jwks_url: str
    issuer: str
    audience: Sequence[str]
    namespaces_claim: str | None = None
    operations_claim: str | None = None
    groups_claim: str = "groups"
    access_token: AccessTokenRule = field(default_factory=AccessTokenRule)
    refresh_interval: float = 30.0


class TokenVerifier:
    """Verifies bearer tokens and tells who holds them.

    :meth:`verify` may fetch the JWKS over the network: call it off an event loop.
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

    def verify(self, authorization: str | None) -> Caller:
        """The caller an ``Authorization`` value names; raises ``UnauthenticatedError`` (no acceptable
        token) or ``IdentityProviderError`` (its keys cannot be fetched)."""
        token = _bearer_token(authorization)
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise errors.IdentityProviderError(
                "cannot fetch the identity provider's keys (AUTH_JWKS_URL); retry later"
            ) from exc
        except jwt.PyJWKSetError as exc:
            raise errors.IdentityProviderError(
                "the identity provider's JWKS (AUTH_JWKS_URL) has no usable keys; retry later"
            ) from exc
        except jwt.PyJWTError as exc:
            raise errors.UnauthenticatedError(f"invalid token: {exc}") from None
        try:
            decoded = jwt.api_jwt.decode_complete(
                token,
                key=key,
                algorithms=list(ALGORITHMS),
                audience=list(self._settings.audience),
                issuer=self._settings.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.InvalidTokenError as exc:
            raise errors.UnauthenticatedError(f"invalid token: {exc}") from None
        claims: dict[str, Any] = decoded["payload"]
        if not self._settings.access_token.accepts(decoded["header"], claims):
            raise errors.UnauthenticatedError(
                "invalid token: not an access token (an ID token?); AUTH_ACCESS_TOKEN says how to tell "
                f"them apart: {', '.join(self._settings.access_token.alternatives)}"
            )
        return self._caller(claims)

    def _caller(self, claims: Mapping[str, Any]) -> Caller:
        settings = self._settings
        subject = claims.get("sub")
        claimed = None
        if settings.namespaces_claim is not None or settings.operations_claim is not None:
            namespaces = _listed(claims, settings.namespaces_claim) if settings.namespaces_claim else ("*",)
            operations = _listed(claims, settings.operations_claim) if settings.operations_claim else OPERATIONS
            claimed = Grant(tuple(namespaces), frozenset(operations) & OPERATIONS)
        return Caller(
            TOKEN,
            subject if isinstance(subject, str) else "",
            _listed(claims, settings.groups_claim),
            claimed,
        )


def _listed(claims: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """A claim listing names: a JSON list, or a string of names separated by spaces or commas (some
    identity providers can only emit strings). Anything else lists nothing."""
    value = claims.get(name)
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, list):
        return ()
    return tuple(item[:_LISTED_CHARS] for item in value if isinstance(item, str) and item)


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise errors.UnauthenticatedError(
            "missing credentials: send 'Authorization: Bearer <access token>' (gRPC: 'authorization' metadata)"
        )
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.UnauthenticatedError("the Authorization header must be 'Bearer <access token>'")
    return token.strip()
