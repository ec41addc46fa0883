"""The KMS layer: the only code that imports boto3 and botocore.

* :mod:`~codec_grpc.kms.provider`: :class:`KmsKeyProvider`, which generates and
  unwraps data keys and translates every botocore error into the service's own
  errors (``codec_grpc.errors``);
* :mod:`~codec_grpc.kms.client`: the boto3 client, built once and injected;
* :mod:`~codec_grpc.kms.devkms`: the embedded development KMS (moto) of ``make run``.
"""

from codec_grpc.kms.provider import GeneratedKey, KmsCallStats, KmsKeyProvider, KmsLimits, encryption_context

__all__ = ["GeneratedKey", "KmsCallStats", "KmsKeyProvider", "KmsLimits", "encryption_context"]
