"""The access model without servers: grants, the policy file, certificate identities, access-token
rules, and what Stats show to whom."""

from __future__ import annotations

from pathlib import Path

import pytest

from codec_grpc import errors
from codec_grpc.access import (
    ANONYMOUS_CALLER,
    CERTIFICATE,
    AccessPolicy,
    AccessTokenRule,
    Caller,
    Grant,
    certificate_identity,
    load_policy,
)
from codec_grpc.access.identity import TOKEN
from codec_grpc.runtime.config import load_config
from codec_grpc.service import visible_stats
from codec_grpc.v1 import codec_pb2
from tests.support.pki import Authority

POLICY = """\
grants:
  - certificates: ["spiffe://prod.example/ns/orders/sa/*"]
    namespaces: [orders]
    operations: [encode, decode]
  - subjects: [ci-*]
    namespaces: ["team-*"]
    operations: [encode]
  - groups: [temporal-readers]
    namespaces: ["*"]
    operations: [decode]
"""


@pytest.fixture
def policy(tmp_path: Path) -> AccessPolicy:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return load_policy(str(path))


def test_policy_grants_by_certificate_subject_and_group(policy: AccessPolicy) -> None:
    worker = Caller(CERTIFICATE, "spiffe://prod.example/ns/orders/sa/orders-worker")
    assert policy.allows(worker, "decode", "orders") and policy.allows(worker, "encode", "orders")
    assert not policy.allows(worker, "decode", "billing") and not policy.allows(worker, "stats", "orders")
    ci = Caller(TOKEN, "ci-release")
    assert policy.allows(ci, "encode", "team-a") and not policy.allows(ci, "decode", "team-a")
    reader = Caller(TOKEN, "bob", groups=("staff", "temporal-readers"))
    assert policy.allows(reader, "decode", "anything") and not policy.allows(reader, "encode", "anything")
    assert policy.allows_everywhere(reader, "decode") and not policy.allows_everywhere(ci, "encode")
    # A token subject never matches a certificate grant, nor a certificate a subject grant.
    assert not policy.allows(Caller(TOKEN, worker.name), "decode", "orders")
    assert not policy.allows(Caller(CERTIFICATE, "ci-release"), "encode", "team-a")
    assert not policy.allows(Caller(TOKEN, "stranger"), "decode", "orders")
    assert policy.restricts_namespaces


def test_a_refusal_names_who_what_and_where(policy: AccessPolicy) -> None:
    with pytest.raises(errors.AccessDeniedError) as caught:
        policy.check(Caller(TOKEN, "ci-\nrelease"), "decode", "team-a")
    assert str(caught.value) == "token 'ci-?release' may not decode in namespace 'team-a'"


def test_claims_and_policy_add_up() -> None:
    claimed = Caller(TOKEN, "alice", claimed=Grant(("orders",), frozenset({"decode"})))
    assert AccessPolicy().allows(claimed, "decode", "orders")
    assert not AccessPolicy().allows(claimed, "decode", "billing")
    unrestricted = Caller(TOKEN, "alice")
    assert AccessPolicy().allows(unrestricted, "encode", "any")  # neither claims nor a policy: all
    assert AccessPolicy().allows(ANONYMOUS_CALLER, "stats", "any")  # a server without authentication


@pytest.mark.parametrize(
    ("sans", "common_name", "identity"),
    [
        (
            {"uris": ("https://not-spiffe.example/x", "spiffe://td/ns/a/sa/b"), "dns": ("a.example",)},
            "cn",
            "spiffe://td/ns/a/sa/b",
        ),
        ({"uris": ("https://not-spiffe.example/x",), "dns": ("worker.example", "b.example")}, "cn", "worker.example"),
        ({}, "payroll-batch", "payroll-batch"),
    ],
)
def test_certificate_identity_prefers_spiffe_then_dns_then_cn(
    tmp_path: Path, sans: dict[str, tuple[str, ...]], common_name: str, identity: str
) -> None:
    issued = Authority(tmp_path).issue(common_name, server=False, **sans)
    assert certificate_identity(issued.cert.read_bytes()) == identity


@pytest.mark.parametrize(
    ("rule", "header", "claims", "accepted"),
    [
        ("typ:at+jwt", {"typ": "at+jwt"}, {}, True),
        ("typ:at+jwt", {"typ": "application/AT+JWT"}, {}, True),
        ("typ:at+jwt", {"typ": "JWT"}, {"nonce": "x"}, False),
        ("typ:at+jwt,claim:scp", {"typ": "JWT"}, {"scp": ["codec"]}, True),  # Okta, Entra ID
        ("claim:client_id", {}, {"client_id": "ui"}, True),
        ("claim:typ=Bearer", {}, {"typ": "Bearer"}, True),  # Keycloak
        ("claim:typ=Bearer", {}, {"typ": "ID"}, False),
        ("any", {}, {}, True),
    ],
)
def test_access_token_rules(rule: str, header: dict[str, str], claims: dict[str, object], accepted: bool) -> None:
    assert AccessTokenRule.parse(rule).accepts(header, claims) is accepted


@pytest.mark.parametrize("bad", ["", "typ:", "claim:", "claim:=x", "scope", "header:typ"])
def test_access_token_rule_refuses_nonsense(bad: str) -> None:
    with pytest.raises(errors.ConfigError, match="^AUTH_ACCESS_TOKEN: "):
        load_config({"AUTH_ACCESS_TOKEN": bad})


def test_allowed_hosts_are_parsed_and_checked() -> None:
    config = load_config({"GATEWAY_ALLOWED_HOSTS": " Codec.Example.com , codec.example.com:8443,[::1]:8081"})
    assert config.gateway_allowed_hosts == frozenset({"codec.example.com", "codec.example.com:8443", "[::1]:8081"})
    with pytest.raises(errors.ConfigError, match="^GATEWAY_ALLOWED_HOSTS: expected host names"):
        load_config({"GATEWAY_ALLOWED_HOSTS": "https://codec.example.com"})


def _stats() -> codec_pb2.StatsResponse:
    stats = codec_pb2.StatsResponse(namespace="orders", kms_last_error="AccessDenied for arn:aws:kms:...:key/billing")
    for namespace in ("orders", "billing", ""):
        stats.current_keys.add(namespace=namespace, key_arn=f"arn:aws:kms:x:1:key/{namespace or 'shared'}")
    stats.kms_regions.add(region="us-east-1", decrypt_calls=2, last_error="KMS Decrypt with key arn:…:key/billing: …")
    return stats


def test_stats_show_only_the_namespaces_a_caller_may_see(policy: AccessPolicy) -> None:
    orders_only = Caller(TOKEN, "alice", claimed=Grant(("orders",), frozenset({"stats"})))
    shown = visible_stats(_stats(), orders_only, AccessPolicy())
    assert [k.namespace for k in shown.current_keys] == ["orders"]
    assert shown.kms_last_error == ""  # it may name any namespace's master key
    assert shown.kms_regions[0].decrypt_calls == 2 and shown.kms_regions[0].last_error == ""  # so may these
    everywhere = Caller(TOKEN, "ops", claimed=Grant(("*",), frozenset({"stats"})))
    assert visible_stats(_stats(), everywhere, AccessPolicy()) == _stats()
    assert visible_stats(_stats(), ANONYMOUS_CALLER, AccessPolicy()) == _stats()
