"""Split `helm template` output for validation: Kubernetes kinds vs. Prometheus Operator CRDs.

kubernetes-validate knows only built-in kinds, so the CRD objects (ServiceMonitor,
PrometheusRule) are checked here instead: a ServiceMonitor's endpoints must name ports
of the chart's Service and use only the fields the chart means to set (a bearer token
`authorization` from a secret), and a PrometheusRule's spec is written out as a plain rule
file for `promtool check rules`.

usage: python split_manifests.py RENDERED.yaml BUILTIN_OUT.yaml RULES_OUT.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
# Fields of monitoring.coreos.com/v1 Endpoint that the chart sets (a misspelt one would be dropped).
ENDPOINT_FIELDS = {"port", "path", "interval", "scrapeTimeout", "authorization"}


def main(rendered: str, builtin_out: str, rules_out: str) -> int:
    documents = [doc for doc in yaml.safe_load_all(Path(rendered).read_text()) if doc]
    builtin = [doc for doc in documents if (doc.get("apiVersion"), doc.get("kind")) not in CRD_KINDS]
    crds = [doc for doc in documents if (doc.get("apiVersion"), doc.get("kind")) in CRD_KINDS]
    Path(builtin_out).write_text(yaml.safe_dump_all(builtin, sort_keys=False))
    problems = [*check_service_monitors(documents, crds)]
    rules = [doc["spec"] for doc in crds if doc["kind"] == "PrometheusRule"]
    Path(rules_out).write_text(yaml.safe_dump(rules[0], sort_keys=False) if rules else "")
    for problem in problems:
        print(f"{rendered}: {problem}", file=sys.stderr)
    print(f"{rendered}: {len(builtin)} built-in objects, {len(crds)} CRD objects")
    return 1 if problems else 0


def check_service_monitors(documents: list[dict[str, Any]], crds: list[dict[str, Any]]) -> list[str]:
    service_ports = {
        port["name"] for doc in documents if doc.get("kind") == "Service" for port in doc["spec"].get("ports", [])
    }
    problems = []
    for monitor in (doc for doc in crds if doc["kind"] == "ServiceMonitor"):
        endpoints = monitor.get("spec", {}).get("endpoints") or []
        if not endpoints:
            problems.append("ServiceMonitor without endpoints")
        for endpoint in endpoints:
            if endpoint.get("port") not in service_ports:
                problems.append(f"ServiceMonitor endpoint port {endpoint.get('port')!r} is not a Service port")
            if endpoint.get("path") != "/metrics":
                problems.append(f"ServiceMonitor endpoint path {endpoint.get('path')!r} is not /metrics")
            unknown = set(endpoint) - ENDPOINT_FIELDS
            if unknown:
                problems.append(f"ServiceMonitor endpoint has unknown fields {sorted(unknown)}")
            if "authorization" in endpoint:
                problems.extend(check_authorization(endpoint["authorization"]))
    return problems


def check_authorization(authorization: Any) -> list[str]:
    """SafeAuthorization: type Bearer, credentials a SecretKeySelector (name, key)."""
    if not isinstance(authorization, dict) or set(authorization) != {"type", "credentials"}:
        return [f"ServiceMonitor endpoint authorization must have type and credentials: {authorization!r}"]
    problems = []
    if authorization["type"] != "Bearer":
        problems.append(f"ServiceMonitor endpoint authorization type {authorization['type']!r} is not Bearer")
    credentials = authorization["credentials"]
    if not isinstance(credentials, dict) or set(credentials) != {"name", "key"} or not all(credentials.values()):
        problems.append(
            f"ServiceMonitor endpoint authorization credentials must be a secret name and key: {credentials!r}"
        )
    return problems


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
