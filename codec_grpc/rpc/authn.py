"""Who a gRPC call is from: its bearer token, else its verified client certificate.

Health and reflection are other services on the same port and stay open: they tell
whether the server serves and what it serves, never a payload or a key.
"""

from __future__ import annotations

from typing import Any

import grpc

from codec_grpc import errors
from codec_grpc.access import ANONYMOUS_CALLER, CERTIFICATE, Caller, TokenVerifier, certificate_identity

_NO_CREDENTIALS = (
    "no credentials: send 'authorization: Bearer <access token>' metadata"
    " or a client certificate signed by the server's TLS_CLIENT_CA_FILE"
)


class Authenticator:
    """Names the caller of a call: from the ``authorization`` metadata when tokens are configured
    (a bad token is refused, never passed over for the certificate), else from the client
    certificate that TLS verified (``TLS_CLIENT_CA_FILE``). With neither configured every call is
    the anonymous caller's: the server's start-up check keeps such a port on loopback unless
    ALLOW_UNAUTHENTICATED is set."""

    def __init__(self, verifier: TokenVerifier | None, certificates: bool) -> None:
        self._verifier = verifier
        self._certificates = certificates

    @property
    def required(self) -> bool:
        return self._verifier is not None or self._certificates

    def caller(self, context: grpc.ServicerContext, authorization: str | None) -> Caller:
        if not self.required:
            return ANONYMOUS_CALLER
        if authorization is not None and self._verifier is not None:
            return self._verifier.verify(authorization)
        if self._certificates:
            # grpc-stubs type the values as bytes; grpcio gives a list of them.
            pem: Any = context.auth_context().get("x509_pem_cert")
            if pem:
                return Caller(CERTIFICATE, certificate_identity(pem[0]))
        if self._verifier is not None:
            return self._verifier.verify(authorization)  # words what is missing
        raise errors.UnauthenticatedError(_NO_CREDENTIALS)
