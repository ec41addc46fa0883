"""Where the gateway runs: next to the gRPC server in ``server.py`` (the default), and alone in
front of CODEC_GRPC_TARGET (``codec-gateway``, the Helm sidecar). Real processes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from codec_grpc.errors import ConfigError
from codec_grpc.runtime.config import load_config
from tests.support.fixtures import REGION, free_port, wait_for_port
from tests.support.gateway import b64, unb64
from tests.support.paths import ROOT

# The seed README's curl example: base64 metadata and data.
SEED_BODY = {"payloads": [{"metadata": {"encoding": b64("json/plain")}, "data": b64('{"hello":"world"}')}]}


def post(port: int, path: str, body: dict, namespace: str = "default") -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-Namespace": namespace},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.load(exc)


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    wait_for_port(port, timeout=timeout, proc=proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError("the gateway never reported healthy")


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err.decode()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def spawn(processes: list, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    processes.append(proc)
    return proc


def test_server_py_serves_the_gateway_by_default(processes, server_script_env, kms_endpoint, make_key) -> None:
    alias, _ = make_key()
    http_port = free_port()
    env = {
        **server_script_env,
        "AWS_ENDPOINT_URL_KMS": kms_endpoint,
        "AWS_REGION": REGION,
        "KMS_KEY_ALIAS": alias,
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": "0",
        "GATEWAY_HOST": "127.0.0.1",
        "PORT": str(http_port),
    }
    proc = spawn(processes, [sys.executable, "server.py"], env)
    wait_healthy(http_port, proc)
    status, encoded = post(http_port, "/encode", SEED_BODY)
    assert status == 200, encoded
    assert unb64(encoded["payloads"][0]["metadata"]["encoding"]) == b"binary/encrypted"
    assert post(http_port, "/decode", encoded) == (200, SEED_BODY)
    code, err = stop(proc)
    assert code == 0, err
    assert "HTTP gateway listening on 127.0.0.1" in err


def test_standalone_gateway_in_front_of_grpc_target(processes, codec_server, make_key) -> None:
    alias, _ = make_key()
    codec = codec_server(KMS_KEY_ALIAS=alias)
    http_port = free_port()
    env = {
        "CODEC_GRPC_TARGET": codec.target,
        "GATEWAY_HOST": "127.0.0.1",
        "PORT": str(http_port),
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": "0",
        "PATH": "",
    }
    proc = spawn(processes, [sys.executable, "-m", "codec_grpc.runtime.gateway_process"], env)
    wait_healthy(http_port, proc)
    status, encoded = post(http_port, "/encode", SEED_BODY)
    assert status == 200, encoded
    assert post(http_port, "/decode", encoded) == (200, SEED_BODY)
    code, err = stop(proc)
    assert code == 0, err
    assert f"forwarding to gRPC {codec.target}" in err


def test_gateway_port_in_use_exits_2_naming_port(processes, server_script_env, kms_endpoint) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        common = {"GATEWAY_HOST": "127.0.0.1", "PORT": str(port), "METRICS_HOST": "127.0.0.1", "METRICS_PORT": "0"}
        gateway = spawn(processes, [sys.executable, "-m", "codec_grpc.runtime.gateway_process"], {**common, "PATH": ""})
        _, err = gateway.communicate(timeout=60)
        assert gateway.returncode == 2
        assert "codec-gateway: error: PORT:" in err.decode()
        env = {**server_script_env, **common, "AWS_ENDPOINT_URL_KMS": kms_endpoint, "AWS_REGION": REGION}
        server = spawn(processes, [sys.executable, "server.py", "--grpc-host", "127.0.0.1", "--grpc-port", "0"], env)
        _, err = server.communicate(timeout=60)
        assert server.returncode == 2
        assert "codec-server: error: PORT:" in err.decode()


def test_gateway_can_be_disabled(processes, server_script_env, kms_endpoint) -> None:
    grpc_port, http_port = free_port(), free_port()
    env = {
        **server_script_env,
        "AWS_ENDPOINT_URL_KMS": kms_endpoint,
        "AWS_REGION": REGION,
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": str(grpc_port),
        "GATEWAY_ENABLED": "false",
        "PORT": str(http_port),
    }
    proc = spawn(processes, [sys.executable, "server.py"], env)
    wait_for_port(grpc_port, proc=proc)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", http_port), timeout=1).close()
    code, err = stop(proc)
    assert code == 0, err


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CORS_ALLOWED_ORIGINS": "*"}, "CORS_ALLOWED_ORIGINS: '*' cannot be combined with credentials"),
        ({"CORS_ALLOWED_ORIGINS": "https://ui.example.com/path"}, "CORS_ALLOWED_ORIGINS: expected origins"),
        ({"AUTH_JWKS_URL": "file:///etc/passwd"}, "AUTH_JWKS_URL: must be an http(s) URL"),
        ({"AUTH_JWKS_URL": "https://idp/jwks"}, "AUTH_ISSUER: must be set"),
        ({"AUTH_ISSUER": "https://idp/", "AUTH_JWKS_URL": "https://idp/jwks"}, "AUTH_AUDIENCE: must be set"),
        ({"AUTH_AUDIENCE": "api"}, "AUTH_JWKS_URL: must be set"),
        ({"PORT": "70000"}, "PORT: must be between 0 and 65535"),
        ({"GATEWAY_MAX_BODY_BYTES": "10"}, "GATEWAY_MAX_BODY_BYTES: must be between"),
    ],
)
def test_gateway_settings_are_validated(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(env)
    assert str(raised.value).startswith(message)


def test_gateway_settings_defaults_and_parsing() -> None:
    config = load_config({"CORS_ALLOWED_ORIGINS": " https://UI.example.com , http://localhost:8080/ ,"})
    assert config.cors_allowed_origins == frozenset({"https://ui.example.com", "http://localhost:8080"})
    assert (config.gateway_enabled, config.gateway_host, config.port) == (True, "127.0.0.1", 8081)
    assert config.auth_enabled is False
    secured = load_config({"AUTH_JWKS_URL": "https://idp/jwks", "AUTH_ISSUER": "https://idp/", "AUTH_AUDIENCE": "a,b"})
    assert secured.auth_enabled and secured.auth_audience == ("a", "b")
