"""The KMS layer: the only code that imports boto3 and botocore.

* :mod:`~codec_grpc.kms.provider`: :class:`KmsKeyProvider`, which generates and
  unwraps data keys and translates every botocore error into the service's own
  errors (``codec_grpc.errors``);
* :mod:`~codec_grpc.kms.regions`: :class:`RegionalKmsKeyProvider`, one provider per Region of
  KMS_REGIONS, each call sent to its Region;
* :mod:`~codec_grpc.kms.client`: the boto3 client, built once and injected;
* :mod:`~codec_grpc.kms.devkms`: the embedded development KMS (moto) of ``make run``.
"""

from codec_grpc.kms.provider import (
    GeneratedKey,
    KmsCallStats,
    KmsKeyProvider,
    KmsLimiter,
    KmsLimits,
    encryption_context,
)
from codec_grpc.kms.regions import RegionalKmsKeyProvider

__all__ = [
    "GeneratedKey",
    "KmsCallStats",
    "KmsKeyProvider",
    "KmsLimiter",
    "KmsLimits",
    "RegionalKmsKeyProvider",
    "encryption_context",
]
