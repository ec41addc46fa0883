"""Who may decrypt what, on both ports: the attacks of issue #12, each reproduced and refused.

Real servers on loopback: the gRPC port over a real channel (plaintext with bearer tokens, or
mTLS with certificates naming SPIFFE IDs), the HTTP gateway in front of it (in-process and over
gRPC), tokens signed by a JWKS served on loopback, KMS through boto3 against moto.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from codec_grpc.v1 import codec_pb2 as pb
from codec_grpc.v1 import codec_pb2_grpc
from tests.support.fixtures import RunningCodec, details
from tests.support.gateway import Gateway, b64, plain_payload
from tests.support.jwks import AUDIENCE, ISSUER, Jwks
from tests.support.pki import Authority, Issued

CARD = b'{"card": "4111 1111 1111 1111"}'
Start = Callable[..., RunningCodec]


def auth(jwks: Jwks, **extra: Any) -> dict[str, Any]:
    return {"AUTH_JWKS_URL": jwks.url, "AUTH_ISSUER": ISSUER, "AUTH_AUDIENCE": AUDIENCE, **extra}


def bearer(token: str, namespace: str | None = None) -> list[tuple[str, str]]:
    metadata = [("authorization", f"Bearer {token}")]
    return metadata + ([("x-namespace", namespace)] if namespace else [])


def card(namespace: str = "") -> pb.EncodeRequest:
    return pb.EncodeRequest(payloads=[pb.Payload(metadata={"encoding": b"json/plain"}, data=CARD)], namespace=namespace)


def refusal(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), details(caught)


@pytest.fixture
def key(make_key: Any) -> str:
    alias, _arn = make_key()
    return alias


@pytest.fixture
def scoped(codec_server: Start, key: str, jwks: Jwks) -> RunningCodec:
    """A server whose tokens carry what they grant: namespaces (``temporal_namespaces``), operations (``codec_ops``)."""
    return codec_server(
        KMS_KEY_ALIAS=key, **auth(jwks, AUTH_NAMESPACES_CLAIM="temporal_namespaces", AUTH_OPERATIONS_CLAIM="codec_ops")
    )


def token_for(jwks: Jwks, namespaces: list[str], operations: list[str] | None = None, **claims: Any) -> str:
    """A token granting ``operations`` (default: all three) in ``namespaces``."""
    granted = ["encode", "decode", "stats"] if operations is None else operations
    return jwks.token(jwks.keys[0], temporal_namespaces=namespaces, codec_ops=granted, **claims)


# 1. The gRPC port is open ---------------------------------------------------------------------


def test_grpc_decode_without_credentials_is_unauthenticated(scoped: RunningCodec, jwks: Jwks) -> None:
    billing = token_for(jwks, ["billing"])
    encoded = scoped.stub.Encode(card("billing"), metadata=bearer(billing))
    request = pb.DecodeRequest(payloads=encoded.payloads, namespace="billing")
    # None; a forged token; a token without its "Bearer " scheme.
    for authorization in (None, "Bearer not-a-token", billing):
        metadata = [("authorization", authorization)] if authorization else []
        with pytest.raises(grpc.RpcError) as caught:
            scoped.stub.Decode(request, metadata=metadata)
        code, message = caught.value.code(), details(caught)
        assert code == grpc.StatusCode.UNAUTHENTICATED, message
        assert "4111" not in message
    code, message = refusal(lambda: scoped.stub.Decode(request))
    assert message.startswith("missing credentials: send 'Authorization: Bearer <access token>'")
    code, message = refusal(lambda: scoped.stub.Stats(pb.StatsRequest(namespace="billing")))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    decoded = scoped.stub.Decode(request, metadata=bearer(billing))
    assert decoded.payloads[0].data == CARD


def test_health_and_reflection_stay_open(scoped: RunningCodec) -> None:
    health = health_pb2_grpc.HealthStub(scoped.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    services = ProtoReflectionDescriptorDatabase(scoped.channel).get_services()
    assert "codec_grpc.v1.CodecService" in services


# 2. Namespace authorization: the token's, the policy's, and the payload's --------------------


def test_a_token_of_one_namespace_cannot_decode_another_over_grpc(scoped: RunningCodec, jwks: Jwks) -> None:
    billing = scoped.stub.Encode(card("billing"), metadata=bearer(token_for(jwks, ["billing"]))).payloads
    orders = token_for(jwks, ["orders"], sub="mallory")
    code, message = refusal(
        lambda: scoped.stub.Decode(pb.DecodeRequest(payloads=billing, namespace="billing"), metadata=bearer(orders))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert message == "token 'mallory' may not decode in namespace 'billing'"
    # The payload bound to billing, sent under the permitted namespace: the payload's namespace is checked.
    code, message = refusal(
        lambda: scoped.stub.Decode(pb.DecodeRequest(payloads=billing), metadata=bearer(orders, "orders"))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert message.startswith("payload 0: written for namespace 'billing', requested as 'orders'")
    assert "4111" not in message


def test_operations_claim_limits_what_a_token_may_do(scoped: RunningCodec, jwks: Jwks) -> None:
    worker = token_for(jwks, ["orders"], ["encode", "decode"])
    viewer = token_for(jwks, ["orders"], ["decode"], sub="ui-user")
    encoded = scoped.stub.Encode(card("orders"), metadata=bearer(worker)).payloads
    assert scoped.stub.Decode(pb.DecodeRequest(payloads=encoded, namespace="orders"), metadata=bearer(viewer))
    code, message = refusal(lambda: scoped.stub.Encode(card("orders"), metadata=bearer(viewer)))
    assert (code, message) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "token 'ui-user' may not encode in namespace 'orders'",
    )
    code, message = refusal(lambda: scoped.stub.Stats(pb.StatsRequest(namespace="orders"), metadata=bearer(viewer)))
    assert (code, message) == (grpc.StatusCode.PERMISSION_DENIED, "token 'ui-user' may not stats in namespace 'orders'")
    nothing = token_for(jwks, ["orders"], ["admin"])  # no operation the codec knows: nothing granted
    assert refusal(lambda: scoped.stub.Encode(card("orders"), metadata=bearer(nothing)))[0] == (
        grpc.StatusCode.PERMISSION_DENIED
    )


def test_unbound_payloads_are_refused_unless_the_migration_switch_is_on(
    codec_server: Start, key: str, jwks: Jwks
) -> None:
    """A payload written while binding was off carries no namespace: it could be any namespace's."""
    unbound_writer = codec_server(KMS_KEY_ALIAS=key, NAMESPACE_BINDING="false")
    written = unbound_writer.stub.Encode(card("billing")).payloads
    assert "encryption-namespace" not in written[0].metadata
    settings = auth(jwks, KMS_KEY_ALIAS=key, AUTH_NAMESPACES_CLAIM="temporal_namespaces")
    strict = codec_server(**settings)
    orders = bearer(token_for(jwks, ["orders"]), "orders")
    code, message = refusal(lambda: strict.stub.Decode(pb.DecodeRequest(payloads=written), metadata=orders))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert message.startswith("payload 0: bound to no namespace") and "ACCEPT_UNBOUND_PAYLOADS=true" in message
    assert strict.kms["Decrypt"] == 0, "refused before KMS was asked"
    migrating = codec_server(**settings, ACCEPT_UNBOUND_PAYLOADS="true")
    assert migrating.stub.Decode(pb.DecodeRequest(payloads=written), metadata=orders).payloads[0].data == CARD


def test_an_id_token_is_not_an_access_token(codec_server: Start, key: str, jwks: Jwks) -> None:
    server = codec_server(KMS_KEY_ALIAS=key, **auth(jwks))
    id_token = jwks.token(jwks.keys[0], header_typ=None, nonce="n-0S6_WzA2Mj")  # header typ JWT, right aud
    code, message = refusal(lambda: server.stub.Encode(card(), metadata=bearer(id_token)))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert message.startswith("invalid token: not an access token (an ID token?); AUTH_ACCESS_TOKEN")
    # Identity providers that do not write typ at+jwt: name a claim only their access tokens carry.
    okta = codec_server(KMS_KEY_ALIAS=key, **auth(jwks, AUTH_ACCESS_TOKEN="typ:at+jwt,claim:scp"))
    okta_access = jwks.token(jwks.keys[0], header_typ=None, scp=["openid", "codec"])
    assert okta.stub.Encode(card(), metadata=bearer(okta_access)).payloads
    assert refusal(lambda: okta.stub.Encode(card(), metadata=bearer(id_token)))[0] == grpc.StatusCode.UNAUTHENTICATED
    keycloak = codec_server(KMS_KEY_ALIAS=key, **auth(jwks, AUTH_ACCESS_TOKEN="claim:typ=Bearer"))
    keycloak_access = jwks.token(jwks.keys[0], header_typ=None, typ="Bearer")
    keycloak_id = jwks.token(jwks.keys[0], header_typ=None, typ="ID")
    assert keycloak.stub.Encode(card(), metadata=bearer(keycloak_access)).payloads
    assert refusal(lambda: keycloak.stub.Encode(card(), metadata=bearer(keycloak_id)))[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )


# 4. Stats by need-to-know -----------------------------------------------------------------------


def test_stats_show_only_the_callers_namespaces(scoped: RunningCodec, jwks: Jwks) -> None:
    everything = token_for(jwks, ["*"])
    for namespace in ("orders", "billing", "payroll"):
        scoped.stub.Encode(card(namespace), metadata=bearer(everything))
    admin = scoped.stub.Stats(pb.StatsRequest(namespace="orders"), metadata=bearer(everything))
    assert sorted(k.namespace for k in admin.current_keys) == ["billing", "orders", "payroll"]
    mine = scoped.stub.Stats(pb.StatsRequest(namespace="orders"), metadata=bearer(token_for(jwks, ["orders"])))
    assert [k.namespace for k in mine.current_keys] == ["orders"]
    assert mine.kms_last_error == ""
    assert mine.current_key_present  # its own namespace's key is still described


# mTLS: the caller is its certificate ----------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("access-pki")
    ca = Authority(directory)
    spiffe = "spiffe://cluster.local/ns/orders/sa/orders-worker"
    return {
        "ca": ca,
        "server": ca.issue("codec-server", server=True),
        "orders": ca.issue("ignored-cn", server=False, uris=(spiffe,), dns=("ignored.example",)),
        "dns": ca.issue("ignored-cn", server=False, dns=("ci.billing.example",)),
        "cn": ca.issue("payroll-batch", server=False),
    }


def mtls_channel(port: int, ca: Authority, client: Issued) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.path.read_bytes(),
        private_key=client.key.read_bytes(),
        certificate_chain=client.cert.read_bytes(),
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


POLICY = """\
grants:
  - certificates: ["spiffe://cluster.local/ns/orders/sa/*"]
    namespaces: [orders]
    operations: [encode, decode]
  - certificates: [ci.billing.example]
    namespaces: ["billing*"]
    operations: [encode]
  - certificates: [payroll-batch]
    namespaces: [payroll]
    operations: [encode, decode, stats]
"""


def test_certificate_identities_are_authorized_by_the_policy_file(
    codec_server: Start, key: str, pki: dict[str, Any], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    server = codec_server(
        KMS_KEY_ALIAS=key,
        TLS_CERT_FILE=pki["server"].cert,
        TLS_KEY_FILE=pki["server"].key,
        TLS_CLIENT_CA_FILE=pki["ca"].path,
        AUTHZ_POLICY_FILE=policy,
    )

    def stub(client: str) -> codec_pb2_grpc.CodecServiceStub:
        return codec_pb2_grpc.CodecServiceStub(mtls_channel(server.app.port, pki["ca"], pki[client]))

    orders, ci, payroll = stub("orders"), stub("dns"), stub("cn")
    # SPIFFE URI SAN wins over the DNS SAN and the CN.
    encoded = orders.Encode(card("orders")).payloads
    assert orders.Decode(pb.DecodeRequest(payloads=encoded, namespace="orders")).payloads[0].data == CARD
    code, message = refusal(lambda: orders.Encode(card("billing")))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert (
        message
        == "certificate 'spiffe://cluster.local/ns/orders/sa/orders-worker' may not encode in namespace 'billing'"
    )
    # DNS SAN, with a * pattern on namespaces; encode only (a CI tool).
    assert ci.Encode(card("billing-eu")).payloads
    assert refusal(lambda: ci.Decode(pb.DecodeRequest(payloads=encoded, namespace="orders")))[0] == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # The common name when there is no SAN; stats only where granted, and only of its namespace.
    payroll.Encode(card("payroll"))
    stats = payroll.Stats(pb.StatsRequest(namespace="payroll"))
    assert [k.namespace for k in stats.current_keys] == ["payroll"]
    assert refusal(lambda: orders.Stats(pb.StatsRequest(namespace="orders")))[0] == grpc.StatusCode.PERMISSION_DENIED


def test_a_bearer_token_works_beside_client_certificates(
    codec_server: Start, key: str, pki: dict[str, Any], jwks: Jwks
) -> None:
    """Both configured: a token, when sent, names the caller (a sidecar gateway forwards the UI user's)."""
    server = codec_server(
        KMS_KEY_ALIAS=key,
        TLS_CERT_FILE=pki["server"].cert,
        TLS_KEY_FILE=pki["server"].key,
        TLS_CLIENT_CA_FILE=pki["ca"].path,
        **auth(jwks, AUTH_NAMESPACES_CLAIM="temporal_namespaces"),
    )
    stub = codec_pb2_grpc.CodecServiceStub(mtls_channel(server.app.port, pki["ca"], pki["orders"]))
    assert stub.Encode(card("orders")).payloads  # the certificate: no claims restrict it
    code, message = refusal(lambda: stub.Encode(card("orders"), metadata=bearer(token_for(jwks, ["billing"]))))
    assert (code, message) == (grpc.StatusCode.PERMISSION_DENIED, "token 'alice' may not encode in namespace 'orders'")
    assert refusal(lambda: stub.Encode(card("orders"), metadata=bearer("forged")))[0] == grpc.StatusCode.UNAUTHENTICATED


# The HTTP gateway ---------------------------------------------------------------------------------


def test_gateway_checks_the_payloads_namespace_not_only_the_header(start_gateway, jwks: Jwks) -> None:
    gateway: Gateway = start_gateway(**auth(jwks, AUTH_NAMESPACES_CLAIM="temporal_namespaces"))
    billing_token, orders_token = token_for(jwks, ["billing"]), token_for(jwks, ["orders"], sub="mallory")
    body = {"payloads": [{"metadata": {"encoding": b64("json/plain")}, "data": b64(CARD)}]}
    encoded = gateway.post("/encode", body, Authorization=f"Bearer {billing_token}", X_Namespace="billing")
    assert encoded.status == 200, encoded.body
    as_orders = gateway.post("/decode", encoded.json(), Authorization=f"Bearer {orders_token}", X_Namespace="orders")
    assert as_orders.status == 403
    assert as_orders.error.startswith("payload 0: written for namespace 'billing', requested as 'orders'")
    as_billing = gateway.post("/decode", encoded.json(), Authorization=f"Bearer {orders_token}", X_Namespace="billing")
    assert (as_billing.status, as_billing.error) == (403, "token 'mallory' may not decode in namespace 'billing'")
    assert "4111" not in (as_orders.body + as_billing.body).decode()


def test_gateway_refuses_id_tokens(start_gateway, jwks: Jwks) -> None:
    gateway: Gateway = start_gateway(**auth(jwks))
    id_token = jwks.token(jwks.keys[0], header_typ=None)
    reply = gateway.post("/encode", {"payloads": [plain_payload("1")]}, Authorization=f"Bearer {id_token}")
    assert reply.status == 401
    assert "not an access token" in reply.error


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_gateway_refuses_bodies_a_cross_site_form_can_send(gateway: Gateway, content_type: str | None) -> None:
    """Blind CSRF: a page elsewhere can POST these without a preflight; the UI and CLI send JSON."""
    before = gateway.codec.kms["GenerateDataKey"]
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"payloads": [plain_payload("1")]})
    for route in ("/encode", "/decode"):
        reply = gateway.request("POST", route, body, headers)
        assert reply.status == 415, reply.body
        assert reply.error.startswith("Content-Type must be application/json")
    assert gateway.codec.kms["GenerateDataKey"] == before
    ok = gateway.request("POST", "/encode", body, {"Content-Type": "application/json; charset=utf-8"})
    assert ok.status == 200


def test_gateway_allowed_hosts_stops_dns_rebinding(start_gateway) -> None:
    gateway: Gateway = start_gateway(GATEWAY_ALLOWED_HOSTS="codec.example.test,127.0.0.1")
    body = json.dumps({"payloads": [plain_payload("1")]})
    json_type = {"Content-Type": "application/json"}
    rebound = gateway.request("POST", "/encode", body, {**json_type, "Host": "attacker.example:8081"})
    assert (rebound.status, rebound.error) == (400, "Host 'attacker.example:8081' is not one of GATEWAY_ALLOWED_HOSTS")
    assert gateway.request("GET", "/stats", headers={"Host": "attacker.example"}).status == 400
    assert gateway.request("POST", "/encode", body, {**json_type, "Host": "codec.example.test"}).status == 200
    assert gateway.request("POST", "/encode", body, json_type).status == 200  # 127.0.0.1:PORT
    assert gateway.request("GET", "/health", headers={"Host": "10.1.2.3:8081"}).status == 200  # kubelet probes


def test_gateway_stats_show_only_the_callers_namespaces(start_gateway, jwks: Jwks) -> None:
    gateway: Gateway = start_gateway(**auth(jwks, AUTH_NAMESPACES_CLAIM="temporal_namespaces"))
    everything = f"Bearer {token_for(jwks, ['*'])}"
    for namespace in ("orders", "billing"):
        assert (
            gateway.post(
                "/encode", {"payloads": [plain_payload("1")]}, Authorization=everything, X_Namespace=namespace
            ).status
            == 200
        )
    mine = gateway.request("GET", "/orders/stats", headers={"Authorization": f"Bearer {token_for(jwks, ['orders'])}"})
    assert mine.status == 200, mine.body
    assert [k["namespace"] for k in mine.json()["current_keys"]] == ["orders"]
    every = gateway.request("GET", "/orders/stats", headers={"Authorization": everything}).json()
    assert sorted(k["namespace"] for k in every["current_keys"]) == ["billing", "orders"]
    other = gateway.request("GET", "/billing/stats", headers={"Authorization": f"Bearer {token_for(jwks, ['orders'])}"})
    assert other.status == 403


def test_grpc_access_lines_name_the_caller(scoped: RunningCodec, jwks: Jwks, caplog: pytest.LogCaptureFixture) -> None:
    """An audit trail of who encoded or decoded, never what; a refusal names the caller too."""
    with caplog.at_level(logging.INFO):
        scoped.stub.Encode(card("orders"), metadata=bearer(token_for(jwks, ["orders"], sub="worker-7")))
        refusal(lambda: scoped.stub.Encode(card("billing"), metadata=bearer(token_for(jwks, ["orders"], sub="eve"))))
    lines = [r for r in caplog.records if r.name == "codec_grpc.access"]
    first = lines[0]
    assert (getattr(first, "subject", None), getattr(first, "namespace", None)) == ("worker-7", "orders")
    refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "request refused: PERMISSION_DENIED: token 'eve' may not encode in namespace 'billing'" in refusals
    assert not any("4111" in r.getMessage() for r in caplog.records)
