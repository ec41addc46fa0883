"""Temporal payload codec server: AES-256-GCM envelope encryption with AWS KMS data keys.

Layers, each importing only those below it:

* transport: ``service`` (gRPC), ``gateway*`` (HTTP/JSON in front of gRPC), ``server.py`` (process),
  ``app`` (wiring)
* codec core: ``codec`` (pure, over lists of payloads), ``wireformat``
* key management: ``keys`` and ``caches`` (hot and cold data-key caches)
* key provider: ``kms`` (the only module that talks to AWS KMS)

Worker side, apart from the layers: ``client`` (``RemotePayloadCodec``, a temporalio
payload codec calling the service; needs the ``temporal`` extra) and ``client_errors``.
"""

from codec_grpc.codec import EnvelopeCodec
from codec_grpc.errors import CodecError

__all__ = ["CodecError", "EnvelopeCodec"]
