"""Secure by default, as processes: what refuses to start (exit 2, one line naming the fix), what
ALLOW_UNAUTHENTICATED loosens (loudly), and the metrics port's bearer token.

No test here listens beyond loopback: every refusal happens before a port is opened, and the
loosened cases are checked on the objects the processes build from the same configuration.
"""

from __future__ import annotations

import http.client
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from codec_grpc.gateway import GatewayThread, GrpcUpstream, RunningGateway, create_app, serve
from codec_grpc.runtime.access import unauthenticated_ports, warn_if_unauthenticated
from codec_grpc.runtime.config import check_exposure, load_config
from codec_grpc.runtime.gateway_process import gateway_settings
from codec_grpc.runtime.metrics import start_metrics_server, unauthenticated_gauge
from tests.support.fixtures import REGION
from tests.support.paths import ROOT

AUTH = {"AUTH_JWKS_URL": "https://idp.example.test/jwks", "AUTH_ISSUER": "https://idp.example.test/"}
AUTH["AUTH_AUDIENCE"] = "temporal-codec"


def run(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run(command, check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stderr


def server(env: dict[str, str], **settings: str) -> tuple[int, str]:
    return run([sys.executable, "server.py"], {**env, **settings})


def gateway(env: dict[str, str], **settings: str) -> tuple[int, str]:
    return run([sys.executable, "-m", "codec_grpc.runtime.gateway_process"], {**env, **settings})


@pytest.fixture
def env(server_script_env: dict[str, str], kms_endpoint: str) -> dict[str, str]:
    return {**server_script_env, "AWS_ENDPOINT_URL_KMS": kms_endpoint, "AWS_REGION": REGION, "GRPC_PORT": "0"}


def test_an_unauthenticated_grpc_port_beyond_loopback_does_not_start(env: dict[str, str]) -> None:
    code, err = server(env, GRPC_HOST="0.0.0.0", GATEWAY_ENABLED="false")
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("codec-server: error: GRPC_HOST: 0.0.0.0 is beyond loopback and gRPC callers are not")
    assert "TLS_CLIENT_CA_FILE" in line and "AUTH_JWKS_URL" in line and "ALLOW_UNAUTHENTICATED=true" in line


def test_an_unauthenticated_gateway_beyond_loopback_does_not_start(env: dict[str, str]) -> None:
    code, err = server(env, GATEWAY_HOST="::")
    assert code == 2, err
    assert err.startswith("codec-server: error: GATEWAY_HOST: :: is beyond loopback and gateway callers are not")
    code, err = gateway(env, GATEWAY_HOST="10.0.0.8", CODEC_GRPC_TARGET="127.0.0.1:1")
    assert code == 2, err
    assert err.startswith("codec-gateway: error: GATEWAY_HOST: 10.0.0.8 is beyond loopback")
    # A name may resolve anywhere: only literal loopback addresses and "localhost" count.
    code, err = gateway(env, GATEWAY_HOST="codec.internal", CODEC_GRPC_TARGET="127.0.0.1:1")
    assert code == 2 and "GATEWAY_HOST: codec.internal is beyond loopback" in err


def test_namespace_limits_without_binding_do_not_start(env: dict[str, str], tmp_path: Path) -> None:
    code, err = server(env, **AUTH, AUTH_NAMESPACES_CLAIM="temporal_namespaces", NAMESPACE_BINDING="false")
    assert code == 2, err
    assert err.startswith("codec-server: error: NAMESPACE_BINDING: must be true when AUTH_NAMESPACES_CLAIM limits")
    policy = tmp_path / "policy.yaml"
    policy.write_text("grants:\n  - subjects: [alice]\n    namespaces: [orders]\n    operations: [decode]\n")
    code, err = server(env, AUTHZ_POLICY_FILE=str(policy), NAMESPACE_BINDING="false", GATEWAY_ENABLED="false")
    assert code == 2, err
    assert "NAMESPACE_BINDING: must be true when AUTHZ_POLICY_FILE limits namespaces" in err
    everywhere = tmp_path / "everywhere.yaml"
    everywhere.write_text('grants: [{groups: [ops], namespaces: ["*"], operations: [stats]}]\n')
    config = load_config({"AUTHZ_POLICY_FILE": str(everywhere), "NAMESPACE_BINDING": "false"})
    assert config.authz_policy_file == str(everywhere)  # limits no namespace: binding does not matter


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "grants:\n  - subjects: [alice]\n    namespaces: [orders]\n    operations: [read]\n",
            ":4: unknown operation 'read'",
        ),
        ("grants:\n  - namespaces: [orders]\n    operations: [decode]\n", ":2: a grant must name whom it is for"),
        ("grants:\n  - subjects: [a]\n    namespace: [orders]\n", ":3: unknown field 'namespace'"),
        (
            "grants:\n  - subjects: [a]\n    namespaces: [has space]\n    operations: [decode]\n",
            ":3: 'has space' is not",
        ),
        ("grants: [\n", ":2: not YAML or JSON"),
        ('{"grants": [{"subjects": ["a"], "namespaces": [], "operations": ["decode"]}]}', ":1: namespaces must be a"),
        ("- just a list\n", ":1: expected a mapping"),
    ],
)
def test_a_bad_policy_file_names_its_line(env: dict[str, str], tmp_path: Path, text: str, message: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    code, err = server(env, AUTHZ_POLICY_FILE=str(policy), GATEWAY_ENABLED="false")
    assert code == 2, err
    assert err.startswith(f"codec-server: error: AUTHZ_POLICY_FILE: {policy}{message}"), err


def test_allow_unauthenticated_is_loud(caplog: pytest.LogCaptureFixture) -> None:
    config = load_config({"GRPC_HOST": "0.0.0.0", "GATEWAY_HOST": "0.0.0.0", "ALLOW_UNAUTHENTICATED": "true"})
    check_exposure(config, serves_grpc=True, serves_gateway=True)  # does not raise
    ports = unauthenticated_ports(config, serves_grpc=True, serves_gateway=True)
    assert ports == ["gRPC 0.0.0.0:50051", "gateway 0.0.0.0:8081"]
    with caplog.at_level(logging.WARNING):
        warn_if_unauthenticated(ports)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("ALLOW_UNAUTHENTICATED=true: gRPC 0.0.0.0:50051, gateway 0.0.0.0:8081")
    registry = CollectorRegistry()
    unauthenticated_gauge(registry, len(ports))
    assert registry.get_sample_value("temporal_codec_unauthenticated_allowed") == 1
    in_process = gateway_settings(config, in_process=True)
    assert in_process.warnings and "gRPC 0.0.0.0:50051" in in_process.warnings[0]
    assert "gRPC" not in gateway_settings(config).warnings[0]  # a sidecar speaks for its own port
    secured = load_config({"GATEWAY_HOST": "0.0.0.0", "ALLOW_UNAUTHENTICATED": "true", **AUTH})
    assert gateway_settings(secured).warnings == ()
    on_loopback = load_config({"ALLOW_UNAUTHENTICATED": "true"})
    assert unauthenticated_ports(on_loopback, serves_grpc=True, serves_gateway=True) == []


def test_health_shows_the_warning(codec_server: Any, make_key: Any) -> None:
    """The /health of a sidecar gateway configured for 0.0.0.0 with ALLOW_UNAUTHENTICATED (served on
    loopback here, as every test listens)."""
    alias, _arn = make_key()
    running = codec_server(KMS_KEY_ALIAS=alias)
    exposed = load_config({"GATEWAY_HOST": "0.0.0.0", "ALLOW_UNAUTHENTICATED": "true"})

    async def start() -> RunningGateway:
        upstream = GrpcUpstream(running.target)
        return await serve(create_app(gateway_settings(exposed), upstream), upstream, "127.0.0.1", 0)

    thread = GatewayThread(start)
    port = thread.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/health")
        document = json.loads(connection.getresponse().read())
        connection.close()
    finally:
        thread.stop()
    assert document == {
        "status": "SERVING",
        "warnings": [
            "ALLOW_UNAUTHENTICATED=true: gateway 0.0.0.0:8081 accept(s) unauthenticated callers; anyone who "
            "reaches them may encode and decode every namespace's payloads"
        ],
    }


def test_metrics_can_require_a_bearer_token() -> None:
    registry = CollectorRegistry()
    unauthenticated_gauge(registry, 0)
    server, port = start_metrics_server("127.0.0.1", 0, registry, bearer_token="s3cret")
    try:

        def get(path: str, headers: dict[str, str]) -> tuple[int, bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                return response.status, response.read()
            finally:
                connection.close()

        status, body = get("/metrics", {})
        assert status == 401 and b"temporal_codec" not in body
        assert get("/metrics", {"Authorization": "Bearer wrong"})[0] == 401
        status, body = get("/metrics", {"Authorization": "Bearer s3cret"})
        assert status == 200 and b"temporal_codec_unauthenticated_allowed 0.0" in body
        assert get("/healthz", {}) == (200, b"ok\n")  # kubelet probes send no token
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_token_file_is_read_at_start(env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    code, err = server(env, METRICS_BEARER_TOKEN_FILE=str(empty), GATEWAY_ENABLED="false")
    assert code == 2, err
    assert f"METRICS_BEARER_TOKEN_FILE: {empty} is empty" in err
    assert json.dumps(err)  # one readable line, no traceback
    assert "Traceback" not in err
