"""TLS and mTLS on the gRPC port, the gateway's SSLContext, and their settings."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from codec_grpc.errors import ConfigError
from codec_grpc.runtime.config import load_config
from codec_grpc.runtime.gateway_process import gateway_thread
from codec_grpc.runtime.tls import gateway_ssl_context, grpc_server_credentials
from codec_grpc.v1 import codec_pb2, codec_pb2_grpc
from tests.support.fixtures import codec_env, free_port, wait_for_port
from tests.support.paths import SERVER
from tests.support.pki import Authority, Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, object]:
    directory = tmp_path_factory.mktemp("pki")
    ca, other_ca = Authority(directory), Authority(directory, "other-ca")
    return {
        "ca": ca,
        "other_ca": other_ca,
        "server": ca.issue("codec-server", server=True),
        "gateway": ca.issue("codec-gateway", server=True),
        "client": ca.issue("worker", server=False),
        "stranger": other_ca.issue("stranger", server=False),
    }


def secure_channel(port: int, ca: Authority, client: Issued | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.path.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def health_check(channel: grpc.Channel) -> int:
    with channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def refused(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failure:
        health_check(channel)
    return failure.value.code()


def tls_settings(pki, *, mtls: bool = False) -> dict[str, str]:
    """TLS on the gRPC port (and client certificates required with ``mtls``)."""
    settings = {"TLS_CERT_FILE": str(pki["server"].cert), "TLS_KEY_FILE": str(pki["server"].key)}
    if mtls:
        settings["TLS_CLIENT_CA_FILE"] = str(pki["ca"].path)
    return settings


def grpc_client_settings(pki, *, mtls: bool = False) -> dict[str, str]:
    """What a gateway that calls the gRPC port (the standalone one) needs to do so over TLS."""
    settings = {"CODEC_GRPC_CA_FILE": str(pki["ca"].path)}
    if mtls:
        settings["CODEC_GRPC_CLIENT_CERT_FILE"] = str(pki["client"].cert)
        settings["CODEC_GRPC_CLIENT_KEY_FILE"] = str(pki["client"].key)
    return settings


def encode_and_decode_over_https(port: int, ca: Authority) -> None:
    context = ssl.create_default_context(cafile=str(ca.path))
    body = json.dumps({"payloads": [{"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "IjEi"}]})
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request("POST", "/encode", body=body, headers={"Content-Type": "application/json"})
        encoded = connection.getresponse()
        assert encoded.status == 200
        payloads = json.loads(encoded.read())["payloads"]
        connection.request(
            "POST", "/decode", body=json.dumps({"payloads": payloads}), headers={"Content-Type": "application/json"}
        )
        decoded = connection.getresponse()
        assert decoded.status == 200
        assert json.loads(decoded.read())["payloads"][0]["data"] == "IjEi"
        connection.request("GET", "/health")
        assert connection.getresponse().status == 200
    finally:
        connection.close()


@pytest.mark.parametrize("mtls", [False, True])
def test_gateway_over_https_calls_grpc_over_tls(codec_server, make_key, pki, mtls):
    """The standalone gateway's way: HTTPS in front of a gRPC port that requires TLS (and client certs)."""
    alias, _ = make_key()
    settings = tls_settings(pki, mtls=mtls) | grpc_client_settings(pki, mtls=mtls)
    running = codec_server(KMS_KEY_ALIAS=alias, PORT=0, GATEWAY_HOST="127.0.0.1", **settings)
    gateway = gateway_thread(running.app.config, f"127.0.0.1:{running.app.port}")
    try:
        encode_and_decode_over_https(gateway.start(), pki["ca"])
    finally:
        gateway.stop()


def test_in_process_gateway_needs_no_grpc_client_settings(kms_endpoint, pki):
    """server.py's gateway calls the codec directly: gRPC TLS and mTLS ask nothing of it."""
    config = load_config(codec_env(kms_endpoint, **tls_settings(pki, mtls=True)))
    assert config.gateway_enabled and config.tls_client_ca_file and not config.codec_grpc_ca_file
    # Half-configured client settings (for the standalone gateway) are still refused.
    with pytest.raises(ConfigError, match="^CODEC_GRPC_CA_FILE: must be set with CODEC_GRPC_CLIENT_CERT_FILE"):
        load_config(codec_env(kms_endpoint, CODEC_GRPC_CLIENT_CERT_FILE="/c.pem", CODEC_GRPC_CLIENT_KEY_FILE="/k.pem"))


def test_server_py_gateway_serves_https_in_front_of_an_mtls_grpc_port(server_script_env, kms_endpoint, make_key, pki):
    """The real server.py: mTLS on gRPC, HTTPS on the gateway with the same pair, no CODEC_GRPC_* at all."""
    alias, _ = make_key()
    http_port = free_port()
    env = server_script_env | codec_env(
        kms_endpoint, KMS_KEY_ALIAS=alias, PORT=http_port, GATEWAY_HOST="127.0.0.1", **tls_settings(pki, mtls=True)
    )
    server = subprocess.Popen([sys.executable, str(SERVER)], env=env, stderr=subprocess.PIPE)
    try:
        wait_for_port(http_port, proc=server)
        encode_and_decode_over_https(http_port, pki["ca"])
    finally:
        server.terminate()
        _, err = server.communicate(timeout=60)
    assert server.returncode == 0, err.decode()[-2000:]


def test_tls_accepts_verified_clients_and_refuses_plaintext(codec_server, make_key, pki):
    alias, _ = make_key()
    running = codec_server(KMS_KEY_ALIAS=alias, **tls_settings(pki))
    assert health_check(secure_channel(running.app.port, pki["ca"])) == health_pb2.HealthCheckResponse.SERVING
    with secure_channel(running.app.port, pki["ca"]) as channel:
        answer = codec_pb2_grpc.CodecServiceStub(channel).Encode(
            codec_pb2.EncodeRequest(payloads=[codec_pb2.Payload(data=b"x")]), timeout=10
        )
        assert answer.payloads[0].metadata["encoding"] == b"binary/encrypted"
    assert refused(grpc.insecure_channel(f"127.0.0.1:{running.app.port}")) == grpc.StatusCode.UNAVAILABLE
    # a client that does not trust the server's CA refuses the server
    assert refused(secure_channel(running.app.port, pki["other_ca"])) == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate_from_the_ca(codec_server, make_key, pki):
    alias, _ = make_key()
    running = codec_server(KMS_KEY_ALIAS=alias, **tls_settings(pki, mtls=True))
    port = running.app.port
    assert health_check(secure_channel(port, pki["ca"], pki["client"])) == health_pb2.HealthCheckResponse.SERVING
    assert refused(secure_channel(port, pki["ca"])) == grpc.StatusCode.UNAVAILABLE
    assert refused(secure_channel(port, pki["ca"], pki["stranger"])) == grpc.StatusCode.UNAVAILABLE
    assert refused(grpc.insecure_channel(f"127.0.0.1:{port}")) == grpc.StatusCode.UNAVAILABLE


def test_plaintext_stays_the_default(kms_endpoint):
    config = load_config(codec_env(kms_endpoint))
    assert grpc_server_credentials(config) is None
    assert gateway_ssl_context(config) is None


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"TLS_CERT_FILE": "/x.crt"}, "TLS_KEY_FILE: must be set together with TLS_CERT_FILE"),
        ({"TLS_KEY_FILE": "/x.key"}, "TLS_CERT_FILE: must be set together with TLS_KEY_FILE"),
        ({"TLS_CLIENT_CA_FILE": "/ca.pem"}, "TLS_CLIENT_CA_FILE: requires TLS_CERT_FILE and TLS_KEY_FILE"),
        ({"GATEWAY_TLS_KEY_FILE": "/g.key"}, "GATEWAY_TLS_CERT_FILE: must be set together with GATEWAY_TLS_KEY_FILE"),
    ],
)
def test_half_configured_tls_is_refused(kms_endpoint, settings, named):
    with pytest.raises(ConfigError) as error:
        load_config(codec_env(kms_endpoint, **settings))
    assert str(error.value).startswith(named)


def test_unreadable_or_mismatched_files_name_the_setting(kms_endpoint, pki, tmp_path):
    no_gateway = {"GATEWAY_ENABLED": "false"}
    missing = load_config(
        codec_env(kms_endpoint, **no_gateway, TLS_CERT_FILE=tmp_path / "none.crt", TLS_KEY_FILE=pki["server"].key)
    )
    with pytest.raises(ConfigError, match=r"^TLS_CERT_FILE: cannot read .*none\.crt"):
        grpc_server_credentials(missing)
    not_pem = tmp_path / "junk.pem"
    not_pem.write_text("hello")
    junk_ca = {"TLS_CLIENT_CA_FILE": str(not_pem)}
    junk = load_config(codec_env(kms_endpoint, **tls_settings(pki, mtls=True) | junk_ca))
    with pytest.raises(ConfigError, match=r"^TLS_CLIENT_CA_FILE: .*junk\.pem is not a PEM file"):
        grpc_server_credentials(junk)
    swapped = load_config(
        codec_env(
            kms_endpoint, GATEWAY_ENABLED="false", TLS_CERT_FILE=pki["server"].cert, TLS_KEY_FILE=pki["gateway"].key
        )
    )
    with pytest.raises(ConfigError, match=r"^TLS_CERT_FILE: cannot load certificate"):
        grpc_server_credentials(swapped)
    with pytest.raises(ConfigError, match=r"^TLS_CERT_FILE: cannot load certificate"):
        gateway_ssl_context(swapped)


def test_server_script_exits_2_naming_a_bad_tls_file(server_script_env, kms_endpoint, tmp_path):
    env = server_script_env | codec_env(
        kms_endpoint, GATEWAY_ENABLED="false", TLS_CERT_FILE=tmp_path / "no.crt", TLS_KEY_FILE=tmp_path / "no.key"
    )
    result = subprocess.run(
        [sys.executable, str(SERVER)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "codec-server: error: TLS_CERT_FILE: cannot read" in result.stderr
    assert "Traceback" not in result.stderr


def serve_https(context: ssl.SSLContext) -> tuple[HTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def served_certificate_cn(port: int, ca: Authority) -> str:
    client = ssl.create_default_context(cafile=str(ca.path))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        client.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        assert tls.recv(64).startswith(b"HTTP/1.0 200")
        subject = dict(item[0] for item in tls.getpeercert()["subject"])  # type: ignore[index, misc]
        return str(subject["commonName"])


@pytest.mark.parametrize(("own_pair", "expected_cn"), [(False, "codec-server"), (True, "codec-gateway")])
def test_gateway_ssl_context_serves_https_with_its_own_or_the_grpc_pair(kms_endpoint, pki, own_pair, expected_cn):
    settings = tls_settings(pki)
    if own_pair:
        settings |= {"GATEWAY_TLS_CERT_FILE": str(pki["gateway"].cert), "GATEWAY_TLS_KEY_FILE": str(pki["gateway"].key)}
    context = gateway_ssl_context(load_config(codec_env(kms_endpoint, **settings)))
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2
    server, port = serve_https(context)
    try:
        assert served_certificate_cn(port, pki["ca"]) == expected_cn
    finally:
        server.shutdown()
        server.server_close()
