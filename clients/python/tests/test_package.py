"""What the package exposes, and what importing it pulls in."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest

import temporal_codec_client
from temporal_codec_client import errors

# Top-level modules of the server and of its dependencies a worker must not get.
SERVER_SIDE_MODULES = {"boto3", "botocore", "aiohttp", "prometheus_client", "jwt", "cryptography", "codec_grpc"}


def test_the_public_names():
    assert sorted(temporal_codec_client.__all__) == [
        "CodecInternalError",
        "CodecInvalidPayloadError",
        "CodecPermissionError",
        "CodecRejectedError",
        "CodecServiceError",
        "CodecUnavailableError",
        "RemotePayloadCodec",
        "data_converter",
    ]
    assert all(getattr(temporal_codec_client, name) for name in temporal_codec_client.__all__)
    assert errors.error_for_status is not None


def test_importing_the_package_loads_nothing_of_the_server(tmp_path):
    script = (
        "import json, sys\n"
        "import temporal_codec_client\n"
        "from temporal_codec_client.v1 import codec_pb2\n"
        "print(json.dumps(sorted({name.partition('.')[0] for name in sys.modules})))\n"
    )
    # Run outside the repository so that only installed packages can be imported.
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = set(json.loads(result.stdout))
    assert {"temporal_codec_client", "grpc", "google", "temporalio"} <= loaded
    assert loaded & SERVER_SIDE_MODULES == set()


@pytest.mark.parametrize("code", [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK])
def test_every_status_code_maps_to_one_error(code):
    error = errors.error_for_status("Decode", code, "why")
    assert isinstance(error, errors.CodecServiceError)
    assert (error.code, error.details) == (code, "why")
    assert str(error) == f"codec service Decode failed: {code.name}: why"
    retryable = {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
    assert error.retryable is (code in retryable)


def test_codes_the_mapping_does_not_name_are_internal_errors():
    assert type(errors.error_for_status("Encode", grpc.StatusCode.DATA_LOSS, "")) is errors.CodecInternalError
