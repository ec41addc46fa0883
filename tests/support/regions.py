"""Two KMS Regions on loopback, for KMS_REGIONS: multi-Region keys and an endpoint per Region.

* ``mrk_kms_endpoint``: moto's KMS server in its own process, able to unwrap data keys of
  multi-Region keys (:mod:`tests.support.mrk_moto`), one per test session. It holds every
  Region, as KMS's replication does: a replica made with ReplicateKey has its primary's key
  material. (Two ThreadedMotoServers in one process would share moto's state as well; two
  separate moto processes share nothing, so a replica could not decrypt across them.)
* ``two_regions``: an endpoint per Region in front of it, each a :class:`KmsProxy` that answers
  only requests signed for its Region and can go down (connections refused) and come back, or
  throttle, hang, answer 5xx or refuse; and helpers to make multi-Region and single-Region keys.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from tests.support.fixtures import TEST_CREDENTIALS, loopback_server
from tests.support.kms_proxy import KmsProxy
from tests.support.paths import ROOT

EAST, WEST = "us-east-1", "us-west-2"


@pytest.fixture(scope="session")
def mrk_kms_endpoint() -> Iterator[str]:
    yield from loopback_server([sys.executable, "-m", "tests.support.mrk_moto"], cwd=ROOT)


def region_client(endpoint: str, region: str) -> Any:
    session: Any = boto3.session.Session()
    return session.client("kms", endpoint_url=endpoint, region_name=region, **TEST_CREDENTIALS)


@dataclass
class TwoRegions:
    """us-east-1 and us-west-2 (KMS_REGIONS in that order), each behind its own endpoint (``proxies``).
    ``admin`` clients reach moto directly, past the proxies' faults and counts, to set keys up."""

    endpoint: str
    proxies: dict[str, KmsProxy]
    admin: dict[str, Any] = field(default_factory=dict)

    def settings(self, **extra: Any) -> dict[str, Any]:
        """Codec settings for both Regions through their endpoints (AWS_ENDPOINT_URL_KMS is not used)."""
        endpoints = ",".join(f"{region}={proxy.url}" for region, proxy in self.proxies.items())
        return {"KMS_REGIONS": f"{EAST},{WEST}", "KMS_REGION_ENDPOINTS": endpoints, **extra}

    def multi_region_key(self) -> tuple[str, dict[str, str]]:
        """A multi-Region key made in us-east-1 and replicated to us-west-2, with a fresh alias in both
        Regions (each aliasing its own Region's key); returns the alias and the key's ARN per Region."""
        alias = f"alias/mrk-{uuid.uuid4().hex[:12]}"
        key = self.admin[EAST].create_key(Description="codec test multi-Region key", MultiRegion=True)["KeyMetadata"]
        replica = self.admin[EAST].replicate_key(KeyId=key["KeyId"], ReplicaRegion=WEST)["ReplicaKeyMetadata"]
        self._alias_everywhere(alias, key["KeyId"])
        return alias, {EAST: key["Arn"], WEST: replica["Arn"]}

    def single_region_key(self, region: str = EAST) -> tuple[str, str]:
        """An ordinary (single-Region) key in ``region`` with a fresh alias there; (alias, ARN)."""
        alias = f"alias/single-{uuid.uuid4().hex[:12]}"
        key = self.admin[region].create_key(Description="codec test single-Region key")["KeyMetadata"]
        self.admin[region].create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
        return alias, key["Arn"]

    def seen(self, region: str, operation: str) -> int:
        return self.proxies[region].seen(operation)

    def _alias_everywhere(self, alias: str, key_id: str) -> None:
        for client in self.admin.values():
            # moto's replicas share their primary's aliases: made in one Region, the alias is in both.
            with contextlib.suppress(client.exceptions.AlreadyExistsException):
                client.create_alias(AliasName=alias, TargetKeyId=key_id)


@pytest.fixture
def two_regions(mrk_kms_endpoint: str) -> Iterator[TwoRegions]:
    proxies = {region: KmsProxy(mrk_kms_endpoint, region=region).start() for region in (EAST, WEST)}
    admin = {region: region_client(mrk_kms_endpoint, region) for region in (EAST, WEST)}
    yield TwoRegions(mrk_kms_endpoint, proxies, admin)
    for proxy in proxies.values():
        proxy.stop()
