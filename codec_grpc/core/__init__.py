"""The codec core: pure and synchronous, no sockets, no environment, no globals.

* :mod:`~codec_grpc.core.protowire`: just enough of the protobuf wire format to
  handle payloads as bytes;
* :mod:`~codec_grpc.core.envelope`: the encrypted payload format, versions 1 and 2,
  and :class:`~codec_grpc.core.envelope.DataKey`;
* :mod:`~codec_grpc.core.compression`: what version 2 compresses, and bounded
  decompression;
* :mod:`~codec_grpc.core.codec`: :class:`EnvelopeCodec`, over lists of payloads;
* :mod:`~codec_grpc.core.namespaces`: namespace names and which one a request is for.

Keys come in through the :class:`KeySource` protocol (``codec_grpc.keys.KeyManager``
in production); the core imports nothing above it.
"""

from codec_grpc.core.codec import EnvelopeCodec, KeySource
from codec_grpc.core.compression import CompressionPolicy
from codec_grpc.core.envelope import DataKey

__all__ = ["CompressionPolicy", "DataKey", "EnvelopeCodec", "KeySource"]
