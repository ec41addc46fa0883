"""A Temporal ``PayloadCodec`` for Python workers and clients that encrypts through ``codec_grpc.v1.CodecService``.

:func:`data_converter` is the easy, safe wiring (the codec, and failures encrypted too);
:class:`RemotePayloadCodec` is the codec (see :mod:`temporal_codec_client._codec` for its
contracts); its errors and their tree are in :mod:`temporal_codec_client.errors`.
"""

from temporal_codec_client._codec import RemotePayloadCodec
from temporal_codec_client._converter import data_converter
from temporal_codec_client.errors import (
    CodecInternalError,
    CodecInvalidPayloadError,
    CodecPermissionError,
    CodecRejectedError,
    CodecServiceError,
    CodecUnavailableError,
)

__all__ = [
    "CodecInternalError",
    "CodecInvalidPayloadError",
    "CodecPermissionError",
    "CodecRejectedError",
    "CodecServiceError",
    "CodecUnavailableError",
    "RemotePayloadCodec",
    "data_converter",
]
