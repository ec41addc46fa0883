"""TLS for both transports, built from the :class:`~codec_grpc.runtime.config.Config`.

* gRPC: ``TLS_CERT_FILE`` + ``TLS_KEY_FILE`` serve TLS; adding ``TLS_CLIENT_CA_FILE``
  requires every client to present a certificate signed by that CA (mTLS).
* HTTP gateway: ``GATEWAY_TLS_CERT_FILE`` + ``GATEWAY_TLS_KEY_FILE``, defaulting to
  the gRPC pair. The Temporal UI only sends access tokens to an ``https://`` codec
  endpoint. No client certificates there: browsers are the clients.

Without certificates both stay plaintext, the right default for a sidecar on
localhost. Unreadable or invalid files raise :class:`ConfigError` naming the setting.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from codec_grpc.errors import ConfigError
from codec_grpc.runtime.config import Config


def read_pem(setting: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(setting, f"cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(setting, f"{path} is not a PEM file")
    return data


def grpc_server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """TLS credentials for the gRPC port, or None for plaintext."""
    if not (config.tls_cert_file and config.tls_key_file):
        return None
    chain = read_pem("TLS_CERT_FILE", config.tls_cert_file)
    key = read_pem("TLS_KEY_FILE", config.tls_key_file)
    _check_pair("TLS_CERT_FILE", config.tls_cert_file, config.tls_key_file)
    client_ca = read_pem("TLS_CLIENT_CA_FILE", config.tls_client_ca_file) if config.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def gateway_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The HTTPS server context for the gateway, or None when it serves plain HTTP.

    Uses ``GATEWAY_TLS_CERT_FILE``/``GATEWAY_TLS_KEY_FILE`` when set, otherwise the
    gRPC server's ``TLS_CERT_FILE``/``TLS_KEY_FILE``. TLS 1.2 is the minimum.
    """
    if config.gateway_tls_cert_file and config.gateway_tls_key_file:
        setting, cert, key = "GATEWAY_TLS_CERT_FILE", config.gateway_tls_cert_file, config.gateway_tls_key_file
    elif config.tls_cert_file and config.tls_key_file:
        setting, cert, key = "TLS_CERT_FILE", config.tls_cert_file, config.tls_key_file
    else:
        return None
    return _check_pair(setting, cert, key)


def _check_pair(setting: str, cert: str, key: str) -> ssl.SSLContext:
    """Load the pair into a server context: fails now, naming the setting, when they do not match."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(setting, f"cannot load certificate {cert} with key {key}: {exc}") from None
    return context


def gateway_upstream_credentials(config: Config) -> grpc.ChannelCredentials | None:
    """TLS credentials for the gateway's calls to the gRPC service, or None for plaintext.

    ``CODEC_GRPC_CA_FILE`` verifies the server; ``CODEC_GRPC_CLIENT_CERT_FILE`` and
    ``CODEC_GRPC_CLIENT_KEY_FILE`` answer a server that requires client certificates.
    """
    if not config.codec_grpc_ca_file:
        return None
    roots = read_pem("CODEC_GRPC_CA_FILE", config.codec_grpc_ca_file)
    chain = key = None
    if config.codec_grpc_client_cert_file and config.codec_grpc_client_key_file:
        chain = read_pem("CODEC_GRPC_CLIENT_CERT_FILE", config.codec_grpc_client_cert_file)
        key = read_pem("CODEC_GRPC_CLIENT_KEY_FILE", config.codec_grpc_client_key_file)
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=chain)
