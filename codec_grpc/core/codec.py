"""The envelope-encryption codec: pure and synchronous, over lists of payloads.

Contract (as ``temporalio.converter.PayloadCodec``):

* ``encode`` and ``decode`` return a new list with exactly as many payloads as
  given, in the same order; they never mutate their input.
* ``encode`` encrypts each whole payload (metadata, data, external_payloads)
  into the format of ``codec_grpc.core.envelope``: version 2 when the
  :class:`~codec_grpc.core.compression.CompressionPolicy` compresses it, else
  version 1.
* ``decode`` decrypts (and decompresses, within the policy's bounds) each
  ``binary/encrypted`` payload of either version and returns every other payload
  as it was given (the same object, or the same bytes).
* A failure raises a ``codec_grpc.errors.CodecError`` naming the payload index;
  no partial result is returned.

The codec holds no sockets, reads no environment and keeps no globals: keys
come from an injected :class:`KeySource`, nonces from an injected source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from google.protobuf.message import DecodeError

from codec_grpc import errors
from codec_grpc.core import compression, envelope, protowire
from codec_grpc.core.compression import CompressionPolicy
from codec_grpc.core.envelope import DataKey, NonceSource
from codec_grpc.keys.allowlist import KEY_ARN
from codec_grpc.v1.codec_pb2 import DecodeResponse, Payload


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

    ``compression`` says what encode compresses (nothing by default) and bounds what
    decode decompresses: payloads of format version 2 decode whatever it says.
    """

    def __init__(
        self,
        keys: KeySource,
        *,
        bind_namespace: bool = True,
        accept_unbound: bool = False,
        compression: CompressionPolicy = CompressionPolicy(),  # noqa: B008 - frozen settings, a thread-safe pool
        nonces: NonceSource | None = None,
    ) -> None:
        self._keys = keys
        self._bind = bind_namespace
        self._accept_unbound = accept_unbound
        self._compression = compression
        # The kernel's random bytes, read in blocks (envelope.RandomBlocks), unless given (tests, vectors).
        self._nonces = nonces or envelope.RandomBlocks()

    def with_keys(self, keys: KeySource) -> EnvelopeCodec:
        """The same codec with other keys (the service's per-request key sources)."""
        return EnvelopeCodec(
            keys,
            bind_namespace=self._bind,
            accept_unbound=self._accept_unbound,
            compression=self._compression,
            nonces=self._nonces,
        )

    @property
    def bind_namespace(self) -> bool:
        return self._bind

    @property
    def accept_unbound(self) -> bool:
        return self._accept_unbound

    @property
    def compression(self) -> CompressionPolicy:
        return self._compression

    def encode(self, payloads: Sequence[Payload], namespace: str) -> list[Payload]:
        if not payloads:
            return []
        key, nonces = self._batch(namespace, len(payloads))
        size = envelope.NONCE_SIZE
        encoded = []
        with self._compression.compressor() as compressor:
            for i, payload in enumerate(payloads):
                plaintext, algorithm = payload.SerializeToString(deterministic=True), None
                if compressor is not None and (packed := compressor.shrink(plaintext)) is not None:
                    plaintext, algorithm = packed, compressor.name
                data = key.encrypt(plaintext, nonces[i * size : (i + 1) * size], algorithm)
                encoded.append(Payload(metadata=key.envelope(algorithm), data=data))
        return encoded

    def encode_serialized(self, payloads: Sequence[bytes], namespace: str, *, checked: bool = False) -> list[bytes]:
        """Like :meth:`encode`, over serialized payloads; the plaintext is each payload's bytes as given.

        Each payload is checked to be a serialized ``Payload`` unless ``checked`` says the
        caller did so already (the service parses the whole request once, which
        costs a quarter of parsing its payloads one by one).
        """
        if not payloads:
            return []
        if not checked:
            _check_payloads(payloads)
        key, nonces = self._batch(namespace, len(payloads))
        size = envelope.NONCE_SIZE
        if self._compression.algorithm is None:
            return [key.seal(raw, nonces[i * size : (i + 1) * size]) for i, raw in enumerate(payloads)]
        sealed = []
        with self._compression.compressor() as compressor:
            for i, raw in enumerate(payloads):
                nonce = nonces[i * size : (i + 1) * size]
                packed = None if compressor is None else compressor.shrink(raw)
                if packed is None or compressor is None:
                    sealed.append(key.seal(raw, nonce))
                else:
                    sealed.append(key.seal(packed, nonce, compressor.name))
        return sealed

    def encode_response(self, payloads: list[bytes], namespace: str, *, checked: bool = False) -> bytes:
        """The serialized ``EncodeResponse`` of :meth:`encode_serialized`'s answers, built as they are
        sealed when nothing is compressed (the common case: one pass over the payloads).

        Consumes ``payloads``: once the data key is found (after anything that may make the caller
        run the call again, as :class:`~codec_grpc.keys.WouldBlock`), each is dropped from the list
        as it is sealed, so that a large request is not held twice while its answer is built."""
        if not payloads or self._compression.algorithm is not None:
            answers = self.encode_serialized(payloads, namespace, checked=checked)
            payloads.clear()
            return protowire.join_response(answers)
        if not checked:
            _check_payloads(payloads)
        key, nonces = self._batch(namespace, len(payloads))
        records = key.seal_records(payloads, nonces, consume=True)
        payloads.clear()
        return b"".join(records)

    def decode(self, payloads: Sequence[Payload], namespace: str) -> list[Payload]:
        decoded: list[Payload] = []
        seen: dict[tuple[bytes | None, ...], DataKey] = {}
        budget = _Budget(self._compression)
        for index, payload in enumerate(payloads):
            plaintext = self._open(index, payload, namespace, seen, budget)
            decoded.append(payload if plaintext is None else _parse(index, plaintext, _NOT_A_PAYLOAD))
        return decoded

    def decode_serialized(self, payloads: Sequence[bytes], namespace: str) -> list[bytes]:
        """Like :meth:`decode`, over serialized payloads; pass-through payloads come back as given.

        Payloads of one batch mostly share a data key and arrive serialized alike: once an envelope
        was parsed and checked, a payload whose bytes are that envelope's metadata followed by its
        data field alone is read without parsing it (see :class:`_Envelopes`). The decrypted
        payloads are checked with one parse of them all; when it fails, one by one, to name the
        payload at fault.
        """
        decoded: list[bytes] = []
        seen: dict[tuple[bytes | None, ...], DataKey] = {}
        envelopes = _Envelopes()
        budget = _Budget(self._compression)
        opened: list[int] = []
        for index, raw in enumerate(payloads):
            known = envelopes.match(raw)
            if known is not None:
                key, algorithm, data = known
            else:
                payload = _parse(index, raw, "not a serialized Payload")
                found = self._envelope(index, payload, namespace, seen)
                if found is None:
                    decoded.append(raw)
                    continue
                key, algorithm = found
                data = payload.data
                envelopes.learn(raw, data, key, algorithm)
            decoded.append(self._decrypt(index, key, data, algorithm, budget))
            opened.append(index)
        if opened and not _parses_as_payloads([decoded[i] for i in opened]):
            for index in opened:
                _parse(index, decoded[index], _NOT_A_PAYLOAD)
        return decoded

    def _batch(self, namespace: str, count: int) -> tuple[DataKey, bytes]:
        """The data key for a batch of ``count`` payloads, and a nonce for each."""
        key = self._keys.encryption_key(namespace, namespace if self._bind else None, count)
        return key, self._nonces(envelope.NONCE_SIZE * count)

    def _open(
        self,
        index: int,
        payload: Payload,
        namespace: str,
        seen: dict[tuple[bytes | None, ...], DataKey],
        budget: _Budget,
    ) -> bytes | None:
        """The decrypted (and decompressed) inner payload bytes, or None when ``payload`` is not encrypted."""
        found = self._envelope(index, payload, namespace, seen)
        if found is None:
            return None
        key, algorithm = found
        return self._decrypt(index, key, payload.data, algorithm, budget)

    def _envelope(
        self, index: int, payload: Payload, namespace: str, seen: dict[tuple[bytes | None, ...], DataKey]
    ) -> tuple[DataKey, str | None] | None:
        """The data key and compression algorithm of an encrypted payload, its envelope checked; None
        when ``payload`` is not encrypted.

        ``seen`` remembers, for one batch, the data key of each envelope already
        checked: payloads of one batch mostly share a data key.
        """
        metadata = payload.metadata
        if metadata.get(envelope.ENCODING_KEY) != envelope.ENCODING:
            return None
        algorithm = _compression(index, metadata.get(envelope.COMPRESSION_KEY))
        fields = tuple(metadata.get(name) for name in _ENVELOPE_KEYS)
        key = seen.get(fields)
        if key is None:
            key = seen[fields] = self._envelope_key(index, metadata, namespace)
        expected = key.envelope(algorithm)
        if len(metadata) != len(expected):
            # The envelope is exact: an entry added to it is an alteration too, though not authenticated.
            extra = sorted(set(metadata) - set(expected)) or ["?"]
            raise errors.PayloadError(
                index, f"unexpected metadata {extra[0][:40]!r} on an encrypted payload: it was altered"
            )
        return key, algorithm

    def _decrypt(self, index: int, key: DataKey, data: bytes, algorithm: str | None, budget: _Budget) -> bytes:
        try:
            plaintext = key.decrypt(data, algorithm)
        except envelope.AuthenticationFailed:
            raise errors.DecryptionError(index) from None
        return plaintext if algorithm is None else budget.decompress(index, algorithm, plaintext)

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
_COMPRESSIONS = {name.encode(): name for name in envelope.COMPRESSIONS}


class _Envelopes:
    """The envelopes one batch checked, by the bytes of their metadata as the client serialized them.

    A payload's bytes are its fields in any order; a client serializes the payloads of one batch
    alike. When a checked payload ends with its data field, everything before that field is its
    metadata (and whatever else it carried): a later payload made of those same bytes followed by a
    data field alone parses to the same metadata with other data, so it has the same data key and
    the same checks pass; only its data remains to decrypt. Anything else is parsed and checked.
    """

    __slots__ = ("_known",)

    _LIMIT = 8  # envelopes remembered per batch: a batch under many data keys is parsed as before

    def __init__(self) -> None:
        self._known: list[tuple[bytes, DataKey, str | None]] = []

    def match(self, raw: bytes) -> tuple[DataKey, str | None, bytes] | None:
        """The data key, algorithm and data of ``raw`` when it is a known envelope with other data."""
        for head, key, algorithm in self._known:
            if not raw.startswith(head):
                continue
            start = len(head)
            if len(raw) <= start + 1 or raw[start] != _DATA_TAG:
                return None
            try:
                length, begin = protowire.read_varint(raw, start + 1)
            except protowire.WireError:
                return None
            if begin + length != len(raw):
                return None
            return key, algorithm, raw[begin:]
        return None

    def learn(self, raw: bytes, data: bytes, key: DataKey, algorithm: str | None) -> None:
        """Remember a checked envelope's metadata bytes, when ``raw`` ends with its data field."""
        if len(self._known) >= self._LIMIT:
            return
        field = bytes((_DATA_TAG,)) + protowire.varint(len(data))
        head_size = len(raw) - len(data) - len(field)
        if head_size > 0 and raw.endswith(data) and raw[head_size : head_size + len(field)] == field:
            self._known.append((raw[:head_size], key, algorithm))


_DATA_TAG = 0x12  # Payload.data: field 2, length-delimited


def _parses_as_payloads(serialized: list[bytes]) -> bool:
    """Whether each of ``serialized`` is a serialized Payload: one parse of them all as a response."""
    try:
        DecodeResponse.FromString(protowire.join_response(serialized))
    except DecodeError:
        return False
    return True


class _Budget:
    """What one batch may still decompress: ``max_decompressed_bytes`` for all its payloads together,
    and ``max_ratio`` times each payload's compressed size."""

    __slots__ = ("_left", "_policy")

    def __init__(self, policy: CompressionPolicy) -> None:
        self._policy = policy
        self._left = policy.max_decompressed_bytes

    def decompress(self, index: int, algorithm: str, data: bytes) -> bytes:
        policy = self._policy
        by_ratio = policy.max_ratio * len(data)
        limit = min(by_ratio, self._left)
        try:
            out = policy.decompress(algorithm, data, limit)
        except compression.TooLarge:
            if limit == by_ratio:
                bound = f"{policy.max_ratio} times its {len(data)} compressed bytes (COMPRESSION_MAX_RATIO)"
            elif limit == policy.max_decompressed_bytes:
                bound = f"{limit} bytes (DECOMPRESSED_MAX_BYTES)"
            else:
                bound = (
                    f"the {limit} bytes left of DECOMPRESSED_MAX_BYTES ({policy.max_decompressed_bytes} bytes "
                    "for all the payloads of a request)"
                )
            raise errors.DecompressionLimitError(index, bound) from None
        except compression.Malformed as exc:
            raise errors.PayloadError(index, f"decompression failed: {exc}") from None
        self._left -= len(out)
        return out


def _compression(index: int, value: bytes | None) -> str | None:
    """The algorithm an envelope names (None: format version 1)."""
    if value is None:
        return None
    algorithm = _COMPRESSIONS.get(value)
    if algorithm is None:
        shown = repr(bytes(value[:40]))
        raise errors.PayloadError(
            index,
            f"unsupported {envelope.COMPRESSION_KEY} ({shown}); this codec supports {', '.join(envelope.COMPRESSIONS)}",
        )
    return algorithm


def _check_payloads(payloads: Sequence[bytes]) -> None:
    """Each of ``payloads`` must be a serialized Payload; the first that is not is named."""
    for index, raw in enumerate(payloads):
        _parse(index, raw, "not a serialized Payload")


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
