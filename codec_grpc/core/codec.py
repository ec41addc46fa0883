"""The envelope-encryption codec: pure and synchronous, over lists of payloads.

Contract (as ``temporalio.converter.PayloadCodec``):

* ``encode`` and ``decode`` return a new list with exactly as many payloads as
  given, in the same order; they never mutate their input.
* ``encode`` encrypts each whole payload (metadata, data, external_payloads)
  into the format of ``codec_grpc.core.envelope``.
* ``decode`` decrypts each ``binary/encrypted`` payload and returns every other
  payload as it was given (the same object, or the same bytes).
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

from codec_grpc import errors
from codec_grpc.core import envelope
from codec_grpc.core.envelope import DataKey, NonceSource
from codec_grpc.keys.allowlist import KEY_ARN
from codec_grpc.v1.codec_pb2 import Payload


class KeySource(Protocol):
    """Where data keys come from (``codec_grpc.keys.KeyManager`` in production)."""

    def encryption_key(self, namespace: str, binding: str | None, count: int) -> DataKey: ...

    def decryption_key(self, key_arn: str, encrypted_key: bytes, binding: str | None) -> DataKey: ...


class EnvelopeCodec:
    """Encrypts and decrypts Temporal payloads under KMS-wrapped data keys.

    Two forms with one contract: :meth:`encode`/:meth:`decode` over ``Payload``
    objects (the reference), and :meth:`encode_serialized`/:meth:`decode_serialized`
    over serialized payloads, which the service uses to spare a parse and
    a re-serialization per payload. Tests check that both give the same bytes.

    With ``bind_namespace`` (the default) every payload records the namespace it
    was encoded for, authenticated, and decoding it under another namespace is
    refused, as is decoding a payload bound to no namespace (it could be any
    namespace's) unless ``accept_unbound`` says so. Without binding, payloads are
    not bound, but payloads that were bound still decode (under their own
    namespace's KMS encryption context).
    """

    def __init__(
        self,
        keys: KeySource,
        *,
        bind_namespace: bool = True,
        accept_unbound: bool = False,
        nonces: NonceSource = os.urandom,
    ) -> None:
        self._keys = keys
        self._bind = bind_namespace
        self._accept_unbound = accept_unbound
        self._nonces = nonces

    @property
    def bind_namespace(self) -> bool:
        return self._bind

    @property
    def accept_unbound(self) -> bool:
        return self._accept_unbound

    def encode(self, payloads: Sequence[Payload], namespace: str) -> list[Payload]:
        if not payloads:
            return []
        key, nonces = self._batch(namespace, len(payloads))
        size = envelope.NONCE_SIZE
        return [
            Payload(
                metadata=key.metadata,
                data=key.encrypt(p.SerializeToString(deterministic=True), nonces[i * size : (i + 1) * size]),
            )
            for i, p in enumerate(payloads)
        ]

    def encode_serialized(self, payloads: Sequence[bytes], namespace: str, *, checked: bool = False) -> list[bytes]:
        """Like :meth:`encode`, over serialized payloads; the plaintext is each payload's bytes as given.

        Each payload is checked to be a serialized ``Payload`` unless ``checked`` says the
        caller did so already (the service parses the whole request once, which
        costs a quarter of parsing its payloads one by one).
        """
        if not payloads:
            return []
        if not checked:
            for index, raw in enumerate(payloads):
                _parse(index, raw, "not a serialized Payload")
        key, nonces = self._batch(namespace, len(payloads))
        size = envelope.NONCE_SIZE
        return [key.seal(raw, nonces[i * size : (i + 1) * size]) for i, raw in enumerate(payloads)]

    def decode(self, payloads: Sequence[Payload], namespace: str) -> list[Payload]:
        decoded: list[Payload] = []
        seen: dict[tuple[bytes | None, ...], DataKey] = {}
        for index, payload in enumerate(payloads):
            plaintext = self._open(index, payload, namespace, seen)
            decoded.append(payload if plaintext is None else _parse(index, plaintext, _NOT_A_PAYLOAD))
        return decoded

    def decode_serialized(self, payloads: Sequence[bytes], namespace: str) -> list[bytes]:
        """Like :meth:`decode`, over serialized payloads; pass-through payloads come back as given."""
        decoded: list[bytes] = []
        seen: dict[tuple[bytes | None, ...], DataKey] = {}
        for index, raw in enumerate(payloads):
            plaintext = self._open(index, _parse(index, raw, "not a serialized Payload"), namespace, seen)
            if plaintext is None:
                decoded.append(raw)
            else:
                _parse(index, plaintext, _NOT_A_PAYLOAD)
                decoded.append(plaintext)
        return decoded

    def _batch(self, namespace: str, count: int) -> tuple[DataKey, bytes]:
        """The data key for a batch of ``count`` payloads, and a nonce for each."""
        key = self._keys.encryption_key(namespace, namespace if self._bind else None, count)
        return key, self._nonces(envelope.NONCE_SIZE * count)

    def _open(
        self, index: int, payload: Payload, namespace: str, seen: dict[tuple[bytes | None, ...], DataKey]
    ) -> bytes | None:
        """The decrypted inner payload bytes, or None when ``payload`` is not encrypted.

        ``seen`` remembers, for one batch, the data key of each envelope already
        checked: payloads of one batch mostly share a data key.
        """
        metadata = payload.metadata
        if metadata.get(envelope.ENCODING_KEY) != envelope.ENCODING:
            return None
        fields = tuple(metadata.get(name) for name in _ENVELOPE_KEYS)
        key = seen.get(fields)
        if key is None:
            key = seen[fields] = self._envelope_key(index, metadata, namespace)
        if len(metadata) != len(key.metadata):
            # The envelope is exact: an entry added to it is an alteration too, though not authenticated.
            extra = sorted(set(metadata) - set(key.metadata)) or ["?"]
            raise errors.PayloadError(
                index, f"unexpected metadata {extra[0][:40]!r} on an encrypted payload: it was altered"
            )
        try:
            return key.decrypt(payload.data)
        except envelope.AuthenticationFailed:
            raise errors.DecryptionError(index) from None

    def _envelope_key(self, index: int, metadata: Mapping[str, bytes], namespace: str) -> DataKey:
        """Check an envelope's metadata and namespace, and find its data key."""
        key_id, encrypted_key, written_for = _envelope_fields(index, metadata)
        if self._bind and written_for is not None and written_for != namespace:
            raise errors.NamespaceMismatchError(index, written_for, namespace)
        if self._bind and written_for is None and not self._accept_unbound:
            raise errors.UnboundPayloadError(index)
        try:
            key = self._keys.decryption_key(key_id, encrypted_key, written_for)
        except errors.KeyProviderError as exc:
            raise errors.with_index(exc, index) from exc
        if (key.key_id, key.encrypted_key, key.namespace) != (key_id, encrypted_key, written_for):
            # The key's precomputed associated data must be this payload's, whatever the key source did.
            raise errors.DecryptionError(index)
        return key


_ENVELOPE_KEYS = (
    envelope.ALGORITHM_KEY,
    envelope.KEY_ID_KEY,
    envelope.DATA_KEY_KEY,
    envelope.NAMESPACE_KEY,
)
_NOT_A_PAYLOAD = "decrypted data is not a serialized Payload"


def _parse(index: int, raw: bytes, problem: str) -> Payload:
    try:
        return Payload.FromString(raw)
    except DecodeError:
        raise errors.PayloadError(index, problem) from None


def _envelope_fields(index: int, metadata: Mapping[str, bytes]) -> tuple[str, bytes, str | None]:
    """Read and check the envelope metadata of an encrypted payload."""
    get = metadata.get
    algorithm = get(envelope.ALGORITHM_KEY)
    if algorithm != envelope.ALGORITHM:
        shown = "missing" if algorithm is None else repr(bytes(algorithm[:40]))
        raise errors.PayloadError(
            index, f"unsupported {envelope.ALGORITHM_KEY} ({shown}); this codec supports AES-256-GCM"
        )
    key_id = _text(index, get(envelope.KEY_ID_KEY), envelope.KEY_ID_KEY)
    if not KEY_ARN.fullmatch(key_id):
        # Checked before anything is looked up or echoed: what is shown is short and escaped.
        raise errors.PayloadError(index, f"metadata {envelope.KEY_ID_KEY!r} is not a KMS key ARN: {key_id[:80]!r}")
    encrypted_key = get(envelope.DATA_KEY_KEY)
    if not encrypted_key:
        raise errors.PayloadError(index, f"metadata {envelope.DATA_KEY_KEY!r} is missing")
    namespace = get(envelope.NAMESPACE_KEY)
    written_for = None if namespace is None else _text(index, namespace, envelope.NAMESPACE_KEY)
    return key_id, encrypted_key, written_for


def _text(index: int, value: bytes | None, name: str) -> str:
    if not value:
        raise errors.PayloadError(index, f"metadata {name!r} is missing")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.PayloadError(index, f"metadata {name!r} is not UTF-8 text") from None
