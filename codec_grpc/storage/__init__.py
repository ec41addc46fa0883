"""External Storage: payloads Temporal's SDKs keep in S3, with a small reference in the history.

Beside the codec service (neither imports the other); the HTTP gateway brings them
together: it decodes references, retrieves what they point to and decodes that.

* :mod:`~codec_grpc.storage.references`: the one module that knows the shapes of
  references (the SDK's reference payload, the codec-encoded marked form, the
  legacy form) and of S3 claims and keys;
* :mod:`~codec_grpc.storage.store`: :class:`PayloadStore`, bounded retrieval and
  offloading: the bucket list, the namespace of a key, counts, bytes,
  concurrency, time, the SHA-256 check;
* :mod:`~codec_grpc.storage.s3`: ``GetObject`` and ``PutObject`` over boto3, the
  layer's only AWS calls, botocore errors turned into ours;
* :mod:`~codec_grpc.storage.errors`: its branch of the error tree.

Workers' gRPC ``Decode`` never comes here: the SDK resolves references itself,
before it calls the codec.
"""

from codec_grpc.storage.errors import (
    IntegrityError,
    StorageError,
    StorageForbiddenError,
    StorageLimitError,
    StorageReferenceError,
    StorageUnavailableError,
    StoredPayloadNotFoundError,
)
from codec_grpc.storage.references import Kind, S3Claim
from codec_grpc.storage.s3 import S3Objects, s3_client
from codec_grpc.storage.store import PayloadStore, StorageLimits

__all__ = [
    "IntegrityError",
    "Kind",
    "PayloadStore",
    "S3Claim",
    "S3Objects",
    "StorageError",
    "StorageForbiddenError",
    "StorageLimitError",
    "StorageLimits",
    "StorageReferenceError",
    "StorageUnavailableError",
    "StoredPayloadNotFoundError",
    "s3_client",
]
