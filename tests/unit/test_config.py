"""Configuration: defaults, environment, flags, and exact messages for bad values."""

from __future__ import annotations

import subprocess
import sys

import pytest

from codec_grpc.errors import ConfigError
from codec_grpc.runtime.config import SETTINGS, load_config
from tests.support.paths import ROOT


def test_defaults() -> None:
    config = load_config({})
    assert config.grpc_port == 50051
    # Secure by default: every listener on loopback, nothing unauthenticated allowed beyond it.
    assert (config.grpc_host, config.gateway_host, config.metrics_host) == ("127.0.0.1",) * 3
    assert config.allow_unauthenticated is False
    assert config.accept_unbound_payloads is False
    assert config.default_namespace == "default"
    assert config.kms_key_alias == "alias/temporal-codec-latest"
    assert config.data_key_rotation_interval == 3600
    assert config.kms_cache_ttl == 86400
    assert config.namespace_binding is True
    assert dict(config.namespace_key_aliases) == {}
    assert config.dev_kms == "off"
    assert config.kms_fail_fast_seconds == 5


def test_environment_and_flags_flag_wins() -> None:
    env = {"GRPC_PORT": "6000", "NAMESPACE_KEY_ALIASES": " ns-a=alias/a , ns-b=alias/b ", "NAMESPACE_BINDING": "no"}
    config = load_config(env, ["--grpc-port", "7000", "--kms-cache-max-keys", "5"])
    assert config.grpc_port == 7000
    assert config.kms_cache_max_keys == 5
    assert dict(config.namespace_key_aliases) == {"ns-a": "alias/a", "ns-b": "alias/b"}
    assert config.namespace_binding is False


def test_config_is_frozen() -> None:
    config = load_config({})
    with pytest.raises(AttributeError):
        config.grpc_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GRPC_PORT": "http"}, "GRPC_PORT: must be an integer, got 'http'"),
        ({"GRPC_PORT": "70000"}, "GRPC_PORT: must be between 0 and 65535, got 70000"),
        ({"KMS_CACHE_TTL": "-1"}, "KMS_CACHE_TTL: must be between 0.001 and 3.16224e+07 seconds, got -1"),
        ({"DATA_KEY_ROTATION_INTERVAL": "soon"}, "DATA_KEY_ROTATION_INTERVAL: must be a number of seconds, got 'soon'"),
        (
            {"DATA_KEY_MAX_ENCRYPTIONS": "5000000000"},
            "DATA_KEY_MAX_ENCRYPTIONS: must be between 1 and 4294967296, got 5000000000",
        ),
        ({"NAMESPACE_BINDING": "maybe"}, "NAMESPACE_BINDING: must be true or false, got 'maybe'"),
        (
            {"NAMESPACE_KEY_ALIASES": "ns-a"},
            "NAMESPACE_KEY_ALIASES: expected NAMESPACE=ALIAS pairs separated by commas, got 'ns-a'",
        ),
        ({"NAMESPACE_KEY_ALIASES": "a=alias/x,a=alias/y"}, "NAMESPACE_KEY_ALIASES: namespace 'a' is listed twice"),
        ({"DEFAULT_NAMESPACE": "bad namespace"}, "DEFAULT_NAMESPACE: must be a Temporal namespace name"),
        ({"KMS_KEY_ALIAS": " "}, "KMS_KEY_ALIAS: must be a KMS alias (alias/NAME), key id or ARN, got ' '"),
        ({"KMS_RETRY_MODE": "forever"}, "KMS_RETRY_MODE: must be one of standard, adaptive, legacy, got 'forever'"),
        ({"KMS_FAIL_FAST_SECONDS": "-1"}, "KMS_FAIL_FAST_SECONDS: must be between 0 and 3600 seconds, got -1"),
        (
            {"DATA_KEY_MAX_ENCRYPTIONS": "10", "MAX_PAYLOADS_PER_REQUEST": "100"},
            "DATA_KEY_MAX_ENCRYPTIONS: must be at least MAX_PAYLOADS_PER_REQUEST (100), got 10",
        ),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env)
    assert str(caught.value).startswith(message)
    assert caught.value.setting == message.split(":", maxsplit=1)[0]


def _server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "server.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        cwd=ROOT,
        check=False,
    )


def test_server_exits_2_with_one_line_naming_the_setting() -> None:
    result = _server(env={"KMS_CACHE_TTL": "forever"})
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "codec-server: error: KMS_CACHE_TTL: must be a number of seconds, got 'forever'\n"


def test_bad_flag_value_exits_2() -> None:
    result = _server("--grpc-port", "-5")
    assert result.returncode == 2
    assert result.stderr.strip() == "codec-server: error: GRPC_PORT: must be between 0 and 65535, got -5"


def test_help_documents_every_setting() -> None:
    result = _server("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for setting in SETTINGS:
        assert setting.flag in text, setting.env
        assert f"env {setting.env}," in text, setting.env


def test_external_storage_is_off_by_default_and_read_when_set() -> None:
    config = load_config({})
    assert config.external_storage_buckets == frozenset()
    assert (config.external_storage_bucket, config.external_storage_threshold) == (None, None)
    env = {
        "EXTERNAL_STORAGE_BUCKETS": " payloads-a, payloads-b ",
        "EXTERNAL_STORAGE_BUCKET": "payloads-a",
        "EXTERNAL_STORAGE_THRESHOLD": "262_144",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:5000",
    }
    config = load_config(env)
    assert config.external_storage_buckets == {"payloads-a", "payloads-b"}
    assert (config.external_storage_bucket, config.external_storage_threshold) == ("payloads-a", 262144)
    assert config.aws_endpoint_url_s3 == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"EXTERNAL_STORAGE_BUCKETS": "Payloads_A"},
            "EXTERNAL_STORAGE_BUCKETS: expected an S3 bucket name (my-temporal-payloads) or access point ARN, "
            "got 'Payloads_A'",
        ),
        (
            {"EXTERNAL_STORAGE_BUCKETS": "a-b", "EXTERNAL_STORAGE_BUCKET": "a-b"},
            "EXTERNAL_STORAGE_THRESHOLD: must be set together with EXTERNAL_STORAGE_BUCKET (offloading by /encode)",
        ),
        (
            {"EXTERNAL_STORAGE_THRESHOLD": "1024"},
            "EXTERNAL_STORAGE_BUCKET: must be set together with EXTERNAL_STORAGE_THRESHOLD (offloading by /encode)",
        ),
        (
            {"EXTERNAL_STORAGE_BUCKETS": "a-b", "EXTERNAL_STORAGE_BUCKET": "c-d", "EXTERNAL_STORAGE_THRESHOLD": "1"},
            "EXTERNAL_STORAGE_BUCKET: 'c-d' must be one of EXTERNAL_STORAGE_BUCKETS, or the references /encode "
            "writes could not be read",
        ),
    ],
)
def test_external_storage_rules(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env)
    assert str(caught.value) == message


def test_kms_regions_are_off_by_default_and_read_in_order() -> None:
    assert load_config({}).kms_regions == () and dict(load_config({}).kms_region_endpoints) == {}
    config = load_config(
        {
            "KMS_REGIONS": " us-west-2 , us-east-1 ",
            "KMS_REGION_ENDPOINTS": "us-east-1=http://127.0.0.1:4566, us-west-2=https://kms.example.com/",
            "KMS_KEY_ALIAS": "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd",  # a multi-Region key's ARN
            "NAMESPACE_KEY_ALIASES": "orders=arn:aws:kms:us-west-2:111122223333:key/1234abcd",  # single, listed Region
        }
    )
    assert config.kms_regions == ("us-west-2", "us-east-1")  # the order of preference, as given
    assert dict(config.kms_region_endpoints) == {
        "us-east-1": "http://127.0.0.1:4566",
        "us-west-2": "https://kms.example.com/",
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"KMS_REGIONS": "us-east-1,US-WEST-2"},
            "KMS_REGIONS: expected AWS Region names like us-east-1, got 'US-WEST-2'",
        ),
        ({"KMS_REGIONS": "us-east-1,us-east-1"}, "KMS_REGIONS: Region us-east-1 is listed twice"),
        (
            {"KMS_REGIONS": "us-east-1", "KMS_REGION_ENDPOINTS": "us-east-1"},
            "KMS_REGION_ENDPOINTS: expected REGION=URL pairs separated by commas, got 'us-east-1'",
        ),
        (
            {"KMS_REGIONS": "us-east-1", "KMS_REGION_ENDPOINTS": "us-east-1=kms.local"},
            "KMS_REGION_ENDPOINTS: must be an http(s) URL, got 'kms.local'",
        ),
        (
            {"KMS_REGIONS": "us-east-1", "KMS_REGION_ENDPOINTS": "us-west-2=http://127.0.0.1:1"},
            "KMS_REGION_ENDPOINTS: Region us-west-2 is not in KMS_REGIONS (us-east-1)",
        ),
        (
            {"KMS_REGION_ENDPOINTS": "us-west-2=http://127.0.0.1:1"},
            "KMS_REGION_ENDPOINTS: Region us-west-2 is not in KMS_REGIONS (unset)",
        ),
        (
            {
                "KMS_REGIONS": "us-east-1,us-west-2",
                "NAMESPACE_KEY_ALIASES": "orders=arn:aws:kms:eu-west-1:111122223333:key/1234abcd",
            },
            "KMS_REGIONS: master key arn:aws:kms:eu-west-1:111122223333:key/1234abcd is a single-Region key of none "
            "of these Regions (us-east-1, us-west-2): name its Region, or use an alias or a multi-Region key",
        ),
    ],
)
def test_kms_regions_rules(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env)
    assert str(caught.value) == message
