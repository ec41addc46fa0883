"""Who may call, and what they may do: one model for both transports.

* :mod:`~codec_grpc.access.identity`: :class:`Caller` and :class:`Grant`; a client
  certificate's identity (SPIFFE ID, else DNS name, else common name);
* :mod:`~codec_grpc.access.tokens`: bearer tokens verified against the identity
  provider's JWKS, access tokens only;
* :mod:`~codec_grpc.access.policy`: :class:`AccessPolicy`, from the tokens' claims and
  the optional policy file.

The transports authenticate (they know where credentials travel); the service authorizes.
"""

from codec_grpc.access.identity import (
    ANONYMOUS_CALLER,
    CERTIFICATE,
    OPERATIONS,
    Caller,
    Grant,
    certificate_identity,
)
from codec_grpc.access.policy import AccessPolicy, load_policy
from codec_grpc.access.tokens import AccessTokenRule, AuthSettings, TokenVerifier

__all__ = [
    "ANONYMOUS_CALLER",
    "CERTIFICATE",
    "OPERATIONS",
    "AccessPolicy",
    "AccessTokenRule",
    "AuthSettings",
    "Caller",
    "Grant",
    "TokenVerifier",
    "certificate_identity",
    "load_policy",
]
