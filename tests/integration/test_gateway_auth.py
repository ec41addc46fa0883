"""Bearer-token auth of the gateway against a JWKS served on loopback: good, forged, expired,
wrong-audience and wrong-issuer tokens, RS256 and ES256, key rotation, namespace claims."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.gateway import UI_ORIGIN, Gateway, assert_cors, plain_payload
from tests.support.jwks import AUDIENCE, ISSUER, Jwks, ec_key, rsa_key


def auth_settings(jwks: Jwks, **extra: Any) -> dict[str, Any]:
    return {"AUTH_JWKS_URL": jwks.url, "AUTH_ISSUER": ISSUER, "AUTH_AUDIENCE": f"other-api,{AUDIENCE}", **extra}


@pytest.fixture
def secured(start_gateway, jwks: Jwks) -> Gateway:
    gateway: Gateway = start_gateway(**auth_settings(jwks))
    return gateway


def call(gateway: Gateway, authorization: str | None, namespace: str = "default", action: str = "encode"):
    headers = {"Origin": UI_ORIGIN, "X_Namespace": namespace}
    if authorization is not None:
        headers["Authorization"] = authorization
    return gateway.post(f"/{action}", {"payloads": [plain_payload('"x"')]}, **headers)


def assert_401(reply, fragment: str) -> None:
    assert reply.status == 401, reply.body
    assert fragment in reply.error
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert_cors(reply)


@pytest.mark.parametrize("key_index", [0, 1], ids=["RS256", "ES256"])
def test_good_token_round_trips(secured: Gateway, jwks: Jwks, key_index: int) -> None:
    token = jwks.token(jwks.keys[key_index])
    encoded = call(secured, f"Bearer {token}")
    assert encoded.status == 200, encoded.body
    assert_cors(encoded)
    decoded = secured.post(
        "/decode", encoded.json(), Authorization=f"Bearer {token}", Authorization_Extras="id-token", Origin=UI_ORIGIN
    )
    assert decoded.json()["payloads"] == [plain_payload('"x"')]


def test_preflight_and_health_need_no_token(secured: Gateway) -> None:
    # Browsers never send credentials on a preflight: demanding a token there breaks the UI.
    preflight = secured.request(
        "OPTIONS", "/decode", headers={"Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 204
    assert_cors(preflight)
    assert secured.request("GET", "/health").status == 200


def test_stats_needs_a_token(secured: Gateway, jwks: Jwks) -> None:
    assert secured.request("GET", "/stats").status == 401
    reply = secured.request("GET", "/stats", headers={"Authorization": f"Bearer {jwks.token(jwks.keys[0])}"})
    assert reply.status == 200


def test_cli_codec_auth_is_sent_verbatim(secured: Gateway, jwks: Jwks) -> None:
    token = jwks.token(jwks.keys[0])
    # temporal ... --codec-auth "Bearer $TOKEN": the header is exactly that.
    assert call(secured, f"Bearer {token}").status == 200
    assert call(secured, f"bearer   {token}").status == 200
    # --codec-auth "$TOKEN" (no scheme) is refused with a message saying what to send.
    assert_401(call(secured, token), "Bearer <access token>")


def test_missing_or_malformed_authorization(secured: Gateway) -> None:
    assert_401(call(secured, None), "missing credentials: send 'Authorization: Bearer <access token>'")
    assert_401(call(secured, "Basic YWxpY2U6cHc="), "must be 'Bearer <access token>'")
    assert_401(call(secured, "Bearer "), "must be 'Bearer <access token>'")
    assert_401(call(secured, "Bearer not.a.jwt"), "invalid token")


def test_forged_token_is_401(secured: Gateway, jwks: Jwks) -> None:
    impostor = rsa_key(kid=jwks.keys[0].kid)  # same kid, another private key
    assert_401(call(secured, f"Bearer {jwks.token(impostor)}"), "invalid token: Signature verification failed")
    ec_impostor = ec_key(kid=jwks.keys[1].kid)
    assert_401(call(secured, f"Bearer {jwks.token(ec_impostor)}"), "Signature verification failed")


def test_expired_token_is_401(secured: Gateway, jwks: Jwks) -> None:
    now = int(time.time())
    expired = jwks.token(jwks.keys[0], iat=now - 7200, exp=now - 3600)
    assert_401(call(secured, f"Bearer {expired}"), "expired")
    assert_401(call(secured, f"Bearer {jwks.token(jwks.keys[0], exp=None)}"), '"exp"')


def test_wrong_audience_or_issuer_is_401(secured: Gateway, jwks: Jwks) -> None:
    key = jwks.keys[0]
    assert_401(call(secured, f"Bearer {jwks.token(key, aud='someone-else')}"), "Audience doesn't match")
    assert_401(call(secured, f"Bearer {jwks.token(key, aud=None)}"), '"aud"')
    assert_401(call(secured, f"Bearer {jwks.token(key, iss='https://evil.example/')}"), "Invalid issuer")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_unsigned_and_hmac_confusion_tokens_are_401(secured: Gateway, jwks: Jwks) -> None:
    key = jwks.keys[0]
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600}
    body = _b64url(json.dumps(claims).encode())
    unsigned = f"{_b64url(json.dumps({'alg': 'none', 'kid': key.kid}).encode())}.{body}."
    assert_401(call(secured, f"Bearer {unsigned}"), "invalid token")
    # HS256 "signed" with the RSA public key as the HMAC secret: the classic algorithm confusion.
    pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{_b64url(json.dumps({'alg': 'HS256', 'kid': key.kid}).encode())}.{body}"
    mac = _b64url(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())
    assert_401(call(secured, f"Bearer {signing_input}.{mac}"), "invalid token")


def test_unknown_kid_refetches_the_jwks(start_gateway, jwks: Jwks) -> None:
    gateway = start_gateway(**auth_settings(jwks, AUTH_JWKS_REFRESH_INTERVAL=0))
    assert call(gateway, f"Bearer {jwks.token(jwks.keys[0])}").status == 200
    assert jwks.fetches == 1
    assert call(gateway, f"Bearer {jwks.token(jwks.keys[0])}").status == 200
    assert jwks.fetches == 1  # cached
    rotated = rsa_key()
    jwks.keys.append(rotated)  # the identity provider rotates in a new key
    assert call(gateway, f"Bearer {jwks.token(rotated)}").status == 200
    assert jwks.fetches == 2


def test_unknown_kids_cannot_hammer_the_identity_provider(start_gateway, jwks: Jwks) -> None:
    gateway = start_gateway(**auth_settings(jwks, AUTH_JWKS_REFRESH_INTERVAL=3600))
    assert call(gateway, f"Bearer {jwks.token(jwks.keys[0])}").status == 200
    for _ in range(5):
        assert_401(call(gateway, f"Bearer {jwks.token(rsa_key())}"), "Unable to find a signing key")
    assert jwks.fetches == 1


def test_unreachable_jwks_is_503(start_gateway, jwks: Jwks) -> None:
    from tests.support.fixtures import free_port

    dead = f"http://127.0.0.1:{free_port()}/jwks.json"
    gateway = start_gateway(AUTH_JWKS_URL=dead, AUTH_ISSUER=ISSUER, AUTH_AUDIENCE=AUDIENCE)
    reply = call(gateway, f"Bearer {jwks.token(jwks.keys[0])}")
    assert reply.status == 503
    assert "AUTH_JWKS_URL" in reply.error
    assert_cors(reply)


@pytest.mark.parametrize(
    ("granted", "namespace", "status"),
    [
        (["orders", "billing"], "orders", 200),
        (["orders", "billing"], "default", 403),
        ("orders billing", "billing", 200),
        (["*"], "anything", 200),
        (None, "orders", 403),
    ],
)
def test_namespaces_claim(start_gateway, jwks: Jwks, granted: Any, namespace: str, status: int) -> None:
    gateway = start_gateway(**auth_settings(jwks, AUTH_NAMESPACES_CLAIM="temporal_namespaces"))
    token = jwks.token(jwks.keys[1], temporal_namespaces=granted)
    reply = call(gateway, f"Bearer {token}", namespace=namespace)
    assert reply.status == status, reply.body
    assert_cors(reply)
    if status == 403:
        # Names who, what and where; never the payload.
        assert reply.error == f"token 'alice' may not encode in namespace {namespace!r}"


def test_path_namespace_is_checked_too(start_gateway, jwks: Jwks) -> None:
    gateway = start_gateway(**auth_settings(jwks, AUTH_NAMESPACES_CLAIM="temporal_namespaces"))
    token = jwks.token(jwks.keys[0], temporal_namespaces=["orders"])
    body = {"payloads": [plain_payload("1")]}
    assert gateway.post("/orders/encode", body, Authorization=f"Bearer {token}").status == 200
    assert gateway.post("/billing/encode", body, Authorization=f"Bearer {token}").status == 403


def test_the_access_line_names_the_tokens_subject(
    secured: Gateway, jwks: Jwks, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="codec_grpc.access"):
        assert call(secured, f"Bearer {jwks.token(jwks.keys[0], sub='alice@example.test')}").status == 200
        assert call(secured, "Bearer not-a-token").status == 401
    lines: list[Any] = [r for r in caplog.records if r.name == "codec_grpc.access" and hasattr(r, "http_route")]
    assert [(r.http_status, r.subject) for r in lines] == [(200, "alice@example.test"), (401, "")]
