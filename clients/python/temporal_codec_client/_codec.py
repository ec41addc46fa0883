"""A Temporal payload codec that encrypts through a remote CodecService.

Wire it into a client's data converter (the client's workers inherit it)::

    codec = RemotePayloadCodec("codec.internal:50051", namespace="orders")
    converter = dataclasses.replace(temporalio.converter.DataConverter.default, payload_codec=codec)
    client = await Client.connect("temporal:7233", namespace="orders", data_converter=converter)

Each ``encode``/``decode`` is one unary RPC carrying every payload it is given.
temporalio's ``Payload``/``Payloads`` messages and this service's are
wire-compatible, so payloads cross as bytes: serialized ``Payloads`` plus the
namespace field is our request, and our response parses as ``Payloads``. Nothing
is copied field by field, so fields this package does not know survive.

Event loops: a ``grpc.aio`` channel belongs to the loop that created it. The codec
opens its channel lazily, in the running loop, and keeps one channel per loop, so
one codec may serve a worker's loop, a test's ``asyncio.run`` and another
thread's loop. Channels of loops that have closed are dropped.

Errors are the plain exceptions of :mod:`temporal_codec_client.errors`. What a
Temporal Python worker (temporalio 1.35) does with them: a failed decode of a
workflow activation or encode of its completion fails the *workflow task*, which
the server retries, so a :class:`CodecUnavailableError` heals by itself once the
service is back; a failed decode of activity arguments fails that activity
attempt (retried under the activity's retry policy); heartbeat details that fail
to decode fail the activity without retry.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

from temporal_codec_client.errors import CodecInternalError, error_for_status
from temporal_codec_client.v1 import codec_pb2

_SERVICE: str = codec_pb2.DESCRIPTOR.services_by_name["CodecService"].full_name
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# The service's rule for namespace names.
_NAMESPACE = re.compile(r"[A-Za-z0-9._-]{1,255}")


@dataclass(frozen=True)
class _Calls:
    channel: grpc.aio.Channel
    encode: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
    decode: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]


class RemotePayloadCodec(PayloadCodec):
    """Encrypts and decrypts payloads by calling ``codec_grpc.v1.CodecService``.

    Args:
        target: ``host:port`` of the service (any gRPC target string).
        namespace: the Temporal namespace the payloads belong to; the service binds
            encrypted payloads to it and refuses to decode them under another.
        credentials: ``grpc.ssl_channel_credentials(...)`` for TLS or mTLS
            (optionally composed with call credentials); ``None`` for plaintext.
        metadata: extra request headers, e.g. ``(("authorization", "Bearer ..."),)``.
            Keys must be lower case.
        timeout: seconds each call may take; ``None`` for no deadline.
        max_message_bytes: largest request or response this client sends or accepts.
        channel_options: further ``grpc.aio`` channel options.

    ``encode``/``decode`` return exactly as many payloads as given, in order, and
    never mutate their input. ``close()`` (or ``async with``) closes the channel
    of the running loop; a later call opens a new one.
    """

    def __init__(
        self,
        target: str,
        *,
        namespace: str = "default",
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str | bytes]] = (),
        timeout: float | None = DEFAULT_TIMEOUT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if not target:
            raise ValueError("target must be host:port of the codec service, got ''")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        if max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be at least 1024, got {max_message_bytes}")
        self._namespace = _checked_namespace(namespace)
        self._metadata = (*_checked_metadata(metadata), ("x-namespace", self._namespace))
        self._target = target
        self._credentials = credentials
        self._timeout = timeout
        self._options = (
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            *channel_options,
        )
        # Our requests are temporalio's Payloads followed by field 2 (namespace):
        # concatenated protobuf messages parse as one merged message.
        self._request_suffix: bytes = codec_pb2.EncodeRequest(namespace=self._namespace).SerializeToString()
        self._calls: dict[asyncio.AbstractEventLoop, _Calls] = {}
        self._lock = threading.Lock()

    @property
    def namespace(self) -> str:
        return self._namespace

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Encrypt every payload in one call to the service."""
        return await self._call("Encode", payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypt every ``binary/encrypted`` payload; others come back unchanged."""
        return await self._call("Decode", payloads)

    async def close(self) -> None:
        """Close the running loop's channel; forget those of other loops (gRPC frees them)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            calls, self._calls = self._calls, {}
        own = calls.get(loop)
        if own is not None:
            await own.channel.close(None)

    async def __aenter__(self) -> RemotePayloadCodec:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _call(self, operation: str, payloads: Sequence[Payload]) -> list[Payload]:
        if not payloads:
            return []
        calls = self._calls_for_running_loop()
        method = calls.encode if operation == "Encode" else calls.decode
        request = Payloads(payloads=payloads).SerializeToString() + self._request_suffix
        try:
            answer = await method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise error_for_status(operation, exc.code(), exc.details() or "") from exc
        result = list(Payloads.FromString(answer).payloads)
        if len(result) != len(payloads):
            raise CodecInternalError(
                f"codec service {operation} answered {len(result)} payloads for {len(payloads)}; "
                "is the target a CodecService?"
            )
        return result

    def _calls_for_running_loop(self) -> _Calls:
        loop = asyncio.get_running_loop()
        with self._lock:
            calls = self._calls.get(loop)
            if calls is None:
                self._calls = {owner: c for owner, c in self._calls.items() if not owner.is_closed()}
                calls = self._calls[loop] = self._open()
            return calls

    def _open(self) -> _Calls:
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(self._target, options=self._options)
        else:
            channel = grpc.aio.secure_channel(self._target, self._credentials, options=self._options)
        # No (de)serializers: requests and answers stay bytes (see the module docstring).
        return _Calls(
            channel,
            channel.unary_unary(f"/{_SERVICE}/Encode", request_serializer=None, response_deserializer=None),
            channel.unary_unary(f"/{_SERVICE}/Decode", request_serializer=None, response_deserializer=None),
        )


def _checked_metadata(metadata: Sequence[tuple[str, str | bytes]]) -> tuple[tuple[str, str | bytes], ...]:
    checked = tuple((key, value) for key, value in metadata)
    for key, _ in checked:
        if not key or key != key.lower() or key == "x-namespace":
            raise ValueError(f"metadata keys must be lower case and not 'x-namespace' (use namespace=), got {key!r}")
    return checked


def _checked_namespace(text: str) -> str:
    value = text.strip()
    if not _NAMESPACE.fullmatch(value):
        raise ValueError(f"must be a Temporal namespace name (letters, digits, '.', '_', '-'), got {text!r}")
    return value
