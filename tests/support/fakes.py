"""Fakes for unit tests of the core and of key management (no network)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from typing import Any

from codec_grpc import errors
from codec_grpc.core.envelope import DataKey
from codec_grpc.keys import CurrentKeyInfo
from codec_grpc.kms import GeneratedKey

FAKE_ARN = "arn:aws:kms:us-east-1:111122223333:key/fake"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeProvider:
    """A key provider that 'wraps' keys reversibly, counts calls, and can be slowed or broken."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: Counter[str] = Counter()
        self.delay = delay
        self.fail_with: errors.KeyProviderError | None = None
        self._serial = 0
        self._lock = threading.Lock()

    def _key_for(self, blob: bytes) -> bytes:
        return hashlib.sha256(b"fake-kms" + blob).digest()

    def generate_data_key(self, key_id: str, namespace: str | None) -> GeneratedKey:
        with self._lock:
            self.calls["GenerateDataKey"] += 1
            self._serial += 1
            blob = f"{key_id}|{namespace}|{self._serial}".encode()
        time.sleep(self.delay)
        if self.fail_with is not None:
            raise self.fail_with
        return GeneratedKey(plaintext=self._key_for(blob), encrypted_key=blob, key_arn=f"{FAKE_ARN}/{key_id}")

    def key_arn(self, key_id: str) -> str:
        with self._lock:
            self.calls["DescribeKey"] += 1
        if self.fail_with is not None:
            raise self.fail_with
        return f"{FAKE_ARN}/{key_id}"

    def decrypt_data_key(self, encrypted_key: bytes, key_arn: str, namespace: str | None) -> bytes:
        with self._lock:
            self.calls["Decrypt"] += 1
        time.sleep(self.delay)
        if self.fail_with is not None:
            raise self.fail_with
        alias, bound, _ = encrypted_key.decode().split("|")
        if bound != str(namespace) or key_arn != f"{FAKE_ARN}/{alias}":
            raise errors.KmsInvalidCiphertextError("fake KMS: context or key id does not match")
        return self._key_for(encrypted_key)


class FakeRegionalProvider:
    """A key provider in several Regions (a ``RegionalKeyProvider``): a multi-Region key's data keys
    unwrap in every Region, a single-Region key's only in the Region that made them, as in KMS.

    Every call is recorded as (operation, Region, key id as sent). A Region in ``down`` is
    unavailable; one in ``refusing`` answers that error; (key id, Region) pairs in ``paused_keys``
    are paused (as KMS_FAIL_FAST_SECONDS pauses them). ``aliases`` maps alias names to key ids.
    """

    ACCOUNT = "111122223333"

    def __init__(self, regions: tuple[str, ...] = ("us-east-1", "us-west-2")) -> None:
        self.regions = regions
        self.calls: list[tuple[str, str, str]] = []
        self.down: set[str] = set()
        self.refusing: dict[str, errors.KeyProviderError] = {}
        self.paused_keys: set[tuple[str, str]] = set()
        self.aliases = {"alias/default": "mrk-1", "alias/single": "1234abcd"}
        self._serial = 0
        self._lock = threading.Lock()

    def arn(self, key_id: str, region: str) -> str:
        return f"arn:aws:kms:{region}:{self.ACCOUNT}:key/{key_id}"

    def generate_data_key(self, key_id: str, namespace: str | None, region: str) -> GeneratedKey:
        self._call("GenerateDataKey", region, key_id)
        with self._lock:
            self._serial += 1
            blob = f"{self._key_id(key_id)}|{region}|{namespace}|{self._serial}".encode()
        return GeneratedKey(
            plaintext=hashlib.sha256(blob).digest(), encrypted_key=blob, key_arn=self.arn(self._key_id(key_id), region)
        )

    def decrypt_data_key(self, encrypted_key: bytes, key_arn: str, namespace: str | None) -> bytes:
        region = key_arn.split(":")[3]
        self._call("Decrypt", region, key_arn)
        key_id, made_in, bound, _ = encrypted_key.decode().split("|")
        if bound != str(namespace) or key_arn != self.arn(key_id, region):
            raise errors.KmsInvalidCiphertextError(f"fake KMS in {region}: context or key id does not match")
        if made_in != region and not key_id.startswith("mrk-"):
            raise errors.KmsInvalidCiphertextError(f"fake KMS in {region}: {key_id} is another Region's key")
        return hashlib.sha256(encrypted_key).digest()

    def key_arn(self, key_id: str, region: str) -> str:
        self._call("DescribeKey", region, key_id)
        return self.arn(self._key_id(key_id), region)

    def paused(self, key_id: str, region: str) -> bool:
        return (key_id, region) in self.paused_keys

    def asked(self, operation: str) -> list[str]:
        """The Regions asked for ``operation``, in order."""
        return [region for op, region, _ in self.calls if op == operation]

    def _key_id(self, key_id: str) -> str:
        if key_id.startswith("alias/"):
            return self.aliases[key_id]
        return key_id.rpartition("/")[2]

    def _call(self, operation: str, region: str, key_id: str) -> None:
        with self._lock:
            self.calls.append((operation, region, key_id))
        if region in self.down:
            raise errors.KmsUnavailableError(f"KMS {operation} with key {key_id} in {region}: cannot reach KMS (fake)")
        if region in self.refusing:
            raise self.refusing[region]


class StaticKeys:
    """A KeySource with fixed keys per namespace binding, for codec unit tests."""

    def __init__(self) -> None:
        self.keys: dict[str | None, DataKey] = {}
        self.requests: list[tuple[str, str | None, int]] = []
        self.unwrapped: list[str | None] = []  # the binding of every decryption_key call

    def _key(self, binding: str | None) -> DataKey:
        if binding not in self.keys:
            material = hashlib.sha256(f"static|{binding}".encode()).digest()
            self.keys[binding] = DataKey(material, FAKE_ARN, f"edk|{binding}".encode(), binding)
        return self.keys[binding]

    def encryption_key(self, namespace: str, binding: str | None, count: int) -> DataKey:
        self.requests.append((namespace, binding, count))
        return self._key(binding)

    def decryption_key(self, key_arn: str, encrypted_key: bytes, binding: str | None) -> DataKey:
        self.unwrapped.append(binding)
        key = self._key(binding)
        if key_arn != key.key_id or encrypted_key != key.encrypted_key:
            raise errors.KmsInvalidCiphertextError("static keys: unknown data key")
        return key


def current_key(
    alias: str, namespace: str | None, *, age: float, expires_in: float, expired: bool, encryptions: int
) -> CurrentKeyInfo:
    """What key management shows of a current key, for tests of what is built from it."""
    return CurrentKeyInfo(
        alias=alias,
        namespace=namespace,
        key_arn="arn:aws:kms:x",
        age=age,
        expires_in=expires_in,
        expired=expired,
        overdue=False,
        encryptions=encryptions,
        next_ready=False,
    )


class OneKey:
    """A key source holding one data key: the test vectors' codec (any other key asked for fails)."""

    def __init__(self, key: DataKey) -> None:
        self.key = key

    def encryption_key(self, namespace: str, binding: str | None, count: int) -> DataKey:
        return self.key

    def decryption_key(self, key_arn: str, encrypted_key: bytes, binding: str | None) -> DataKey:
        assert (key_arn, encrypted_key, binding) == (self.key.key_id, self.key.encrypted_key, self.key.namespace)
        return self.key


def vector_key(vector: dict[str, Any]) -> DataKey:
    """The data key of a test vector (tests/vectors/format_v*.json)."""
    return DataKey(
        bytes.fromhex(vector["data_key"]),
        vector["key_id"],
        bytes.fromhex(vector["encrypted_data_key"]),
        vector["namespace"],
    )
