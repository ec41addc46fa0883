"""A JWKS endpoint on loopback and tokens signed for it: the identity provider of the auth tests."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://idp.example.test/"
AUDIENCE = "temporal-codec"


@dataclass
class SigningKey:
    kid: str
    private: Any
    alg: str

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.algorithms.RSAAlgorithm if self.alg == "RS256" else jwt.algorithms.ECAlgorithm
        public = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "use": "sig", "alg": self.alg}


def rsa_key(kid: str | None = None) -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey(kid or uuid.uuid4().hex[:8], private, "RS256")


def ec_key(kid: str | None = None) -> SigningKey:
    return SigningKey(kid or uuid.uuid4().hex[:8], ec.generate_private_key(ec.SECP256R1()), "ES256")


@dataclass
class Jwks:
    """A JWKS endpoint on 127.0.0.1 whose key set the test can change; counts its fetches."""

    keys: list[SigningKey] = field(default_factory=list)
    fetches: int = 0
    url: str = ""

    def token(self, key: SigningKey, *, header_typ: str | None = "at+jwt", **overrides: Any) -> str:
        """An access token (header ``typ: at+jwt``, RFC 9068) for ``alice``; ``header_typ=None`` makes
        one with PyJWT's ``typ: JWT``, as an ID token is; a claim given as None is left out."""
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 600, **overrides}
        claims = {k: v for k, v in claims.items() if v is not None}
        headers = {"kid": key.kid, **({"typ": header_typ} if header_typ is not None else {})}
        return jwt.encode(claims, key.private, algorithm=key.alg, headers=headers)


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    state = Jwks(keys=[rsa_key(), ec_key()])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.fetches += 1
            body = json.dumps({"keys": [key.jwk() for key in state.keys]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    yield state
    server.shutdown()
    server.server_close()
    thread.join()
