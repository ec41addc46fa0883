"""What key management needs from a key provider (``codec_grpc.kms.KmsKeyProvider`` in production).

Structural interfaces: a provider implements them without importing this module,
so the KMS layer below stays unaware of key management above it.
"""

from __future__ import annotations

from typing import Protocol


class WrappedKey(Protocol):
    """A data key fresh from the provider: its plaintext, its wrapped form, the master key's ARN."""

    @property
    def plaintext(self) -> bytes: ...

    @property
    def encrypted_key(self) -> bytes: ...

    @property
    def key_arn(self) -> str: ...


class KeyProvider(Protocol):
    """Generates and unwraps data keys under master keys; raises ``codec_grpc.errors.KeyProviderError``."""

    def generate_data_key(self, key_id: str, namespace: str | None) -> WrappedKey:
        """A new AES-256 data key under ``key_id`` (alias, key id or ARN), bound to ``namespace``."""
        ...

    def decrypt_data_key(self, encrypted_key: bytes, key_arn: str, namespace: str | None) -> bytes:
        """The plaintext of a data key that master key ``key_arn`` wrapped for ``namespace``."""
        ...

    def key_arn(self, key_id: str) -> str:
        """The ARN of the master key that ``key_id`` (alias, key id or ARN) names now."""
        ...
