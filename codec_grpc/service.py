"""The service: CodecService's operations, transport-neutral, on serialized bytes.

Both transports call this module thinly: the gRPC servicer (``codec_grpc.rpc``)
and the HTTP gateway's in-process upstream (``codec_grpc.gateway.upstreams``).
Here, and only here, a request is split into its payloads (``core.protowire``,
no message parsing), checked against the limits, given its namespace
(``core.namespaces``), run through the codec, and its failures turned into the
service's errors:

* a refusal is a :class:`~codec_grpc.errors.CodecError`, logged once here;
* anything else is a bug: logged here by type and place only (a message or a
  traceback's locals might quote request data) and raised as
  :class:`~codec_grpc.errors.InternalError`.

:func:`status_for` gives the canonical status code of each error (gRPC's codes,
which the gateway maps to HTTP statuses): the one table of them.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import grpc
from google.protobuf.message import DecodeError

from codec_grpc import errors
from codec_grpc.access import AccessPolicy, Caller
from codec_grpc.core import protowire
from codec_grpc.core.codec import EnvelopeCodec
from codec_grpc.core.envelope import DataKey
from codec_grpc.core.namespaces import NamespaceScope, resolve_namespace
from codec_grpc.keys import CachedKeys, KeyManager, KeyStats, RequestKeys, UnwrapBudget, WouldBlock
from codec_grpc.kms import KmsCallStats
from codec_grpc.v1 import codec_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = codec_pb2.DESCRIPTOR.services_by_name["CodecService"].full_name
ENCODE, DECODE = "Encode", "Decode"

_STATUS_BY_ERROR: Sequence[tuple[type[errors.CodecError], grpc.StatusCode]] = (
    (errors.NamespaceMismatchError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.UnboundPayloadError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.PayloadError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.RequestTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.AccessDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.IdentityProviderError, grpc.StatusCode.UNAVAILABLE),
    (errors.KeyNotAllowedError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.KmsBudgetError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.KmsUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (errors.KmsAccessDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.KmsKeyStateError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.KmsNotFoundError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.KmsInvalidCiphertextError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_for(error: errors.CodecError) -> grpc.StatusCode:
    """The status code of one of the service's errors (INTERNAL for any other)."""
    for error_type, code in _STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class ServiceLimits:
    default_namespace: str = "default"
    max_payloads: int = 10_000
    max_kms_decrypts: int = 32  # data keys one request may have unwrapped through KMS
    namespaces: NamespaceScope = field(default_factory=NamespaceScope)


class Batch:
    """An Encode or Decode request, split and checked: its serialized payloads and its namespace."""

    __slots__ = ("method", "namespace", "payloads", "request")

    def __init__(self, method: str, request: bytes, payloads: list[bytes], namespace: str) -> None:
        self.method = method
        self.request = request
        self.payloads = payloads
        self.namespace = namespace


class CodecService:
    """Encode, Decode and Stats over serialized messages, for an authenticated caller. Thread-safe.

    A call is :meth:`prepare` (split, limits, namespace, authorization: no key needed),
    then :meth:`run`, or :meth:`run_cached`, which never waits for KMS. Every operation
    takes the :class:`~codec_grpc.access.Caller` its transport authenticated, and is
    authorized by ``access`` for the request's namespace; with namespace binding that is
    also the namespace of every encrypted payload (the codec refuses any other).
    """

    def __init__(
        self,
        codec: EnvelopeCodec,
        keys: KeyManager[DataKey],
        kms_stats: Callable[[], KmsCallStats],
        limits: ServiceLimits,
        access: AccessPolicy,
    ) -> None:
        self._codec = codec
        self._keys = keys
        self._kms_stats = kms_stats
        self._limits = limits
        self._access = access

    def prepare(self, method: str, request: bytes, header_namespace: str, caller: Caller) -> Batch:
        """Split an Encode or Decode request and authorize it; ``header_namespace`` is the
        ``x-namespace`` header's value."""
        with _refusals:
            try:
                payloads, namespace = protowire.split_request(request)
            except protowire.WireError as exc:
                raise errors.RequestError(f"malformed request: {exc}") from None
            self._check_count(len(payloads))
            resolved = resolve_namespace(namespace, header_namespace, default=self._limits.default_namespace)
            self._limits.namespaces.check(resolved)
            self._access.check(caller, method.lower(), resolved)
            return Batch(method, request, payloads, resolved)

    def run(self, batch: Batch) -> bytes:
        """The serialized response to a prepared batch, calling KMS when a key is not cached (for at
        most ``max_kms_decrypts`` data keys)."""
        keys = RequestKeys(self._keys, UnwrapBudget(self._limits.max_kms_decrypts))
        codec = self._codec.with_keys(keys)
        with _refusals:
            return self._run(batch, codec)

    def run_cached(self, batch: Batch) -> bytes | None:
        """Like :meth:`run` with cached keys only: None, having reserved and counted nothing, when a
        key is not cached (the caller then runs the batch with :meth:`run`)."""
        keys = CachedKeys(self._keys)
        with _refusals:
            codec = self._codec.with_keys(keys)
            try:
                return self._run(batch, codec)
            except WouldBlock:
                keys.forget()
                return None
            finally:
                keys.count_hits()  # answered or refused here: the keys found were used

    def stats(self, request: bytes, header_namespace: str, caller: Caller) -> codec_pb2.StatsResponse:
        """The Stats answer to a serialized StatsRequest, showing only what the caller may see."""
        with _refusals:
            try:
                requested = codec_pb2.StatsRequest.FromString(request).namespace
            except DecodeError:
                raise errors.RequestError("malformed request: not a serialized StatsRequest") from None
            namespace = resolve_namespace(requested, header_namespace, default=self._limits.default_namespace)
            self._limits.namespaces.check(namespace)
            self._access.check(caller, "stats", namespace)
            slot = (self._keys.policy.alias_for(namespace), namespace if self._codec.bind_namespace else None)
            answer = stats_response(namespace, self._keys.stats(), self._kms_stats(), slot)
            return visible_stats(answer, caller, self._access)

    def _run(self, batch: Batch, codec: EnvelopeCodec) -> bytes:
        if batch.method == ENCODE:
            # One parse of the whole request checks every payload; when it fails, the codec's own
            # check (payload by payload) names the payload at fault.
            checked = _parses(codec_pb2.EncodeRequest, batch.request)
            # Consumes batch.payloads (copies of the request's) as it seals them: memory peak. A call
            # redone after WouldBlock finds them intact: the key is found before any is dropped.
            return codec.encode_response(batch.payloads, batch.namespace, checked=checked)
        answers = codec.decode_serialized(batch.payloads, batch.namespace)
        batch.payloads = []  # copies of the request's payloads: gone before the response is joined (memory peak)
        return protowire.join_response(answers)

    def _check_count(self, count: int) -> None:
        if count > self._limits.max_payloads:
            raise errors.RequestTooLargeError(
                f"{count} payloads in one request; the limit is {self._limits.max_payloads} "
                "(MAX_PAYLOADS_PER_REQUEST): split the batch"
            )


class _Refusals:
    """Log a refusal once; turn anything else into :class:`~codec_grpc.errors.InternalError`.

    A class rather than a generator context manager: it is entered twice per call, and this is
    a third of the cost."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None or isinstance(exc, WouldBlock) or not isinstance(exc, Exception):
            return
        if isinstance(exc, errors.CodecError):
            log.warning("request refused: %s: %s", status_for(exc).name, exc)
            return
        frame = traceback.extract_tb(tb)[-1]
        log.error("internal error: %s at %s:%d", type(exc).__name__, frame.filename, frame.lineno)
        log.debug("internal error details", exc_info=exc)
        raise errors.InternalError() from None


_refusals = _Refusals()


def _parses(message: type[codec_pb2.EncodeRequest], request: bytes) -> bool:
    try:
        message.FromString(request)
    except DecodeError:
        return False
    return True


def visible_stats(stats: codec_pb2.StatsResponse, caller: Caller, access: AccessPolicy) -> codec_pb2.StatsResponse:
    """``stats`` as ``caller`` may see it: only the current keys of namespaces it may read stats of.

    Keys bound to no namespace, and the last KMS errors (which may name any master key), are shown
    only to callers who may read the stats of every namespace.
    """
    everywhere = access.allows_everywhere(caller, "stats")
    if everywhere:
        return stats
    shown = codec_pb2.StatsResponse()
    shown.CopyFrom(stats)
    del shown.current_keys[:]
    for key in stats.current_keys:
        if key.namespace and access.allows(caller, "stats", key.namespace):
            shown.current_keys.add().CopyFrom(key)
    shown.kms_last_error = ""
    for region in shown.kms_regions:
        region.last_error = ""
    return shown


def stats_response(
    namespace: str, keys: KeyStats, kms: KmsCallStats, slot: tuple[str, str | None]
) -> codec_pb2.StatsResponse:
    """Build the Stats answer; the ``current_key_*`` fields describe ``slot``'s key."""
    response = codec_pb2.StatsResponse(
        namespace=namespace,
        cached_keys_count=keys.cached_keys,
        kms_generate_data_key_calls=kms.count("GenerateDataKey"),
        kms_decrypt_calls=kms.count("Decrypt"),
        kms_errors=kms.errors,
        kms_decrypt_short_circuited=kms.short_circuited,
        kms_calls_limited=kms.limited,
        current_cache_hits=keys.current_hits,
        current_cache_misses=keys.current_misses,
        decrypted_cache_hits=keys.decrypted_hits,
        decrypted_cache_misses=keys.decrypted_misses,
        decrypted_cache_evictions=keys.decrypted_evictions,
        decrypted_cache_size=keys.decrypted_size,
        decrypted_cache_capacity=keys.decrypted_capacity,
        kms_degraded=keys.degraded,
        data_key_renewal_failures=keys.refresh_failures,
        kms_last_error=keys.last_refresh_error,
    )
    for region, calls in kms.regions.items():
        response.kms_regions.add(
            region=region,
            generate_data_key_calls=calls.count("GenerateDataKey"),
            decrypt_calls=calls.count("Decrypt"),
            errors=calls.errors,
            unavailable=sum(n for (_, outcome), n in calls.calls.items() if outcome == "unavailable"),
            decrypt_short_circuited=calls.short_circuited,
            decrypt_fallbacks=keys.fallbacks.get(("Decrypt", region), 0),
            generate_data_key_fallbacks=keys.fallbacks.get(("GenerateDataKey", region), 0),
            keys_paused=calls.paused,
            last_error=calls.last_error,
        )
    for current in keys.current_keys:
        response.current_keys.add(
            key_alias=current.alias,
            key_arn=current.key_arn,
            namespace=current.namespace or "",
            age_seconds=current.age,
            expires_in_seconds=current.expires_in,
            expired=current.expired,
            encryptions=current.encryptions,
            next_key_ready=current.next_ready,
            overdue=current.overdue,
        )
        if current.slot == slot:
            response.current_key_present = True
            response.current_key_age_seconds = current.age
            response.current_key_expires_in_seconds = current.expires_in
            response.current_key_expired = current.expired
    return response
