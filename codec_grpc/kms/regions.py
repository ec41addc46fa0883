"""KMS in several Regions (KMS_REGIONS): one boto3 client and one key provider per Region.

This module only sends each call to the provider of its Region: a Decrypt to the Region of
the key ARN it names, a GenerateDataKey or DescribeKey to the Region it is asked for. Which
Regions to ask, in which order, and when to ask another one is key management's decision
(``codec_grpc.keys.regions``), made with what this module tells it (:meth:`paused`).

Each Region's provider keeps its own fail-fast pauses (so a pause is per Region and master
key) and its own counters; the spend limits (KMS_DECRYPT_RATE, KMS_MAX_CONCURRENT_CALLS) are
the process's, one :class:`~codec_grpc.kms.provider.KmsLimiter` shared by every Region.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping

from codec_grpc import errors
from codec_grpc.kms.provider import GeneratedKey, KmsCallStats, KmsKeyProvider


def arn_region(key_arn: str) -> str:
    """The Region part of an ARN (``arn:aws:kms:REGION:…``); empty when ``key_arn`` is not an ARN."""
    parts = key_arn.split(":", 5)
    return parts[3] if len(parts) == 6 and parts[0] == "arn" else ""


class RegionalKmsKeyProvider:
    """The key providers of the Regions of KMS_REGIONS, in that order. Thread-safe.

    Implements ``codec_grpc.keys.RegionalKeyProvider`` (structurally).
    """

    def __init__(self, providers: Mapping[str, KmsKeyProvider]) -> None:
        if not providers:
            raise ValueError("at least one Region is needed")
        limiters = {id(provider.limiter) for provider in providers.values()}
        if len(limiters) != 1:
            raise ValueError("the providers of every Region must share one KmsLimiter (the process's limits)")
        self._providers = dict(providers)
        self.regions = tuple(providers)

    def generate_data_key(self, key_id: str, namespace: str | None, region: str) -> GeneratedKey:
        """A new data key under ``key_id`` as ``region`` names it (alias, key id or ARN)."""
        return self._in(region, key_id).generate_data_key(key_id, namespace)

    def decrypt_data_key(self, encrypted_key: bytes, key_arn: str, namespace: str | None) -> bytes:
        """Unwrap a data key through KMS in the Region of ``key_arn``."""
        return self._in(arn_region(key_arn), key_arn).decrypt_data_key(encrypted_key, key_arn, namespace)

    def key_arn(self, key_id: str, region: str) -> str:
        """The ARN of the master key ``key_id`` names in ``region`` now (DescribeKey there)."""
        return self._in(region, key_id).key_arn(key_id)

    def paused(self, key_id: str, region: str) -> bool:
        """Whether KMS in ``region`` was found unavailable for ``key_id`` moments ago (KMS_FAIL_FAST_SECONDS)."""
        return self._in(region, key_id).paused(key_id)

    def stats(self) -> KmsCallStats:
        """The sum over the Regions, and each Region's own in ``regions``."""
        regions = {region: provider.stats() for region, provider in self._providers.items()}
        calls: Counter[tuple[str, str]] = Counter()
        seconds: defaultdict[str, float] = defaultdict(float)
        for stats in regions.values():
            calls.update(stats.calls)
            for operation, spent in stats.seconds.items():
                seconds[operation] += spent
        return KmsCallStats(
            calls=dict(calls),
            seconds=dict(seconds),
            short_circuited=sum(stats.short_circuited for stats in regions.values()),
            limited=next(iter(regions.values())).limited,  # one limiter for all: counted once
            paused=sum(stats.paused for stats in regions.values()),
            last_error=next((stats.last_error for stats in regions.values() if stats.last_error), ""),
            regions=regions,
        )

    def _in(self, region: str, key_id: str) -> KmsKeyProvider:
        provider = self._providers.get(region)
        if provider is None:  # key management refuses these before asking: a caller's mistake
            raise errors.KeyNotAllowedError(
                f"KMS key {key_id} is not in one of KMS_REGIONS ({', '.join(self.regions)}); not sent to KMS"
            )
        return provider
