"""The encrypted payload format, version 1, and the data key that produces it.

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
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from codec_grpc.core import protowire

ENCODING_KEY = "encoding"
KEY_ID_KEY = "encryption-key-id"
DATA_KEY_KEY = "encrypted-data-key"
ALGORITHM_KEY = "encryption-algorithm"
NAMESPACE_KEY = "encryption-namespace"

ENCODING = b"binary/encrypted"
ALGORITHM = b"AES-256-GCM"
AAD_PREFIX = b"temporal-codec/v1"

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16

NonceSource = Callable[[int], bytes]


class AuthenticationFailed(Exception):
    """Opaque: the ciphertext, its associated data or the key do not match."""


def associated_data(key_id: str, encrypted_key: bytes, namespace: str | None) -> bytes:
    """Build the GCM associated data for a payload (layout in the module docstring)."""
    fields = (ENCODING, ALGORITHM, key_id.encode(), encrypted_key, (namespace or "").encode())
    parts = [AAD_PREFIX]
    for field in fields:
        parts.append(struct.pack(">I", len(field)))
        parts.append(field)
    return b"".join(parts)


def envelope_metadata(key_id: str, encrypted_key: bytes, namespace: str | None) -> dict[str, bytes]:
    """The metadata every payload encrypted under this data key carries."""
    metadata = {
        ENCODING_KEY: ENCODING,
        KEY_ID_KEY: key_id.encode(),
        DATA_KEY_KEY: encrypted_key,
        ALGORITHM_KEY: ALGORITHM,
    }
    if namespace is not None:
        metadata[NAMESPACE_KEY] = namespace.encode()
    return metadata


class DataKey:
    """A plaintext AES-256 data key, with everything constant for it precomputed.

    ``key_id`` is the ARN of the KMS key that wrapped it, ``encrypted_key`` the
    KMS CiphertextBlob, ``namespace`` the namespace it is bound to (None when
    unbound). The plaintext key lives only inside the AESGCM object; ``repr``
    never shows it.
    """

    __slots__ = ("key_id", "encrypted_key", "namespace", "metadata", "aad", "_aead", "_payload_prefix")

    def __init__(self, plaintext: bytes, key_id: str, encrypted_key: bytes, namespace: str | None) -> None:
        if len(plaintext) != KEY_SIZE:
            raise ValueError(f"data key must be {KEY_SIZE} bytes, got {len(plaintext)}")
        self.key_id = key_id
        self.encrypted_key = encrypted_key
        self.namespace = namespace
        self.metadata: Mapping[str, bytes] = envelope_metadata(key_id, encrypted_key, namespace)
        self.aad = associated_data(key_id, encrypted_key, namespace)
        self._aead = AESGCM(plaintext)
        # Serialized metadata (field 1, sorted as deterministic serialization) and the tag of field 2.
        self._payload_prefix = protowire.map_entries(1, self.metadata) + b"\x12"

    def encrypt(self, plaintext: bytes, nonce: bytes) -> bytes:
        """Return ``nonce || ciphertext || tag``."""
        return nonce + self._aead.encrypt(nonce, plaintext, self.aad)

    def seal(self, payload: bytes, nonce: bytes) -> bytes:
        """The serialized encrypted ``Payload`` of a serialized payload, built as bytes.

        Equal to ``Payload(metadata=self.metadata, data=self.encrypt(payload, nonce))``
        serialized deterministically.
        """
        sealed = self._aead.encrypt(nonce, payload, self.aad)
        return b"".join((self._payload_prefix, protowire.varint(len(nonce) + len(sealed)), nonce, sealed))

    def decrypt(self, data: bytes) -> bytes:
        """Reverse :meth:`encrypt`; raise :class:`AuthenticationFailed` on any mismatch."""
        if len(data) < NONCE_SIZE + TAG_SIZE:
            raise AuthenticationFailed()
        try:
            return self._aead.decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], self.aad)
        except InvalidTag:
            raise AuthenticationFailed() from None

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id!r}, namespace={self.namespace!r})"
