"""The server package without the worker client, and the deprecated re-export ``codec_grpc.client``."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)


def test_the_server_imports_without_temporalio_or_the_client():
    # A None entry in sys.modules makes any import of that name fail, as if it were not installed.
    result = run(
        "import sys\n"
        "sys.modules['temporalio'] = None\n"
        "sys.modules['temporal_codec_client'] = None\n"
        "import codec_grpc, codec_grpc.runtime.server_process, codec_grpc.runtime.gateway_process\n"
        "try:\n"
        "    import codec_grpc.client\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert "pip install ./clients/python" in result.stdout


def test_the_old_import_warns_and_gives_the_client_distributions_classes(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delitem(sys.modules, "codec_grpc.client", raising=False)  # imported anew: it warns again
    with pytest.warns(DeprecationWarning, match="import temporal_codec_client instead"):
        import codec_grpc.client as shim
    import temporal_codec_client

    assert shim.RemotePayloadCodec is temporal_codec_client.RemotePayloadCodec
    assert shim.CodecUnavailableError is temporal_codec_client.CodecUnavailableError
