"""The errors of external storage: a branch of the domain error tree (``codec_grpc.errors``).

Each names the payload at fault by its index in the request, and never holds
payload contents. The gateway gives each its HTTP status in one place
(``codec_grpc.gateway.storage``)::

    CodecError
    └── StorageError                   external storage refused or failed
        ├── StorageReferenceError      not a reference we can read           400
        │   └── IntegrityError         SHA-256 differs from the claim's      400
        ├── StorageForbiddenError      bucket not allowed, other namespace   403
        ├── StoredPayloadNotFoundError no such object (lifecycle expiry?)    400 (a 404 means no /download to the UI)
        ├── StorageLimitError          over a configured limit               413
        └── StorageUnavailableError    S3 unreachable, throttled, denied     503
"""

from __future__ import annotations

from codec_grpc.errors import CodecError


class StorageError(CodecError):
    """External storage refused or failed; ``index`` is the payload's position (None: the request)."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        super().__init__(reason if index is None else f"payload {index}: {reason}")
        self.index = index
        self.reason = reason


class StorageReferenceError(StorageError):
    """The payload is not a reference this server can read (malformed, another driver's claim)."""


class IntegrityError(StorageReferenceError):
    """The stored object's SHA-256 is not the one the reference claims: altered, or a forged reference."""


class StorageForbiddenError(StorageError):
    """The reference names a bucket outside EXTERNAL_STORAGE_BUCKETS, or an object of another namespace."""


class StoredPayloadNotFoundError(StorageError):
    """The referenced object does not exist (deleted, expired by a lifecycle rule, wrong bucket)."""


class StorageLimitError(StorageError):
    """Too many references, or too many bytes, for one request."""


class StorageUnavailableError(StorageError):
    """S3 could not be reached, timed out, throttled, or refused the server's credentials."""
