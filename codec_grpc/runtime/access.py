"""Authentication and authorization built from the configuration, for both transports."""

from __future__ import annotations

import logging

from codec_grpc.access import AccessPolicy, AuthSettings, TokenVerifier, load_policy
from codec_grpc.errors import ConfigError
from codec_grpc.rpc import Authenticator
from codec_grpc.runtime.config import Config, is_loopback

log = logging.getLogger("codec_grpc.access_control")


def token_verifier(config: Config) -> TokenVerifier | None:
    """The bearer-token verifier when AUTH_JWKS_URL is set, else ``None`` (no tokens checked)."""
    if config.auth_jwks_url is None or config.auth_issuer is None:
        return None
    return TokenVerifier(
        AuthSettings(
            jwks_url=config.auth_jwks_url,
            issuer=config.auth_issuer,
            audience=config.auth_audience,
            namespaces_claim=config.auth_namespaces_claim,
            operations_claim=config.auth_operations_claim,
            groups_claim=config.auth_groups_claim,
            access_token=config.auth_access_token,
            refresh_interval=config.auth_jwks_refresh_interval,
        )
    )


def access_policy(config: Config) -> AccessPolicy:
    """The policy of AUTHZ_POLICY_FILE (read and checked now), or none: claims alone decide."""
    if config.authz_policy_file is None:
        return AccessPolicy()
    policy = load_policy(config.authz_policy_file)
    if policy.restricts_namespaces and not config.namespace_binding:
        raise ConfigError(
            "NAMESPACE_BINDING",
            "must be true when AUTHZ_POLICY_FILE limits namespaces: without binding, a payload of any "
            "namespace decodes under a permitted one",
        )
    return policy


def grpc_authenticator(config: Config, verifier: TokenVerifier | None) -> Authenticator:
    return Authenticator(verifier, certificates=config.tls_client_ca_file is not None)


def unauthenticated_ports(config: Config, *, serves_grpc: bool, serves_gateway: bool) -> list[str]:
    """The Encode/Decode ports beyond loopback whose callers are not authenticated (ALLOW_UNAUTHENTICATED)."""
    ports = []
    if serves_grpc and not config.grpc_authenticated and not is_loopback(config.grpc_host):
        ports.append(f"gRPC {config.grpc_host}:{config.grpc_port}")
    if serves_gateway and not config.auth_enabled and not is_loopback(config.gateway_host):
        ports.append(f"gateway {config.gateway_host}:{config.port}")
    return ports


def unauthenticated_warning(ports: list[str]) -> str:
    """What the start-up log and the gateway's /health say of ``ports`` ("" when there are none)."""
    if not ports:
        return ""
    return (
        f"ALLOW_UNAUTHENTICATED=true: {', '.join(ports)} accept(s) unauthenticated callers; anyone who "
        "reaches them may encode and decode every namespace's payloads"
    )


def warn_if_unauthenticated(ports: list[str]) -> None:
    """Say it loudly at start: anyone who reaches these ports may decrypt every payload."""
    if ports:
        log.warning(unauthenticated_warning(ports), extra={"event": "unauthenticated_allowed", "ports": ports})
