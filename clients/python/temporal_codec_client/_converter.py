"""The data converter a worker or client should use: our codec, and failures encrypted too.

Temporal's default failure converter leaves a failure's message and stack trace in
clear text in the history; only its details go through the codec. Exceptions often
quote the data they failed on, so :func:`data_converter` makes the safe choice the
easy one: ``DefaultFailureConverterWithEncodedAttributes`` moves message and stack
trace into an encoded payload as well.

With ``external_storage`` (temporalio >= 1.35, e.g. ``S3StorageDriver``), payloads
over its threshold go to storage *after* the codec: the bucket holds ciphertext only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes

from temporal_codec_client._codec import RemotePayloadCodec


def data_converter(
    target: str,
    *,
    namespace: str = "default",
    external_storage: Any = None,
    base: DataConverter | None = None,
    **codec_options: Any,
) -> DataConverter:
    """A ``DataConverter`` with :class:`RemotePayloadCodec` and encrypted failures.

    Args:
        target: ``host:port`` of the codec service.
        namespace: the Temporal namespace of the client: the service binds payloads to it.
        external_storage: a ``temporalio.converter.ExternalStorage`` (temporalio >= 1.35), or None.
        base: the converter to start from (its payload converter is kept); default
            ``DataConverter.default``.
        codec_options: further :class:`RemotePayloadCodec` arguments (``credentials``,
            ``metadata``, ``timeout``, ...).
    """
    changes: dict[str, Any] = {
        "payload_codec": RemotePayloadCodec(target, namespace=namespace, **codec_options),
        "failure_converter_class": DefaultFailureConverterWithEncodedAttributes,
    }
    if external_storage is not None:
        changes["external_storage"] = external_storage
    return dataclasses.replace(base or DataConverter.default, **changes)
