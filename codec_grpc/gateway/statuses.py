"""HTTP answers other than 200, and the one map from status codes to HTTP statuses.

Whichever upstream the gateway calls, a failure arrives as a status code: from a
gRPC call (:class:`~codec_grpc.gateway.upstreams.GrpcUpstream`) or from
``codec_grpc.service.status_for`` (the in-process upstream).
:func:`http_error_for_status` turns it into the HTTP answer, for both.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import grpc

log = logging.getLogger(__name__)


class HttpError(Exception):
    """An answer other than 200, with a message a person understands."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


# Codes whose messages come from our service: they name the payload index, never key material.
_SHOWN: Mapping[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, ""),
    grpc.StatusCode.UNAUTHENTICATED: (401, ""),
    grpc.StatusCode.PERMISSION_DENIED: (403, ""),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (413, ""),
    grpc.StatusCode.FAILED_PRECONDITION: (503, "the server's KMS key cannot be used (server misconfiguration): "),
}
# Codes that may come from the transport or a bug: a generic message; details go to the log.
_HIDDEN: Mapping[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.UNAVAILABLE: (503, "the codec service is unavailable; retry later"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "the codec service did not answer in time (GATEWAY_UPSTREAM_TIMEOUT)"),
}
FAILED = (502, "the codec service failed; its log has the details")


# Our service says when to come back as "retry in 3s": the answer carries it as Retry-After too.
_RETRY_IN = re.compile(r"retry in (\d{1,5})s")
_PER_REQUEST_BUDGET = "(MAX_KMS_DECRYPTS_PER_REQUEST)"


def http_error_for_status(code: grpc.StatusCode, details: str) -> HttpError:
    """The HTTP answer for a failed call's status code and message."""
    retry = _RETRY_IN.search(details)
    headers = {"Retry-After": retry.group(1)} if retry else {}
    if code == grpc.StatusCode.UNAVAILABLE and ("retry later" in details or retry):
        return HttpError(503, details, headers)  # KMS unavailable or our KMS budget spent, as worded by our service
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and _PER_REQUEST_BUDGET in details:
        return HttpError(429, details, headers)  # too many uncached data keys: a retry gets further
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
        # gRPC's own size check, before our service sees the request.
        return HttpError(413, f"the batch is larger than the codec service accepts (GRPC_MAX_MESSAGE_BYTES): {details}")
    if code in _SHOWN:
        status, prefix = _SHOWN[code]
        return HttpError(status, prefix + details)
    log.warning("the codec service failed: %s: %s", code.name, details)
    status, message = _HIDDEN.get(code, FAILED)
    return HttpError(status, message)
