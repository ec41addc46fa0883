"""The service's own errors.

Every layer raises only these. ``codec_grpc.service.status_for`` gives each its
status code (the table below); the gateway maps those codes to HTTP statuses in
one place (``codec_grpc.gateway.statuses``). Messages are written for a person
and never contain key material or payload contents. This module imports nothing
of the package: every layer may use it.

    CodecError
    ├── PayloadError                 one payload cannot be decoded      INVALID_ARGUMENT
    │   ├── DecryptionError          authentication failed (tampering)  INVALID_ARGUMENT
    │   ├── DecompressionLimitError  decompresses beyond a bound (bomb) INVALID_ARGUMENT
    │   ├── NamespaceMismatchError   written for another namespace      PERMISSION_DENIED
    │   └── UnboundPayloadError      bound to no namespace              PERMISSION_DENIED
    ├── RequestError                 the request as a whole is refused  INVALID_ARGUMENT
    │   └── RequestTooLargeError     over a configured limit            RESOURCE_EXHAUSTED
    ├── UnauthenticatedError         no valid credentials               UNAUTHENTICATED
    ├── AccessDeniedError            the caller may not do this         PERMISSION_DENIED
    ├── IdentityProviderError        its keys (JWKS) cannot be fetched  UNAVAILABLE
    ├── KeyProviderError             KMS refused or failed              (by subclass)
    │   ├── KeyNotAllowedError       a master key not on the allowlist  PERMISSION_DENIED
    │   ├── KmsBudgetError           too many uncached keys in a call   RESOURCE_EXHAUSTED
    │   ├── KmsUnavailableError      unreachable, timed out, throttled  UNAVAILABLE
    │   ├── KmsAccessDeniedError     IAM / key policy refused           PERMISSION_DENIED
    │   ├── KmsKeyStateError         key disabled, pending deletion     FAILED_PRECONDITION
    │   ├── KmsNotFoundError         no such key or alias               FAILED_PRECONDITION
    │   ├── KmsInvalidCiphertextError data key cannot be unwrapped      INVALID_ARGUMENT
    │   └── KmsResponseError         KMS answered something unusable    INTERNAL
    ├── InternalError                a bug: the log has type and place  INTERNAL
    └── ConfigError                  a setting is invalid (start-up)    -
"""

from __future__ import annotations


class CodecError(Exception):
    """Base of every error this service raises on purpose."""


class InternalError(CodecError):
    """An unexpected failure (a bug). Its message is fixed: details go to the log, never to the caller."""

    MESSAGE = "internal error; the server log has the details"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class ConfigError(CodecError):
    """A setting has an invalid value; ``setting`` names it."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class RequestError(CodecError):
    """The request as a whole is invalid (bad namespace, malformed input)."""


class RequestTooLargeError(RequestError):
    """The request exceeds a configured limit."""


class PayloadError(CodecError):
    """One payload of a batch cannot be processed; ``index`` is its position."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"payload {index}: {reason}")
        self.index = index
        self.reason = reason


class DecryptionError(PayloadError):
    """AES-GCM authentication failed: data or metadata altered, or a key swapped."""

    def __init__(self, index: int) -> None:
        super().__init__(
            index,
            "decryption failed: the encrypted data or its metadata was altered, or it was encrypted under another key",
        )


class DecompressionLimitError(PayloadError):
    """A compressed payload decompresses beyond COMPRESSION_MAX_RATIO or DECOMPRESSED_MAX_BYTES: a bomb,
    refused with at most that many bytes decompressed. ``bound`` says which, for a person."""

    def __init__(self, index: int, bound: str) -> None:
        super().__init__(index, f"decompresses to more than {bound}: refused as a decompression bomb")


class NamespaceMismatchError(PayloadError):
    """A payload bound to one namespace was requested under another."""

    def __init__(self, index: int, written_for: str, requested: str) -> None:
        super().__init__(
            index,
            f"written for namespace {written_for!r}, requested as {requested!r}; "
            "send the request with the payload's namespace "
            "(request field 'namespace' or header 'x-namespace')",
        )
        self.written_for = written_for
        self.requested = requested


class UnboundPayloadError(PayloadError):
    """An encrypted payload bound to no namespace, while namespace binding is on."""

    def __init__(self, index: int) -> None:
        super().__init__(
            index,
            "bound to no namespace (written while NAMESPACE_BINDING was false): refused, since it "
            "could belong to any namespace; ACCEPT_UNBOUND_PAYLOADS=true decodes such payloads",
        )


class UnauthenticatedError(CodecError):
    """The call carries no credentials, or none that verify."""


class AccessDeniedError(CodecError):
    """The caller is authenticated but may not do this operation in this namespace."""


class IdentityProviderError(CodecError):
    """The identity provider's keys cannot be fetched, so no token can be checked: retry later."""


class KeyProviderError(CodecError):
    """The key provider (KMS) refused or failed. Messages name only the key id."""


class KeyNotAllowedError(KeyProviderError):
    """A payload names a master key this server does not decrypt with: refused before any KMS call."""


class KmsBudgetError(KeyProviderError):
    """A request needs more data keys unwrapped through KMS than one request may (MAX_KMS_DECRYPTS_PER_REQUEST)."""


class KmsUnavailableError(KeyProviderError):
    """KMS could not be reached, timed out, throttled or answered 5xx: retry later."""


class KmsAccessDeniedError(KeyProviderError):
    """IAM or the key policy does not allow the operation."""


class KmsKeyStateError(KeyProviderError):
    """The KMS key exists but cannot be used (disabled, pending deletion, ...)."""


class KmsNotFoundError(KeyProviderError):
    """The KMS key or alias does not exist."""


class KmsInvalidCiphertextError(KeyProviderError):
    """KMS cannot unwrap the encrypted data key (corrupt, wrong key or context)."""


class KmsResponseError(KeyProviderError):
    """KMS answered something the service cannot use (e.g. a key of wrong length)."""


def with_index(error: KeyProviderError, index: int) -> KeyProviderError:
    """Return a copy of a key provider error whose message names a payload index."""
    annotated = type(error)(f"payload {index}: {error}")
    annotated.__cause__ = error
    return annotated
