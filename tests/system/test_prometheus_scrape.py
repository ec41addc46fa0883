"""A real Prometheus server scrapes a running server.py and can query what it served."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from codec_grpc.v1 import codec_pb2, codec_pb2_grpc
from tests.support.fixtures import free_port, wait_for_port
from tests.support.paths import ROOT

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="Prometheus not installed (apt-get install prometheus)"
)


def query(port: int, expression: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=5) as answer:
        document = json.load(answer)
    assert document["status"] == "success", document
    return list(document["data"]["result"])


def test_prometheus_scrapes_the_codec_server(server_script_env, kms_endpoint, make_key, tmp_path: Path) -> None:
    alias, _ = make_key()
    grpc_port, metrics_port, prometheus_port = free_port(), free_port(), free_port()
    env = server_script_env | {
        "AWS_ENDPOINT_URL_KMS": kms_endpoint,
        "AWS_REGION": "us-east-1",
        "KMS_KEY_ALIAS": alias,
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": str(grpc_port),
        "GATEWAY_ENABLED": "false",
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(metrics_port),
    }
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: temporal-codec\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    root = ROOT
    with (tmp_path / "server.log").open("wb") as server_log, (tmp_path / "prometheus.log").open("wb") as prom_log:
        server = subprocess.Popen(
            [sys.executable, "server.py"], env=env, cwd=root, stdout=server_log, stderr=subprocess.STDOUT
        )
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            stdout=prom_log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(grpc_port, proc=server)
            wait_for_port(prometheus_port, proc=prometheus)
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = codec_pb2_grpc.CodecServiceStub(channel)
                for _ in range(5):
                    stub.Encode(codec_pb2.EncodeRequest(payloads=[codec_pb2.Payload(data=b"x")] * 3))
            deadline = time.monotonic() + 30
            handled: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                up = query(prometheus_port, 'up{job="temporal-codec"}')
                handled = query(prometheus_port, 'grpc_server_handled_total{grpc_method="Encode",grpc_code="OK"}')
                if up and up[0]["value"][1] == "1" and handled and handled[0]["value"][1] == "5":
                    break
                time.sleep(0.5)
            assert handled and handled[0]["value"][1] == "5", (prom_log.name, handled)
            payloads = query(prometheus_port, 'temporal_codec_payloads_total{grpc_method="Encode"}')
            assert payloads[0]["value"][1] == "15"
            keys = query(prometheus_port, "temporal_codec_cached_keys")
            assert keys and float(keys[0]["value"][1]) >= 1
        finally:
            for proc in (prometheus, server):
                proc.terminate()
                proc.wait(timeout=30)
