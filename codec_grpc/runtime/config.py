"""Configuration: read once at start-up into one frozen, validated :class:`Config`.

Every setting is an environment variable with an equivalent command-line flag
(``KMS_CACHE_TTL`` ↔ ``--kms-cache-ttl``); a flag wins over the environment.
:func:`load_config` takes the environment and argv as arguments, so nothing
here reads ``os.environ`` itself. An invalid value raises
:class:`~codec_grpc.errors.ConfigError` naming the setting.

:data:`SETTINGS` is the one table of settings: ``--help``, the configuration
page of the docs (``make docs``) and :class:`Config` all come from it.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from codec_grpc.access import AccessTokenRule
from codec_grpc.core.namespaces import parse_namespace
from codec_grpc.errors import ConfigError
from codec_grpc.keys.allowlist import parse_key_patterns
from codec_grpc.keys.caches import MAX_ENCRYPTIONS_LIMIT
from codec_grpc.keys.regions import in_region

_ORIGIN_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?/?$")


def parse_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip().replace("_", ""))
        except ValueError:
            raise ValueError(f"must be an integer, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def parse_seconds(low: float, high: float) -> Callable[[str], float]:
    return parse_float(low, high, unit="seconds")


def parse_float(low: float, high: float, unit: str = "") -> Callable[[str], float]:
    what, units = (f"a number of {unit}", f" {unit}") if unit else ("a number", "")

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"must be {what}, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}{units}, got {value:g}")
        return value

    return parse


def parse_namespace_patterns(text: str) -> tuple[str, ...]:
    patterns = tuple(filter(None, (part.strip() for part in text.split(","))))
    for pattern in patterns:
        if not re.fullmatch(r"[A-Za-z0-9._*-]{1,255}", pattern):
            raise ValueError(f"expected namespace names or * patterns, got {pattern[:100]!r}")
    return patterns


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {text!r}")


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {text!r}")
        return value

    return parse


def parse_key_id(text: str) -> str:
    value = text.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"must be a KMS alias (alias/NAME), key id or ARN, got {text!r}")
    return value


def parse_optional(text: str) -> str | None:
    return text.strip() or None


def parse_origins(text: str) -> frozenset[str]:
    origins: set[str] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        if item == "*":
            raise ValueError("'*' cannot be combined with credentials: list each origin (https://ui.example.com)")
        if not _ORIGIN_RE.match(item):
            raise ValueError(f"expected origins like https://ui.example.com:8080 (no path), got {item!r}")
        origins.add(item.rstrip("/").lower())
    return frozenset(origins)


def parse_http_url(text: str) -> str | None:
    value = text.strip()
    if value and not re.match(r"^https?://[^\s/]+(/\S*)?$", value):
        raise ValueError(f"must be an http(s) URL, got {text!r}")
    return value or None


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$|^arn:[a-z-]+:s3[a-z-]*:[^\s,]*$")


def parse_bucket(text: str) -> str | None:
    value = text.strip()
    if value and not _BUCKET_RE.match(value):
        raise ValueError(f"expected an S3 bucket name (my-temporal-payloads) or access point ARN, got {text!r}")
    return value or None


def parse_buckets(text: str) -> frozenset[str]:
    return frozenset(filter(None, (parse_bucket(part) for part in text.split(","))))


def parse_optional_int(low: int, high: int) -> Callable[[str], int | None]:
    parse = parse_int(low, high)
    return lambda text: parse(text) if text.strip() else None


def parse_claim_name(text: str) -> str:
    value = text.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"must be a claim name, got {text!r}")
    return value


def parse_access_token_rule(text: str) -> AccessTokenRule:
    return AccessTokenRule.parse(text)


def parse_hosts(text: str) -> frozenset[str]:
    hosts = set()
    for item in filter(None, (part.strip().lower() for part in text.split(","))):
        if not re.match(r"^([a-z0-9.-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?$", item):
            raise ValueError(f"expected host names like codec.example.com or codec.example.com:8081, got {item!r}")
        hosts.add(item)
    return frozenset(hosts)


def parse_audiences(text: str) -> tuple[str, ...]:
    return tuple(filter(None, (part.strip() for part in text.split(","))))


_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")


def parse_region(text: str) -> str:
    value = text.strip()
    if not _REGION_RE.match(value):
        raise ValueError(f"expected AWS Region names like us-east-1, got {text[:100]!r}")
    return value


def parse_regions(text: str) -> tuple[str, ...]:
    regions = tuple(parse_region(part) for part in text.split(",") if part.strip())
    for index, region in enumerate(regions):
        if region in regions[:index]:
            raise ValueError(f"Region {region} is listed twice")
    return regions


def parse_region_endpoints(text: str) -> Mapping[str, str]:
    endpoints: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        region, sep, url = item.partition("=")
        if not sep:
            raise ValueError(f"expected REGION=URL pairs separated by commas, got {item[:100]!r}")
        region, endpoint = parse_region(region), parse_http_url(url)
        if endpoint is None:
            raise ValueError(f"Region {region} has no URL")
        if region in endpoints:
            raise ValueError(f"Region {region} is listed twice")
        endpoints[region] = endpoint
    return MappingProxyType(endpoints)


def parse_namespace_aliases(text: str) -> Mapping[str, str]:
    aliases: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        namespace, sep, alias = item.partition("=")
        if not sep:
            raise ValueError(f"expected NAMESPACE=ALIAS pairs separated by commas, got {item!r}")
        namespace, alias = parse_namespace(namespace), parse_key_id(alias)
        if namespace in aliases:
            raise ValueError(f"namespace {namespace!r} is listed twice")
        aliases[namespace] = alias
    return MappingProxyType(aliases)


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    parse: Callable[[str], Any]
    help: str

    @property
    def field(self) -> str:
        return self.env.lower()

    @property
    def flag(self) -> str:
        return "--" + self.env.lower().replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "GRPC_HOST",
        "127.0.0.1",
        parse_key_id,
        "address the gRPC server listens on; beyond loopback it needs AUTH_JWKS_URL or TLS_CLIENT_CA_FILE "
        "(or ALLOW_UNAUTHENTICATED)",
    ),
    Setting("GRPC_PORT", "50051", parse_int(0, 65535), "gRPC port (0 picks a free port)"),
    Setting(
        "GRPC_MAX_MESSAGE_BYTES",
        str(16 * 1024 * 1024),
        parse_int(1024, 2**31 - 1),
        "largest gRPC request accepted; larger ones get RESOURCE_EXHAUSTED",
    ),
    Setting(
        "GRPC_MAX_WORKERS",
        "16",
        parse_int(1, 1024),
        "threads serving gRPC calls: GRPC_RUNNING_CALLS running at once, the others waiting for KMS",
    ),
    Setting(
        "GRPC_RUNNING_CALLS",
        "2",
        parse_int(1, 1024),
        "gRPC calls running at once (GRPC_MAX_WORKERS if fewer); more queue until one ends or waits for KMS. "
        "Python runs one thread at a time: more threads running only take turns (docs/benchmarks.md)",
    ),
    Setting(
        "GRPC_MAX_CONCURRENT_RPCS",
        "",
        parse_optional_int(1, 1_000_000),
        "most gRPC calls in progress at once, running, waiting for KMS or queued (health checks and reflection "
        "included); more get RESOURCE_EXHAUSTED at once. Unset: 16 x GRPC_MAX_WORKERS",
    ),
    Setting(
        "GRPC_MAX_METADATA_BYTES",
        str(16 * 1024),
        parse_int(1024, 1024 * 1024),
        "largest metadata (headers: authorization, x-namespace, ...) of a gRPC call accepted; larger get "
        "RESOURCE_EXHAUSTED",
    ),
    Setting(
        "GRPC_REFLECTION",
        "true",
        parse_bool,
        "serve gRPC server reflection (grpcurl, grpcui without proto files); the health service is always served",
    ),
    Setting(
        "WORKERS",
        "1",
        parse_int(1, 64),
        "server processes sharing GRPC_PORT (and the gateway's PORT) via SO_REUSEPORT; metrics are summed over them",
    ),
    Setting(
        "MAX_PAYLOADS_PER_REQUEST",
        "10000",
        parse_int(1, 10_000_000),
        "most payloads in one Encode/Decode request; more get RESOURCE_EXHAUSTED",
    ),
    Setting(
        "DEFAULT_NAMESPACE",
        "default",
        parse_namespace,
        "namespace used when a request names none (no request field, no x-namespace header)",
    ),
    Setting(
        "NAMESPACE_BINDING",
        "true",
        parse_bool,
        "bind every payload to its namespace: decoding it under another namespace is refused",
    ),
    # Compression before encryption (codec_grpc.core.compression, payload format v2).
    Setting(
        "COMPRESSION",
        "off",
        parse_choice("off", "zstd", "zlib"),
        "compress payloads before encrypting them (format v2, which servers before it cannot decode): off, "
        "zstd or zlib. Off by default: sizes of compressed payloads can leak secrets they hold beside text an "
        "attacker chose (docs/security.md). Decoding v2 works whatever this says",
    ),
    Setting(
        "COMPRESSION_LEVEL",
        "",
        parse_optional_int(1, 9),
        "compression level, 1 (fastest) to 9 (smallest) for zstd and zlib alike. Unset: 1 (docs/benchmarks.md)",
    ),
    Setting(
        "COMPRESSION_MIN_BYTES",
        "4096",
        parse_int(0, 2**31 - 1),
        "payloads smaller than this stay uncompressed; so does any payload compression does not shrink",
    ),
    Setting(
        "COMPRESSION_MAX_RATIO",
        "100",
        parse_int(1, 1_000_000),
        "a compressed payload decompressing to more than this many times its compressed size is refused as a "
        "bomb (INVALID_ARGUMENT / 400); encode leaves payloads that would compress beyond it uncompressed",
    ),
    Setting(
        "DECOMPRESSED_MAX_BYTES",
        "",
        parse_optional_int(1024, 2**31 - 1),
        "most bytes the payloads of one Decode request may decompress to, together; beyond, the request is "
        "refused as a bomb (INVALID_ARGUMENT / 400). Unset: GRPC_MAX_MESSAGE_BYTES",
    ),
    Setting(
        "KMS_KEY_ALIAS",
        "alias/temporal-codec-latest",
        parse_key_id,
        "master key (alias, key id or ARN) for namespaces without their own",
    ),
    Setting(
        "NAMESPACE_KEY_ALIASES", "", parse_namespace_aliases, "per-namespace master keys: 'ns-a=alias/a,ns-b=alias/b'"
    ),
    Setting(
        "DATA_KEY_ROTATION_INTERVAL",
        "3600",
        parse_seconds(0.001, 366 * 86400),
        "seconds a data key encrypts before a new one is generated",
    ),
    Setting(
        "DATA_KEY_MAX_ENCRYPTIONS",
        "10000000",
        parse_int(1, MAX_ENCRYPTIONS_LIMIT),
        "payloads one data key may encrypt before a new one is generated (at most 2**32)",
    ),
    Setting(
        "KMS_CACHE_TTL",
        "86400",
        parse_seconds(0.001, 366 * 86400),
        "seconds an unwrapped data key stays cached for decoding",
    ),
    Setting(
        "KMS_CACHE_MAX_KEYS",
        "10000",
        parse_int(1, 10_000_000),
        "most unwrapped data keys cached (least recently used goes first)",
    ),
    Setting(
        "KMS_OUTAGE_GRACE",
        "3600",
        parse_seconds(0, 366 * 86400),
        "seconds a data key keeps encrypting past its rotation time while KMS is unavailable (0: none)",
    ),
    Setting("AWS_REGION", "", parse_optional, "AWS region of the KMS keys (default: boto3's chain)"),
    Setting("AWS_ENDPOINT_URL_KMS", "", parse_optional, "KMS endpoint URL (default: AWS's, per region)"),
    Setting("KMS_CONNECT_TIMEOUT", "2", parse_seconds(0.01, 300), "seconds to connect to KMS"),
    Setting("KMS_READ_TIMEOUT", "5", parse_seconds(0.01, 300), "seconds to wait for a KMS answer"),
    Setting("KMS_MAX_ATTEMPTS", "3", parse_int(1, 20), "KMS attempts per call, first included (botocore retries)"),
    Setting("KMS_RETRY_MODE", "standard", parse_choice("standard", "adaptive", "legacy"), "botocore retry mode"),
    Setting(
        "KMS_FAIL_FAST_SECONDS",
        "5",
        parse_seconds(0, 3600),
        "after a KMS call with a master key found KMS unavailable, decodes needing an uncached key under "
        "that master key fail at once (UNAVAILABLE / 503) for this long instead of waiting on KMS timeouts "
        "(0: off)",
    ),
    Setting(
        "DECRYPT_KEY_ARNS",
        "",
        parse_key_patterns,
        "KMS key ARNs that may decrypt beside the configured master keys (old master keys after an alias "
        "moved), comma-separated; arn:aws:kms:REGION:ACCOUNT:key/* patterns allowed. Payloads naming any "
        "other key are refused before any KMS call",
    ),
    Setting(
        "MAX_KMS_DECRYPTS_PER_REQUEST",
        "32",
        parse_int(1, 100_000),
        "most data keys one request may have unwrapped through KMS (RESOURCE_EXHAUSTED / 429 beyond); "
        "cached keys do not count",
    ),
    Setting(
        "KMS_DECRYPT_RATE",
        "100",
        parse_float(0, 100_000),
        "KMS Decrypt calls per second this process may make, sustained (0: no limit)",
    ),
    Setting(
        "KMS_DECRYPT_BURST",
        "200",
        parse_int(1, 1_000_000),
        "KMS Decrypt calls this process may make at once after a quiet spell (token bucket)",
    ),
    Setting(
        "KMS_MAX_CONCURRENT_CALLS",
        "32",
        parse_int(0, 10_000),
        "KMS calls in flight at once in this process; a call waits up to 1s for its turn (0: no limit)",
    ),
    Setting(
        "KMS_REFUSAL_TTL",
        "60",
        parse_seconds(0.001, 86400),
        "seconds a data key KMS refused to unwrap is refused again without asking KMS",
    ),
    Setting(
        "ALLOWED_NAMESPACES",
        "*",
        parse_namespace_patterns,
        "namespaces served beside DEFAULT_NAMESPACE and those of NAMESPACE_KEY_ALIASES, comma-separated, "
        "* patterns; * serves any (single-tenant). Others are refused (PERMISSION_DENIED / 403)",
    ),
    Setting(
        "CURRENT_KEYS_MAX",
        "1000",
        parse_int(1, 1_000_000),
        "current data keys held (one per master key and namespace); the least recently used goes first",
    ),
    Setting(
        "KMS_REGIONS",
        "",
        parse_regions,
        "AWS Regions of the master keys (multi-Region keys, mrk-), in order of preference, comma-separated "
        "(us-east-1,us-west-2): new data keys come from the first Region available; a payload's data key is "
        "unwrapped in its key's Region, and when KMS there is unavailable with the same multi-Region key in the "
        "next. Unset: one Region (AWS_REGION), no fallback",
    ),
    Setting(
        "KMS_REGION_ENDPOINTS",
        "",
        parse_region_endpoints,
        "KMS endpoint URL per Region of KMS_REGIONS, as REGION=URL pairs, comma-separated; a Region not "
        "listed uses AWS_ENDPOINT_URL_KMS when set, else AWS's endpoint for that Region",
    ),
    Setting(
        "DEV_KMS",
        "off",
        parse_choice("off", "auto", "on"),
        "embedded development KMS (moto) on loopback: on, off, or auto = only when no AWS "
        "credentials or KMS endpoint are configured. Never for production data",
    ),
    Setting("LOG_LEVEL", "INFO", parse_choice("debug", "info", "warning", "error"), "log level"),
    # HTTP/JSON gateway for the Temporal Web UI and CLI (codec_grpc.gateway).
    Setting(
        "GATEWAY_ENABLED",
        "true",
        parse_bool,
        "serve the HTTP/JSON gateway in the server process (it calls the codec directly)",
    ),
    Setting(
        "GATEWAY_HOST",
        "127.0.0.1",
        parse_key_id,
        "address the HTTP gateway listens on; beyond loopback it needs AUTH_JWKS_URL (or ALLOW_UNAUTHENTICATED)",
    ),
    Setting("PORT", "8081", parse_int(0, 65535), "HTTP gateway port (0 picks a free port)"),
    Setting(
        "CODEC_GRPC_TARGET",
        "127.0.0.1:50051",
        parse_key_id,
        "gRPC CodecService the standalone gateway (codec-gateway) forwards to, as host:port",
    ),
    Setting(
        "GATEWAY_MAX_BODY_BYTES",
        str(16 * 1024 * 1024),
        parse_int(1024, 2**31 - 1),
        "largest HTTP request body accepted; larger ones get 413",
    ),
    Setting(
        "GATEWAY_UPSTREAM_TIMEOUT",
        "30",
        parse_seconds(0.1, 3600),
        "seconds the gateway waits for the codec (the gRPC service, or in-process a call that waits for KMS)",
    ),
    Setting(
        "CORS_ALLOWED_ORIGINS",
        "",
        parse_origins,
        "browser origins allowed to call the gateway with credentials, comma-separated (https://ui.example.com)",
    ),
    # External Storage (codec_grpc.storage): payloads Temporal's SDKs keep in S3, for the gateway's routes.
    Setting(
        "EXTERNAL_STORAGE_BUCKETS",
        "",
        parse_buckets,
        "S3 buckets the gateway may read External Storage payloads from, comma-separated; a reference to "
        "another bucket is refused (403) before any S3 call. Unset: references are not resolved, /download is 404",
    ),
    Setting(
        "EXTERNAL_STORAGE_BUCKET",
        "",
        parse_bucket,
        "bucket /encode offloads large payloads to (one of EXTERNAL_STORAGE_BUCKETS; with EXTERNAL_STORAGE_THRESHOLD)",
    ),
    Setting(
        "EXTERNAL_STORAGE_THRESHOLD",
        "",
        parse_optional_int(0, 2**31 - 1),
        "/encode stores encoded payloads of at least this many bytes in EXTERNAL_STORAGE_BUCKET and answers a "
        "reference (the SDK's default threshold is 262144); unset: no offloading",
    ),
    Setting(
        "EXTERNAL_STORAGE_MAX_BYTES",
        str(16 * 1024 * 1024),
        parse_int(1024, 2**31 - 1),
        "most bytes of stored payloads one request retrieves; more get 413",
    ),
    Setting(
        "EXTERNAL_STORAGE_MAX_REFERENCES",
        "100",
        parse_int(1, 100_000),
        "most references one request resolves, or payloads one request offloads; more get 413",
    ),
    Setting(
        "EXTERNAL_STORAGE_MAX_CONCURRENCY",
        "8",
        parse_int(1, 256),
        "S3 requests in flight at once, per process (the others wait)",
    ),
    Setting("AWS_ENDPOINT_URL_S3", "", parse_optional, "S3 endpoint URL (default: AWS's, per region)"),
    Setting("S3_CONNECT_TIMEOUT", "2", parse_seconds(0.01, 300), "seconds to connect to S3"),
    Setting("S3_READ_TIMEOUT", "10", parse_seconds(0.01, 300), "seconds to wait for S3 to answer or send more bytes"),
    Setting("S3_MAX_ATTEMPTS", "3", parse_int(1, 20), "S3 attempts per request, first included (botocore retries)"),
    Setting("AUTH_JWKS_URL", "", parse_http_url, "JWKS URL of the identity provider; set to require Bearer tokens"),
    Setting("AUTH_ISSUER", "", parse_optional, "required 'iss' of access tokens (with AUTH_JWKS_URL)"),
    Setting("AUTH_AUDIENCE", "", parse_audiences, "accepted 'aud' values of access tokens, comma-separated"),
    Setting(
        "AUTH_NAMESPACES_CLAIM",
        "",
        parse_optional,
        "token claim listing the namespaces a caller may use ('*' = all); unset: any namespace",
    ),
    Setting(
        "AUTH_JWKS_REFRESH_INTERVAL",
        "30",
        parse_seconds(0, 86400),
        "fewest seconds between JWKS refetches caused by tokens with an unknown key id",
    ),
    Setting(
        "AUTH_OPERATIONS_CLAIM",
        "",
        parse_optional,
        "token claim listing the operations a caller may do (encode, decode, stats); unset: all of them",
    ),
    Setting("AUTH_GROUPS_CLAIM", "groups", parse_claim_name, "token claim listing the caller's groups (policy file)"),
    Setting(
        "AUTH_ACCESS_TOKEN",
        "typ:at+jwt",
        parse_access_token_rule,
        "how an access token differs from an ID token, any of: typ:VALUE (JOSE header), claim:NAME, "
        "claim:NAME=VALUE, any",
    ),
    Setting(
        "AUTHZ_POLICY_FILE",
        "",
        parse_optional,
        "YAML or JSON file granting certificate identities, token subjects and groups namespaces and operations",
    ),
    Setting(
        "ALLOW_UNAUTHENTICATED",
        "false",
        parse_bool,
        "let gRPC and the gateway listen beyond loopback without authentication: anyone who reaches them "
        "may encode and decode (logged at start, shown by /health and a metric)",
    ),
    Setting(
        "ACCEPT_UNBOUND_PAYLOADS",
        "false",
        parse_bool,
        "with NAMESPACE_BINDING, still decode payloads bound to no namespace (written while binding was off): "
        "a migration switch",
    ),
    Setting(
        "GATEWAY_ALLOWED_HOSTS",
        "",
        parse_hosts,
        "Host header values the gateway answers, comma-separated (name or name:port); others get 400. Unset: any",
    ),
    Setting("LOG_FORMAT", "text", parse_choice("text", "json"), "log lines as text, or one JSON object per line"),
    Setting(
        "SHUTDOWN_GRACE",
        "30",
        parse_seconds(0, 3600),
        "seconds calls in flight may take to finish after SIGTERM/SIGINT before they are cancelled",
    ),
    Setting("METRICS_ENABLED", "true", parse_bool, "serve Prometheus metrics at /metrics on METRICS_PORT"),
    Setting("METRICS_HOST", "127.0.0.1", parse_key_id, "address the metrics endpoint listens on"),
    Setting(
        "METRICS_BEARER_TOKEN_FILE",
        "",
        parse_optional,
        "file holding a secret: /metrics then answers only 'Authorization: Bearer <that secret>'",
    ),
    Setting("METRICS_PORT", "9464", parse_int(0, 65535), "Prometheus metrics port (0 picks a free port)"),
    Setting("TLS_CERT_FILE", "", parse_optional, "PEM certificate chain: serve gRPC over TLS (needs TLS_KEY_FILE)"),
    Setting("TLS_KEY_FILE", "", parse_optional, "PEM private key of TLS_CERT_FILE"),
    Setting(
        "TLS_CLIENT_CA_FILE", "", parse_optional, "PEM CA bundle: require gRPC clients to present a certificate (mTLS)"
    ),
    Setting(
        "GATEWAY_TLS_CERT_FILE",
        "",
        parse_optional,
        "PEM certificate chain for the HTTPS gateway (default: TLS_CERT_FILE)",
    ),
    Setting("GATEWAY_TLS_KEY_FILE", "", parse_optional, "PEM private key for the gateway (default: TLS_KEY_FILE)"),
    Setting(
        "CODEC_GRPC_CA_FILE",
        "",
        parse_optional,
        "PEM CA bundle that signed the gRPC server's certificate: the standalone gateway (codec-gateway) then "
        "calls gRPC over TLS",
    ),
    Setting(
        "CODEC_GRPC_CLIENT_CERT_FILE",
        "",
        parse_optional,
        "PEM client certificate the standalone gateway presents to a gRPC server that requires one (mTLS)",
    ),
    Setting("CODEC_GRPC_CLIENT_KEY_FILE", "", parse_optional, "PEM private key of CODEC_GRPC_CLIENT_CERT_FILE"),
    Setting(
        "CODEC_GRPC_SERVER_NAME",
        "",
        parse_optional,
        "name the standalone gateway expects in the gRPC server's certificate (default: the host it connects to)",
    ),
)


@dataclass(frozen=True)
class Config:
    grpc_host: str
    grpc_port: int
    grpc_max_message_bytes: int
    grpc_max_workers: int
    grpc_running_calls: int
    grpc_max_concurrent_rpcs: int | None
    grpc_max_metadata_bytes: int
    grpc_reflection: bool
    workers: int
    max_payloads_per_request: int
    default_namespace: str
    namespace_binding: bool
    compression: str
    compression_level: int | None
    compression_min_bytes: int
    compression_max_ratio: int
    decompressed_max_bytes: int | None
    kms_key_alias: str
    namespace_key_aliases: Mapping[str, str]
    data_key_rotation_interval: float
    data_key_max_encryptions: int
    kms_cache_ttl: float
    kms_cache_max_keys: int
    kms_outage_grace: float
    aws_region: str | None
    aws_endpoint_url_kms: str | None
    kms_connect_timeout: float
    kms_read_timeout: float
    kms_max_attempts: int
    kms_retry_mode: str
    kms_fail_fast_seconds: float
    decrypt_key_arns: tuple[str, ...]
    max_kms_decrypts_per_request: int
    kms_decrypt_rate: float
    kms_decrypt_burst: int
    kms_max_concurrent_calls: int
    kms_refusal_ttl: float
    allowed_namespaces: tuple[str, ...]
    current_keys_max: int
    kms_regions: tuple[str, ...]
    kms_region_endpoints: Mapping[str, str]
    dev_kms: str
    log_level: str
    gateway_enabled: bool
    gateway_host: str
    port: int
    codec_grpc_target: str
    gateway_max_body_bytes: int
    gateway_upstream_timeout: float
    cors_allowed_origins: frozenset[str]
    external_storage_buckets: frozenset[str]
    external_storage_bucket: str | None
    external_storage_threshold: int | None
    external_storage_max_bytes: int
    external_storage_max_references: int
    external_storage_max_concurrency: int
    aws_endpoint_url_s3: str | None
    s3_connect_timeout: float
    s3_read_timeout: float
    s3_max_attempts: int
    auth_jwks_url: str | None
    auth_issuer: str | None
    auth_audience: tuple[str, ...]
    auth_namespaces_claim: str | None
    auth_jwks_refresh_interval: float
    auth_operations_claim: str | None
    auth_groups_claim: str
    auth_access_token: AccessTokenRule
    authz_policy_file: str | None
    allow_unauthenticated: bool
    accept_unbound_payloads: bool
    gateway_allowed_hosts: frozenset[str]
    log_format: str
    shutdown_grace: float
    metrics_enabled: bool
    metrics_host: str
    metrics_bearer_token_file: str | None
    metrics_port: int
    tls_cert_file: str | None
    tls_key_file: str | None
    tls_client_ca_file: str | None
    gateway_tls_cert_file: str | None
    gateway_tls_key_file: str | None
    codec_grpc_ca_file: str | None
    codec_grpc_client_cert_file: str | None
    codec_grpc_client_key_file: str | None
    codec_grpc_server_name: str | None

    @property
    def auth_enabled(self) -> bool:
        return self.auth_jwks_url is not None

    @property
    def grpc_authenticated(self) -> bool:
        """Whether every gRPC caller must show a token or a verified client certificate."""
        return self.auth_enabled or self.tls_client_ca_file is not None


def build_parser(prog: str = "codec-server") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Temporal payload codec server: AES-256-GCM envelope encryption with AWS KMS data keys. "
        "Every flag has an environment variable of the same name in upper case "
        "(--grpc-port = GRPC_PORT); a flag wins over the environment.",
    )
    for setting in SETTINGS:
        shown = setting.default or "unset"
        parser.add_argument(
            setting.flag,
            dest=setting.field,
            metavar=setting.env,
            help=f"{setting.help} [env {setting.env}, default: {shown}]",
        )
    return parser


def load_config(environ: Mapping[str, str], argv: Sequence[str] = (), prog: str = "codec-server") -> Config:
    """Build the configuration from flags, then the environment, then defaults."""
    flags = vars(build_parser(prog).parse_args(list(argv)))
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = flags.get(setting.field)
        if raw is None:
            raw = environ.get(setting.env, setting.default)
        try:
            values[setting.field] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(setting.env, str(exc)) from None
    config = Config(**{f.name: values[f.name] for f in fields(Config)})
    _check_consistency(config)
    return config


def _check_consistency(config: Config) -> None:
    _check_pair("TLS_CERT_FILE", config.tls_cert_file, "TLS_KEY_FILE", config.tls_key_file)
    _check_pair(
        "GATEWAY_TLS_CERT_FILE", config.gateway_tls_cert_file, "GATEWAY_TLS_KEY_FILE", config.gateway_tls_key_file
    )
    if config.tls_client_ca_file and not config.tls_cert_file:
        raise ConfigError("TLS_CLIENT_CA_FILE", "requires TLS_CERT_FILE and TLS_KEY_FILE (mTLS is TLS first)")
    _check_gateway_upstream_tls(config)
    if config.data_key_max_encryptions < config.max_payloads_per_request:
        raise ConfigError(
            "DATA_KEY_MAX_ENCRYPTIONS",
            f"must be at least MAX_PAYLOADS_PER_REQUEST ({config.max_payloads_per_request}), "
            f"got {config.data_key_max_encryptions}",
        )
    _check_compression(config)
    _check_auth(config)
    _check_external_storage(config)
    _check_kms_regions(config)
    if not config.namespace_binding and config.auth_namespaces_claim:
        # Without binding a payload of any namespace decodes under a permitted one: the grant means nothing.
        # (A policy file that limits namespaces is refused alike when it is read: runtime.access.)
        raise ConfigError(
            "NAMESPACE_BINDING",
            "must be true when AUTH_NAMESPACES_CLAIM limits namespaces: without binding, a payload of any "
            "namespace decodes under a permitted one",
        )


def check_exposure(config: Config, *, serves_grpc: bool, serves_gateway: bool) -> None:
    """Refuse an Encode/Decode port that listens beyond loopback with no authentication, unless
    ALLOW_UNAUTHENTICATED says so: whoever reaches such a port may decrypt every payload."""
    if config.allow_unauthenticated:
        return
    fix = "bind it to 127.0.0.1, or set ALLOW_UNAUTHENTICATED=true to let anyone who reaches it encode and decode"
    if serves_grpc and not is_loopback(config.grpc_host) and not config.grpc_authenticated:
        raise ConfigError(
            "GRPC_HOST",
            f"{config.grpc_host} is beyond loopback and gRPC callers are not authenticated: set AUTH_JWKS_URL "
            f"(bearer tokens) or TLS_CLIENT_CA_FILE (client certificates), {fix}",
        )
    if serves_gateway and not is_loopback(config.gateway_host) and not config.auth_enabled:
        raise ConfigError(
            "GATEWAY_HOST",
            f"{config.gateway_host} is beyond loopback and gateway callers are not authenticated: set "
            f"AUTH_JWKS_URL (bearer tokens from the Temporal UI or CLI), {fix}",
        )


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def _check_gateway_upstream_tls(config: Config) -> None:
    _check_pair(
        "CODEC_GRPC_CLIENT_CERT_FILE",
        config.codec_grpc_client_cert_file,
        "CODEC_GRPC_CLIENT_KEY_FILE",
        config.codec_grpc_client_key_file,
    )
    if config.codec_grpc_client_cert_file and not config.codec_grpc_ca_file:
        raise ConfigError("CODEC_GRPC_CA_FILE", "must be set with CODEC_GRPC_CLIENT_CERT_FILE (mTLS is TLS first)")
    # server.py's in-process gateway calls the codec directly: it needs none of these for the gRPC port's TLS.


def _check_auth(config: Config) -> None:
    # Half-configured auth must not silently accept tokens from any issuer or audience.
    wanted = {"AUTH_JWKS_URL": config.auth_jwks_url, "AUTH_ISSUER": config.auth_issuer}
    wanted["AUTH_AUDIENCE"] = ",".join(config.auth_audience) or None
    if any(wanted.values()):
        for name, value in wanted.items():
            if not value:
                raise ConfigError(name, "must be set when any of AUTH_JWKS_URL, AUTH_ISSUER, AUTH_AUDIENCE is set")


def _check_compression(config: Config) -> None:
    if config.compression_level is not None and config.compression == "off":
        raise ConfigError("COMPRESSION_LEVEL", "has no effect with COMPRESSION=off: unset it, or set COMPRESSION")


def _check_external_storage(config: Config) -> None:
    """Offloading needs both its settings, and a bucket the gateway may read back."""
    bucket, threshold = config.external_storage_bucket, config.external_storage_threshold
    if (bucket is None) != (threshold is None):
        names = ["EXTERNAL_STORAGE_BUCKET", "EXTERNAL_STORAGE_THRESHOLD"]
        missing, given = names if bucket is None else names[::-1]
        raise ConfigError(missing, f"must be set together with {given} (offloading by /encode)")
    if bucket is not None and bucket not in config.external_storage_buckets:
        raise ConfigError(
            "EXTERNAL_STORAGE_BUCKET",
            f"{bucket!r} must be one of EXTERNAL_STORAGE_BUCKETS, or the references /encode writes could not be read",
        )


def _check_kms_regions(config: Config) -> None:
    """Endpoints only for Regions of KMS_REGIONS; every master key usable in one of them."""
    regions = config.kms_regions
    for region in config.kms_region_endpoints:
        if region not in regions:
            listed = ", ".join(regions) or "unset"
            raise ConfigError("KMS_REGION_ENDPOINTS", f"Region {region} is not in KMS_REGIONS ({listed})")
    if not regions:
        return
    for master_key in (config.kms_key_alias, *config.namespace_key_aliases.values()):
        if all(in_region(master_key, region) is None for region in regions):
            raise ConfigError(
                "KMS_REGIONS",
                f"master key {master_key} is a single-Region key of none of these Regions ({', '.join(regions)}): "
                "name its Region, or use an alias or a multi-Region key",
            )


def _check_pair(cert_name: str, cert: str | None, key_name: str, key: str | None) -> None:
    """A certificate without its key (or the reverse) is a half-done TLS setup: refuse it."""
    if bool(cert) != bool(key):
        missing, given = (key_name, cert_name) if cert else (cert_name, key_name)
        raise ConfigError(missing, f"must be set together with {given}")
