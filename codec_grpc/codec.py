"""The envelope-encryption codec: pure and synchronous, over lists of payloads.

Contract (as ``temporalio.converter.PayloadCodec``):

* ``encode`` and ``decode`` return a new list with exactly as many payloads as
  given, in the same order; they never mutate their input.
* ``encode`` encrypts each whole payload (metadata, data, external_payloads)
  into the format of ``codec_grpc.wireformat``.
* ``decode`` decrypts each ``binary/encrypted`` payload and returns every other
  payload as it was given (the same object).
* A failure raises a ``codec_grpc.errors.CodecError`` naming the payload index;
  no partial result is returned.

The codec holds no sockets, reads no environment and keeps no globals: keys
come from an injected :class:`KeySource`, nonces from an injected source.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Protocol

from google.protobuf.message import DecodeError

from codec_grpc import errors, wireformat
from codec_grpc.v1.codec_pb2 import Payload
from codec_grpc.wireformat import DataKey, NonceSource


class KeySource(Protocol):
    """Where data keys come from (``codec_grpc.keys.KeyManager`` in production)."""

    def encryption_key(self, namespace: str, binding: str | None, count: int) -> DataKey: ...

    def decryption_key(self, key_arn: str, encrypted_key: bytes, binding: str | None) -> DataKey: ...


class EnvelopeCodec:
    """Encrypts and decrypts Temporal payloads under KMS-wrapped data keys.

    With ``bind_namespace`` (the default) every payload records the namespace it
    was encoded for, authenticated, and decoding it under another namespace is
    refused. Without it, payloads are not bound, but payloads that were bound
    still decode (under their own namespace's KMS encryption context).
    """

    def __init__(self, keys: KeySource, *, bind_namespace: bool = True, nonces: NonceSource = os.urandom) -> None:
        self._keys = keys
        self._bind = bind_namespace
        self._nonces = nonces

    @property
    def bind_namespace(self) -> bool:
        return self._bind

    def encode(self, payloads: Sequence[Payload], namespace: str) -> list[Payload]:
        if not payloads:
            return []
        binding = namespace if self._bind else None
        key = self._keys.encryption_key(namespace, binding, len(payloads))
        nonce_size = wireformat.NONCE_SIZE
        nonces = self._nonces(nonce_size * len(payloads))
        encoded = []
        for index, payload in enumerate(payloads):
            nonce = nonces[index * nonce_size : (index + 1) * nonce_size]
            data = key.encrypt(payload.SerializeToString(deterministic=True), nonce)
            encoded.append(Payload(metadata=key.metadata, data=data))
        return encoded

    def decode(self, payloads: Sequence[Payload], namespace: str) -> list[Payload]:
        return [self._decode_one(index, payload, namespace) for index, payload in enumerate(payloads)]

    def _decode_one(self, index: int, payload: Payload, namespace: str) -> Payload:
        metadata = payload.metadata
        if metadata.get(wireformat.ENCODING_KEY) != wireformat.ENCODING:
            return payload
        key_id, encrypted_key, written_for = _envelope_fields(index, metadata)
        if self._bind and written_for is not None and written_for != namespace:
            raise errors.NamespaceMismatchError(index, written_for, namespace)
        try:
            key = self._keys.decryption_key(key_id, encrypted_key, written_for)
        except errors.KeyProviderError as exc:
            raise errors.with_index(exc, index) from exc
        if (key.key_id, key.encrypted_key, key.namespace) != (key_id, encrypted_key, written_for):
            # The key's precomputed associated data must be this payload's, whatever the key source did.
            raise errors.DecryptionError(index)
        try:
            plaintext = key.decrypt(payload.data)
        except wireformat.AuthenticationFailed:
            raise errors.DecryptionError(index) from None
        try:
            return Payload.FromString(plaintext)
        except DecodeError:
            raise errors.PayloadError(index, "decrypted data is not a serialized Payload") from None


def _envelope_fields(index: int, metadata: Mapping[str, bytes]) -> tuple[str, bytes, str | None]:
    """Read and check the envelope metadata of an encrypted payload."""
    get = metadata.get
    algorithm = get(wireformat.ALGORITHM_KEY)
    if algorithm != wireformat.ALGORITHM:
        shown = "missing" if algorithm is None else repr(bytes(algorithm[:40]))
        raise errors.PayloadError(
            index, f"unsupported {wireformat.ALGORITHM_KEY} ({shown}); this codec supports AES-256-GCM"
        )
    key_id = _text(index, get(wireformat.KEY_ID_KEY), wireformat.KEY_ID_KEY)
    encrypted_key = get(wireformat.DATA_KEY_KEY)
    if not encrypted_key:
        raise errors.PayloadError(index, f"metadata {wireformat.DATA_KEY_KEY!r} is missing")
    namespace = get(wireformat.NAMESPACE_KEY)
    written_for = None if namespace is None else _text(index, namespace, wireformat.NAMESPACE_KEY)
    return key_id, encrypted_key, written_for


def _text(index: int, value: bytes | None, name: str) -> str:
    if not value:
        raise errors.PayloadError(index, f"metadata {name!r} is missing")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.PayloadError(index, f"metadata {name!r} is not UTF-8 text") from None
