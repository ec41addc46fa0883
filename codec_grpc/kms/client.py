"""The boto3 KMS client: built once at start-up, injected into the provider.

Credentials come from boto3's default chain (environment, profile, IRSA, instance
role); retries and timeouts are botocore's, from the settings given here.
"""

from __future__ import annotations

from typing import Any, cast

import boto3
import botocore.config


def kms_client(
    *,
    region: str | None,
    endpoint_url: str | None,
    connect_timeout: float,
    read_timeout: float,
    retry_mode: str,
    max_attempts: int,
    **overrides: Any,
) -> Any:
    """A boto3 KMS client; ``overrides`` are further ``client()`` arguments (they win)."""
    retry_config = botocore.config.Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries=cast(Any, {"mode": retry_mode, "total_max_attempts": max_attempts}),
    )
    params: dict[str, Any] = {"config": retry_config}
    if region:
        params["region_name"] = region
    if endpoint_url:
        params["endpoint_url"] = endpoint_url
    params.update(overrides)
    return boto3.session.Session().client("kms", **params)


def aws_credentials_found() -> bool:
    """Whether boto3's default chain finds credentials (without calling AWS)."""
    return boto3.session.Session().get_credentials() is not None
