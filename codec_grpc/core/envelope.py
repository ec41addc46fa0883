"""The encrypted payload format, versions 1 and 2, and the data key that produces them.

An encrypted payload is a ``Payload`` whose metadata holds::

    encoding              b"binary/encrypted"
    encryption-key-id     ARN of the KMS key that wrapped the data key (UTF-8)
    encrypted-data-key    KMS CiphertextBlob of the data key (raw bytes)
    encryption-algorithm  b"AES-256-GCM"
    encryption-namespace  Temporal namespace the payload is bound to (UTF-8);
                          absent when namespace binding is off

and whose ``data`` is ``nonce (12 bytes) || AES-256-GCM ciphertext || tag (16 bytes)``
of the deterministic serialization of the whole inner ``Payload`` (metadata,
data and external_payloads).

The GCM associated data binds the metadata to the ciphertext::

    b"temporal-codec/v1"
    || u32be(len(encoding))             || encoding
    || u32be(len(algorithm))            || algorithm
    || u32be(len(key id))               || key id
    || u32be(len(encrypted data key))   || encrypted data key
    || u32be(len(namespace))            || namespace   (empty when unbound)

Changing any of these values, or moving a payload to another key, makes
decryption fail. ``docs/format-v1.md`` is the specification; ``tests/vectors/format_v1.json``
pins the exact bytes.

Version 2 is version 1 with the inner payload compressed before encryption. Its
metadata has one entry more, ``encryption-compression`` (``zstd`` or ``zlib``),
and its associated data another prefix and one field more::

    b"temporal-codec/v2"
    || the five length-prefixed fields of version 1
    || u32be(len(compression))          || compression

so changing, removing or adding the algorithm makes decryption fail too.
``docs/format-v2.md`` is its specification, ``tests/vectors/format_v2.json`` its
vectors; ``codec_grpc.core.compression`` compresses and decompresses.
"""

from __future__ import annotations

import os
import struct
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from codec_grpc.core import protowire

ENCODING_KEY = "encoding"
KEY_ID_KEY = "encryption-key-id"
DATA_KEY_KEY = "encrypted-data-key"
ALGORITHM_KEY = "encryption-algorithm"
NAMESPACE_KEY = "encryption-namespace"
COMPRESSION_KEY = "encryption-compression"

ENCODING = b"binary/encrypted"
ALGORITHM = b"AES-256-GCM"
AAD_PREFIX = b"temporal-codec/v1"
AAD_PREFIX_V2 = b"temporal-codec/v2"
COMPRESSIONS = ("zstd", "zlib")  # the values of COMPRESSION_KEY, version 2 only

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16

NonceSource = Callable[[int], bytes]


class RandomBlocks:
    """A :data:`NonceSource`: ``os.urandom`` read ``block`` bytes at a time and handed out in slices,
    each byte once.

    ``os.urandom`` lets other threads run during its system call; in a busy threaded server every
    such release hands the interpreter to another thread and back (two context switches). One read
    per 64 KiB is one per 5,461 nonces instead of one per request. Nonces are public (they precede
    each ciphertext); what matters is that none repeats, and the kernel's random bytes are used once
    each. A forked child drops the block it inherited, so parent and child never share one.
    """

    def __init__(self, block: int = 64 * 1024, source: Callable[[int], bytes] = os.urandom) -> None:
        self._block = block
        self._source = source
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0
        this = weakref.ref(self)  # registered for good: it must not keep the source alive
        os.register_at_fork(after_in_child=lambda: _drop_block(this()))

    def __call__(self, size: int) -> bytes:
        if size > self._block // 4:
            return self._source(size)
        with self._lock:
            start, end = self._offset, self._offset + size
            if end > len(self._buffer):
                self._buffer, start, end = self._source(self._block), 0, size
            self._offset = end
            return self._buffer[start:end]

    def _drop(self) -> None:
        self._lock = threading.Lock()  # another thread of the parent may have held it at the fork
        self._buffer, self._offset = b"", 0


def _drop_block(source: RandomBlocks | None) -> None:
    if source is not None:
        source._drop()


class AuthenticationFailed(Exception):
    """Opaque: the ciphertext, its associated data or the key do not match."""


def associated_data(key_id: str, encrypted_key: bytes, namespace: str | None, compression: str | None = None) -> bytes:
    """Build the GCM associated data for a payload (layout in the module docstring): version 2
    when ``compression`` names an algorithm, else version 1."""
    fields = [ENCODING, ALGORITHM, key_id.encode(), encrypted_key, (namespace or "").encode()]
    parts = [AAD_PREFIX]
    if compression is not None:
        parts = [AAD_PREFIX_V2]
        fields.append(compression.encode())
    for field in fields:
        parts.append(struct.pack(">I", len(field)))
        parts.append(field)
    return b"".join(parts)


def envelope_metadata(
    key_id: str, encrypted_key: bytes, namespace: str | None, compression: str | None = None
) -> dict[str, bytes]:
    """The metadata every payload encrypted under this data key (and compressed so) carries."""
    metadata = {
        ENCODING_KEY: ENCODING,
        KEY_ID_KEY: key_id.encode(),
        DATA_KEY_KEY: encrypted_key,
        ALGORITHM_KEY: ALGORITHM,
    }
    if namespace is not None:
        metadata[NAMESPACE_KEY] = namespace.encode()
    if compression is not None:
        metadata[COMPRESSION_KEY] = compression.encode()
    return metadata


def compression_overhead(compression: str) -> int:
    """How many bytes the envelope entry naming ``compression`` adds to a serialized payload."""
    return len(protowire.map_entries(1, {COMPRESSION_KEY: compression.encode()}))


class _Format:
    """What is constant for the payloads of one data key and one format version (and algorithm)."""

    __slots__ = ("aad", "metadata", "prefix")

    def __init__(self, key_id: str, encrypted_key: bytes, namespace: str | None, compression: str | None) -> None:
        self.metadata: Mapping[str, bytes] = envelope_metadata(key_id, encrypted_key, namespace, compression)
        self.aad = associated_data(key_id, encrypted_key, namespace, compression)
        # Serialized metadata (field 1, sorted as deterministic serialization) and the tag of field 2.
        self.prefix = protowire.map_entries(1, self.metadata) + b"\x12"


class DataKey:
    """A plaintext AES-256 data key, with everything constant for it precomputed.

    ``key_id`` is the ARN of the KMS key that wrapped it, ``encrypted_key`` the
    KMS CiphertextBlob, ``namespace`` the namespace it is bound to (None when
    unbound). ``metadata`` and ``aad`` are those of version 1; the methods take
    ``compression`` (an algorithm of :data:`COMPRESSIONS`: version 2, or None:
    version 1). The plaintext key lives only inside the AESGCM object; ``repr``
    never shows it.
    """

    __slots__ = ("key_id", "encrypted_key", "namespace", "metadata", "aad", "_aead", "_formats")

    def __init__(self, plaintext: bytes, key_id: str, encrypted_key: bytes, namespace: str | None) -> None:
        if len(plaintext) != KEY_SIZE:
            raise ValueError(f"data key must be {KEY_SIZE} bytes, got {len(plaintext)}")
        self.key_id = key_id
        self.encrypted_key = encrypted_key
        self.namespace = namespace
        self._formats = {
            compression: _Format(key_id, encrypted_key, namespace, compression) for compression in (None, *COMPRESSIONS)
        }
        self.metadata = self._formats[None].metadata
        self.aad = self._formats[None].aad
        self._aead = AESGCM(plaintext)

    def envelope(self, compression: str | None = None) -> Mapping[str, bytes]:
        """The metadata of a payload of this key, compressed with ``compression`` (None: not)."""
        return self._formats[compression].metadata

    def encrypt(self, plaintext: bytes, nonce: bytes, compression: str | None = None) -> bytes:
        """Return ``nonce || ciphertext || tag``."""
        return nonce + self._aead.encrypt(nonce, plaintext, self._formats[compression].aad)

    def seal(self, payload: bytes, nonce: bytes, compression: str | None = None) -> bytes:
        """The serialized encrypted ``Payload`` of a serialized payload (``compression``: already
        compressed with it), built as bytes.

        Equal to ``Payload(metadata=self.envelope(compression), data=self.encrypt(payload, nonce,
        compression))`` serialized deterministically.
        """
        form = self._formats[compression]
        sealed = self._aead.encrypt(nonce, payload, form.aad)
        return b"".join((form.prefix, protowire.varint(len(nonce) + len(sealed)), nonce, sealed))

    def seal_records(
        self, payloads: Sequence[bytes], nonces: bytes, field_tag: bytes = b"\x0a", *, consume: bool = False
    ) -> list[bytes]:
        """:meth:`seal` of each payload (version 1, not compressed) with its ``NONCE_SIZE`` bytes of
        ``nonces``, each already framed as a field of a response (``field_tag``, then its length):
        joined, they are the serialized response. One pass instead of sealing, then framing.

        ``consume`` (``payloads`` a list): each payload is dropped from the list once sealed, so that
        a large request is not held twice while its answer grows."""
        form = self._formats[None]
        prefix, aad, encrypt = form.prefix, form.aad, self._aead.encrypt
        prefix_size, varint = len(prefix), protowire.varint
        records = []
        for index, payload in enumerate(payloads):
            nonce = nonces[index * NONCE_SIZE : (index + 1) * NONCE_SIZE]
            sealed = encrypt(nonce, payload, aad)
            data_size = varint(NONCE_SIZE + len(sealed))
            size = varint(prefix_size + len(data_size) + NONCE_SIZE + len(sealed))
            records.append(b"".join((field_tag, size, prefix, data_size, nonce, sealed)))
            if consume:
                payloads[index] = b""  # type: ignore[index]  # a list, as documented
        return records

    def decrypt(self, data: bytes, compression: str | None = None) -> bytes:
        """Reverse :meth:`encrypt`; raise :class:`AuthenticationFailed` on any mismatch."""
        if len(data) < NONCE_SIZE + TAG_SIZE:
            raise AuthenticationFailed()
        try:
            return self._aead.decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], self._formats[compression].aad)
        except InvalidTag:
            raise AuthenticationFailed() from None

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id!r}, namespace={self.namespace!r})"
