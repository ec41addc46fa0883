"""Errors raised by :class:`~temporal_codec_client.RemotePayloadCodec`.

All are plain Python exceptions carrying the gRPC status code and the server's
message; :attr:`CodecServiceError.retryable` says whether trying the same call
again later can succeed::

    CodecServiceError                    base: .code, .details, .retryable
    ├── CodecUnavailableError            RETRYABLE: service unreachable, timed out,
    │                                    or its KMS unavailable (UNAVAILABLE,
    │                                    DEADLINE_EXCEEDED, ABORTED, CANCELLED)
    ├── CodecRejectedError               the service refused these payloads; the same
    │   │                                call fails again (FAILED_PRECONDITION: KMS key
    │   │                                disabled; RESOURCE_EXHAUSTED: batch too large; ...)
    │   ├── CodecPermissionError         PERMISSION_DENIED, UNAUTHENTICATED: payload of
    │   │                                another namespace, KMS access denied
    │   └── CodecInvalidPayloadError     INVALID_ARGUMENT: tampered or undecodable payload
    └── CodecInternalError               the service failed (INTERNAL, UNKNOWN, ...) or
                                         answered the wrong number of payloads

:func:`error_for_status` is the one place that maps status codes to these types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import grpc

__all__ = [
    "CodecInternalError",
    "CodecInvalidPayloadError",
    "CodecPermissionError",
    "CodecRejectedError",
    "CodecServiceError",
    "CodecUnavailableError",
    "error_for_status",
]


class CodecServiceError(Exception):
    """The codec service could not encode or decode the payloads.

    ``code`` is the gRPC status code (``None`` when the service answered but the
    answer was unusable); ``details`` is the server's message, which names the
    failing payload by index and never contains payload contents or keys.
    """

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, details: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class CodecUnavailableError(CodecServiceError):
    """Retryable: the service (or the KMS behind it) is unreachable, overloaded or
    too slow. Nothing was encoded or decoded; the same call can succeed later."""

    retryable = True


class CodecRejectedError(CodecServiceError):
    """Not retryable: the service refused these payloads, and would refuse them again
    until something changes (the payloads, the namespace, the KMS key's state)."""


class CodecPermissionError(CodecRejectedError):
    """Not retryable: the payloads belong to another namespace than the one this
    codec sends, or the service's KMS identity may not use the key."""


class CodecInvalidPayloadError(CodecRejectedError):
    """Not retryable: a payload was altered, was encrypted under another key, or is
    not a payload this service wrote."""


class CodecInternalError(CodecServiceError):
    """Not retryable as such: the service failed unexpectedly (its log has the
    details) or answered something the client cannot use."""


_ERROR_BY_STATUS: Mapping[grpc.StatusCode, type[CodecServiceError]] = {
    grpc.StatusCode.UNAVAILABLE: CodecUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: CodecUnavailableError,
    grpc.StatusCode.ABORTED: CodecUnavailableError,
    grpc.StatusCode.CANCELLED: CodecUnavailableError,
    grpc.StatusCode.PERMISSION_DENIED: CodecPermissionError,
    grpc.StatusCode.UNAUTHENTICATED: CodecPermissionError,
    grpc.StatusCode.INVALID_ARGUMENT: CodecInvalidPayloadError,
    grpc.StatusCode.FAILED_PRECONDITION: CodecRejectedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: CodecRejectedError,
    grpc.StatusCode.OUT_OF_RANGE: CodecRejectedError,
    grpc.StatusCode.NOT_FOUND: CodecRejectedError,
    grpc.StatusCode.ALREADY_EXISTS: CodecRejectedError,
    grpc.StatusCode.UNIMPLEMENTED: CodecRejectedError,
}


def error_for_status(operation: str, code: grpc.StatusCode, details: str) -> CodecServiceError:
    """The client error for a failed ``operation`` ("Encode", "Decode") call."""
    error_type = _ERROR_BY_STATUS.get(code, CodecInternalError)
    return error_type(f"codec service {operation} failed: {code.name}: {details}", code=code, details=details)
