"""The alert rules and docs/operations.md stay true to the code."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from codec_grpc.keys import KeyStats
from codec_grpc.runtime.metrics import GatewayMetrics, GrpcMetrics, KeyCacheCollector, KmsMetrics, StorageMetrics
from codec_grpc.storage.s3 import OUTCOMES
from codec_grpc.storage.store import REFUSALS
from tests.support.fakes import current_key
from tests.support.paths import ROOT

ALERTS = ROOT / "helm" / "temporal-codec" / "files" / "alerts.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"


def exposed_metric_names() -> set[str]:
    """Every sample name the service can expose, from registries fed one observation each."""
    registry = CollectorRegistry()
    grpc_metrics = GrpcMetrics(registry)
    method = grpc_metrics.for_method("codec_grpc.v1.CodecService", "Encode")
    method.start()
    method.finished(grpc.StatusCode.OK, 0.01)
    grpc_metrics.payloads_processed("Encode", 1, 10, 20)
    kms = KmsMetrics(registry, ("us-east-1", "us-west-2"), fallbacks=True)
    kms.observe("Decrypt", "success", 0.01, "us-east-1")
    kms.fallback("Decrypt", "us-west-2")
    GatewayMetrics(registry).observe("decode", "POST", 200, 0.01)
    StorageMetrics(registry, OUTCOMES, REFUSALS).observe("GetObject", "success", 0.01, 100)
    current = current_key("alias/a", "ns", age=1.0, expires_in=2.0, expired=False, encryptions=1)
    KeyCacheCollector(lambda: KeyStats(1, [current], 0, 0, 0, 0, 0, 0, 1), registry)
    text = generate_latest(registry).decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_alert_rules_pass_promtool():
    result = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_fail_fast_alert_fires_only_on_refusals_that_go_on(tmp_path: Path):
    """promtool's rule unit test: a pod refusing decodes for 20 minutes alerts; a burst of refusals that
    stops (one short outage) and a pod that never refuses do not."""
    name = "TemporalCodecKmsFailingFast"
    series = "temporal_codec_kms_short_circuited_total{{namespace='temporal', pod='{}', operation='Decrypt'}}"
    (rule,) = [rule for rule in yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"] if rule["alert"] == name]
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": series.format("refusing"), "values": "0+3x30"},
                    {"series": series.format("burst"), "values": "0 40 40 40 40 40 40 40x25"},
                    {"series": series.format("healthy"), "values": "0x30"},
                ],
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": name, "exp_alerts": []},
                    {
                        "eval_time": "20m",
                        "alertname": name,
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "namespace": "temporal", "pod": "refusing"},
                                "exp_annotations": {
                                    "summary": "Decodes refused without asking KMS for 10 minutes on refusing",
                                    "description": rule["annotations"]["description"],
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        ["promtool", "test", "rules", str(tmp_path / "tests.yaml")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_region_fallback_alert_names_the_region_serving(tmp_path: Path):
    """A pod whose decodes go to us-west-2 for 20 minutes alerts, naming that Region; a pod that fell
    back once (a blip) does not."""
    name = "TemporalCodecKmsRegionFallback"
    series = (
        "temporal_codec_kms_fallbacks_total{{namespace='temporal', pod='{}', region='us-west-2', operation='Decrypt'}}"
    )
    (rule,) = [rule for rule in yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"] if rule["alert"] == name]
    expected = {
        "exp_labels": {"severity": "warning", "namespace": "temporal", "pod": "failing-over", "region": "us-west-2"},
        "exp_annotations": {
            "summary": "KMS calls served in us-west-2 instead of an earlier Region for 10 minutes on failing-over",
            "description": rule["annotations"]["description"],
        },
    }
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": series.format("failing-over"), "values": "0+2x30"},
                    {"series": series.format("blip"), "values": "0 1 1x28"},
                ],
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": name, "exp_alerts": []},
                    {"eval_time": "20m", "alertname": name, "exp_alerts": [expected]},
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        ["promtool", "test", "rules", str(tmp_path / "tests.yaml")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_use_only_metrics_the_service_exposes():
    names = exposed_metric_names()
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    assert {rule["alert"] for rule in rules} >= {
        "TemporalCodecKmsErrorRate",
        "TemporalCodecKmsFailingFast",
        "TemporalCodecKmsRegionFallback",
        "TemporalCodecCurrentKeyExpired",
        "TemporalCodecHighLatency",
        "TemporalCodecDown",
    }
    for rule in rules:
        used = set(re.findall(r"\b(?:temporal_codec|grpc_server)_[a-z_]+\b", rule["expr"]))
        assert used <= names, f"{rule['alert']} uses unknown metrics {used - names}"


def test_the_alerts_table_names_exactly_the_chart_rules():
    """The docs describe the rules without copying them: one row per alert of the chart's file."""
    section = OPERATIONS.read_text().split("## Alerts", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([A-Za-z]+)` \|", section, re.M)
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    assert sorted(documented) == sorted(rule["alert"] for rule in rules)
    assert "expr:" not in OPERATIONS.read_text()  # the rules themselves are not copied


def test_the_metrics_table_matches_what_is_exposed():
    names = exposed_metric_names()
    section = OPERATIONS.read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z0-9_]+)`", section, re.M))
    families = {re.sub(r"_(bucket|count|sum)$", "", name) for name in names if not name.endswith("_created")}
    ours = {name for name in families if name.startswith(("temporal_codec_", "grpc_server_"))}
    assert documented == ours
