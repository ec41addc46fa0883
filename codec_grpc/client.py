"""Deprecated: the worker codec is its own distribution now, ``temporal-codec-client``.

Install it with ``pip install ./clients/python`` and import
``temporal_codec_client.RemotePayloadCodec``. This module re-exports it for one
release, with a ``DeprecationWarning``; it is outside the server's layers.
"""

from __future__ import annotations

import warnings

try:
    from temporal_codec_client import (
        CodecInternalError,
        CodecInvalidPayloadError,
        CodecPermissionError,
        CodecRejectedError,
        CodecServiceError,
        CodecUnavailableError,
        RemotePayloadCodec,
    )
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "codec_grpc.client moved to the temporal-codec-client distribution: "
        "pip install ./clients/python, then import temporal_codec_client"
    ) from exc

warnings.warn(
    "codec_grpc.client is deprecated and will be removed: import temporal_codec_client instead "
    "(pip install ./clients/python)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "CodecInternalError",
    "CodecInvalidPayloadError",
    "CodecPermissionError",
    "CodecRejectedError",
    "CodecServiceError",
    "CodecUnavailableError",
    "RemotePayloadCodec",
]
