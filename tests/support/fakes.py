"""Fakes for unit tests of the core and of key management (no network)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter

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
