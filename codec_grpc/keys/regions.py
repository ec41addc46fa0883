"""Multi-Region KMS keys (KMS_REGIONS): which Region each KMS call goes to.

AWS KMS multi-Region keys (key ids ``mrk-…``) are related keys in several Regions sharing one key
id and one key material: a data key wrapped under ``arn:aws:kms:us-east-1:111122223333:key/mrk-1``
unwraps with ``arn:aws:kms:us-west-2:111122223333:key/mrk-1``, its replica (the encryption context
must match, as always). So, with KMS_REGIONS (:class:`RegionRouter`):

* **Encode** generates data keys in the first Region of KMS_REGIONS where the master key is not
  paused (KMS found unavailable there less than KMS_FAIL_FAST_SECONDS ago), and on an availability
  failure (unreachable, timing out, throttling, 5xx) in the next. A data key records the ARN of the
  Region that made it.
* **Decode** unwraps in the Region of the payload's key ARN first; for a multi-Region key, on an
  availability failure, with the same key id in each other Region of KMS_REGIONS in order, each ARN
  only when the allowlist allows it. A single-Region key never falls back.
* A refusal (access denied, a disabled key, a data key KMS cannot unwrap) is an answer, never a
  reason to ask another Region: every replica holds the same key material, and a refusal must not
  become a way to send a payload's key elsewhere. After an outage in an earlier Region, though, a
  refusal in a later one leaves the outage as the error (the outage grace applies to it).
* A payload naming a key in a Region outside KMS_REGIONS is refused before any KMS call.

Without KMS_REGIONS, :class:`OneRegion` hands every call to the provider as it comes.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

from codec_grpc import errors
from codec_grpc.keys.provider import KeyProvider, RegionalKeyProvider, WrappedKey

log = logging.getLogger(__name__)

MULTI_REGION_PREFIX = "mrk-"
_ARN = re.compile(
    r"(?P<head>arn:aws[a-z-]*:kms:)(?P<region>[a-z0-9-]+)(?P<tail>:[0-9]{12}:(?P<kind>key|alias)/(?P<name>\S+))"
)
# A master key as one Region names it (alias, key id or ARN), and that Region (None: the only one).
Target = tuple[str, str | None]
# Told of every call another Region served: (operation, the Region that served it).
FallbackObserver = Callable[[str, str], None]


def arn_region(key_id: str) -> str | None:
    """The Region of a KMS ARN; None for an alias name or a bare key id."""
    match = _ARN.fullmatch(key_id)
    return match["region"] if match else None


def is_multi_region(key_id: str) -> bool:
    """Whether ``key_id`` (a key ARN or a bare key id) names a multi-Region key (``mrk-…``)."""
    match = _ARN.fullmatch(key_id)
    if match is None:
        return key_id.startswith(MULTI_REGION_PREFIX)
    return match["kind"] == "key" and match["name"].startswith(MULTI_REGION_PREFIX)


def in_region(key_id: str, region: str) -> str | None:
    """The configured master key ``key_id`` as ``region`` names it: alias names and bare key ids as they
    are (each Region resolves them itself); the ARN of an alias or a multi-Region key with ``region`` in
    it; None for the ARN of a single-Region key of another Region, which has no counterpart there."""
    match = _ARN.fullmatch(key_id)
    if match is None or match["region"] == region:
        return key_id
    if match["kind"] == "alias" or is_multi_region(key_id):
        return f"{match['head']}{region}{match['tail']}"
    return None


class Routes(Protocol):
    """Where key management's KMS calls go: :class:`OneRegion` or :class:`RegionRouter`."""

    def targets(self, master_key: str) -> list[Target]: ...

    def generate(self, master_key: str, namespace: str | None) -> WrappedKey: ...

    def unwrap(self, encrypted_key: bytes, key_arn: str, namespace: str | None) -> bytes: ...

    def key_arn(self, target: Target) -> str: ...

    def refusal(self, key_arn: str) -> errors.KeyNotAllowedError | None: ...

    def fallbacks(self) -> dict[tuple[str, str], int]: ...


def routes_for(
    provider: KeyProvider | RegionalKeyProvider,
    allowed: Callable[[str], bool],
    observer: FallbackObserver | None = None,
) -> Routes:
    """A :class:`RegionRouter` for a provider with Regions, else :class:`OneRegion`."""
    if isinstance(provider, RegionalKeyProvider):
        return RegionRouter(provider, allowed, observer)
    return OneRegion(provider)


class OneRegion:
    """Every call to the one provider, as it comes (no KMS_REGIONS)."""

    def __init__(self, provider: KeyProvider) -> None:
        self._provider = provider

    def targets(self, master_key: str) -> list[Target]:
        return [(master_key, None)]

    def generate(self, master_key: str, namespace: str | None) -> WrappedKey:
        return self._provider.generate_data_key(master_key, namespace)

    def unwrap(self, encrypted_key: bytes, key_arn: str, namespace: str | None) -> bytes:
        return self._provider.decrypt_data_key(encrypted_key, key_arn, namespace)

    def key_arn(self, target: Target) -> str:
        return self._provider.key_arn(target[0])

    def refusal(self, key_arn: str) -> errors.KeyNotAllowedError | None:
        return None

    def fallbacks(self) -> dict[tuple[str, str], int]:
        return {}


class RegionRouter:
    """The Regions of KMS_REGIONS, tried in order (module docstring). ``allowed`` is the allowlist's
    test, applied to every Region's ARN before it is sent. Thread-safe."""

    def __init__(
        self,
        provider: RegionalKeyProvider,
        allowed: Callable[[str], bool],
        observer: FallbackObserver | None = None,
    ) -> None:
        self.regions = tuple(provider.regions)
        if not self.regions:
            raise ValueError("a RegionRouter needs at least one Region")
        self._provider = provider
        self._allowed = allowed
        self._observer = observer
        self._lock = threading.Lock()
        self._fallbacks: Counter[tuple[str, str]] = Counter()

    def targets(self, master_key: str) -> list[Target]:
        """The master key in each Region that has it, in the order of KMS_REGIONS."""
        named = ((in_region(master_key, region), region) for region in self.regions)
        return [(key_id, region) for key_id, region in named if key_id is not None]

    def generate(self, master_key: str, namespace: str | None) -> WrappedKey:
        targets = self.targets(master_key)
        if not targets:
            raise errors.KmsNotFoundError(
                f"master key {master_key} is a single-Region key of none of KMS_REGIONS ({', '.join(self.regions)})"
            )
        healthy = [(key_id, region) for key_id, region in targets if not self._provider.paused(key_id, region or "")]
        # Every Region paused: ask them all in order anyway (GenerateDataKey is never refused unasked).
        tries = healthy or targets
        paused = [region for key_id, region in targets if (key_id, region) not in tries]
        skipped = [f"{region}: not asked, KMS was unavailable there moments ago" for region in paused]
        failures: list[errors.KeyProviderError] = []
        for key_id, region in tries:
            try:
                generated = self._provider.generate_data_key(key_id, namespace, region or "")
            except errors.KmsUnavailableError as exc:
                failures.append(exc)
                continue
            except errors.KeyProviderError as exc:
                if not failures:
                    raise
                failures.append(exc)
                break
            if region != targets[0][1]:
                self._fell_back("GenerateDataKey", master_key, region or "", skipped + [str(f) for f in failures])
            return generated
        raise _unavailable(failures)

    def unwrap(self, encrypted_key: bytes, key_arn: str, namespace: str | None) -> bytes:
        replicas = self.replicas(key_arn)
        failures: list[errors.KeyProviderError] = []
        for arn in (key_arn, *replicas):
            try:
                plaintext = self._provider.decrypt_data_key(encrypted_key, arn, namespace)
            except errors.KmsUnavailableError as exc:
                failures.append(exc)
                continue
            except errors.KeyProviderError as exc:
                if not failures:
                    raise
                failures.append(exc)
                break
            if arn != key_arn:
                self._fell_back("Decrypt", key_arn, arn_region(arn) or "", [str(failure) for failure in failures])
            return plaintext
        raise _unavailable(failures, self._no_fallback(key_arn, replicas))

    def replicas(self, key_arn: str) -> list[str]:
        """The ARNs of a multi-Region key in the other Regions of KMS_REGIONS that the allowlist allows."""
        if not is_multi_region(key_arn):
            return []
        own = arn_region(key_arn)
        named = (in_region(key_arn, region) for region in self.regions if region != own)
        return [arn for arn in named if arn is not None and self._allowed(arn)]

    def key_arn(self, target: Target) -> str:
        key_id, region = target
        return self._provider.key_arn(key_id, region or "")

    def refusal(self, key_arn: str) -> errors.KeyNotAllowedError | None:
        """The error for a key ARN of a Region outside KMS_REGIONS (None: in one of them)."""
        region = arn_region(key_arn)
        if region in self.regions:
            return None
        return errors.KeyNotAllowedError(
            f"KMS key {key_arn} is in Region {region}, not one of KMS_REGIONS ({', '.join(self.regions)}); "
            "not sent to KMS"
        )

    def fallbacks(self) -> dict[tuple[str, str], int]:
        """Calls served by another Region than the first choice, by (operation, Region that served)."""
        with self._lock:
            return dict(self._fallbacks)

    def _no_fallback(self, key_arn: str, replicas: Sequence[str]) -> str:
        """Why no other Region was asked, when none was (said after the error)."""
        if replicas or len(self.regions) < 2:
            return ""
        if not is_multi_region(key_arn):
            return f"; {key_arn} is a single-Region key: no other Region can unwrap its data keys"
        return (
            "; its replicas in the other Regions of KMS_REGIONS are not allowed (neither configured master keys "
            "nor in DECRYPT_KEY_ARNS), so no other Region was asked"
        )

    def _fell_back(self, operation: str, key: str, region: str, reasons: Sequence[str]) -> None:
        with self._lock:
            self._fallbacks[(operation, region)] += 1
        if self._observer is not None:
            self._observer(operation, region)
        log.warning(
            "KMS %s for %s served in %s: %s",
            operation,
            key,
            region,
            "; then ".join(reasons),
            extra={"event": "kms_region_fallback", "operation": operation, "region": region},
        )


def _unavailable(failures: Sequence[errors.KeyProviderError], note: str = "") -> errors.KmsUnavailableError:
    """Every Region tried failed: KMS is unavailable (an outage came first), saying what each answered."""
    if len(failures) == 1 and isinstance(failures[0], errors.KmsUnavailableError) and not note:
        return failures[0]
    return errors.KmsUnavailableError("; then ".join(map(str, failures)) + note)
