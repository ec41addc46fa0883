"""What key management needs from a key provider (``codec_grpc.kms.KmsKeyProvider`` in production).

Structural interfaces: a provider implements them without importing this module,
so the KMS layer below stays unaware of key management above it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


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


@runtime_checkable
class RegionalKeyProvider(Protocol):
    """Key providers in several Regions (``codec_grpc.kms.RegionalKmsKeyProvider`` with KMS_REGIONS).

    Key management chooses the Region of each call (:mod:`~codec_grpc.keys.regions`): a provider
    with ``regions`` is used this way, any other as one Region's :class:`KeyProvider`.
    """

    @property
    def regions(self) -> tuple[str, ...]:
        """The Regions, in the order of preference (KMS_REGIONS)."""
        ...

    def generate_data_key(self, key_id: str, namespace: str | None, region: str) -> WrappedKey:
        """A new AES-256 data key under ``key_id`` as ``region`` names it, bound to ``namespace``."""
        ...

    def decrypt_data_key(self, encrypted_key: bytes, key_arn: str, namespace: str | None) -> bytes:
        """The plaintext of a data key, unwrapped in the Region of ``key_arn``."""
        ...

    def key_arn(self, key_id: str, region: str) -> str:
        """The ARN of the master key that ``key_id`` names in ``region`` now."""
        ...

    def paused(self, key_id: str, region: str) -> bool:
        """Whether KMS in ``region`` was found unavailable for ``key_id`` moments ago."""
        ...
