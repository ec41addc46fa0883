"""data_converter(): our codec and encrypted failures, the safe wiring in one call."""

from __future__ import annotations

import dataclasses

import pytest
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes

from temporal_codec_client import RemotePayloadCodec, data_converter


def test_the_codec_and_encrypted_failures():
    converter = data_converter("codec.internal:50051", namespace="orders", timeout=3.0)

    assert isinstance(converter.payload_codec, RemotePayloadCodec)
    assert converter.payload_codec.namespace == "orders"
    assert converter.failure_converter_class is DefaultFailureConverterWithEncodedAttributes
    assert isinstance(converter.failure_converter, DefaultFailureConverterWithEncodedAttributes)
    assert converter.payload_converter_class is DataConverter.default.payload_converter_class
    assert converter.external_storage is None


def test_external_storage_and_a_base_converter_are_kept():
    storage = object()
    base = dataclasses.replace(DataConverter.default)

    converter = data_converter("codec:50051", external_storage=storage, base=base)

    assert converter.external_storage is storage
    assert isinstance(converter.payload_codec, RemotePayloadCodec)
    assert converter.payload_codec.namespace == "default"


def test_bad_codec_arguments_are_refused():
    with pytest.raises(ValueError, match="must be a Temporal namespace name"):
        data_converter("codec:50051", namespace="no spaces")
