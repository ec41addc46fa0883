"""KMS key provider: the only module that talks to AWS KMS.

The boto3 KMS client is created once (:func:`codec_grpc.kms.client.kms_client`,
called by the wiring) and injected; its retries and timeouts are botocore's. Every botocore error
is translated here into the service's own errors (``codec_grpc.errors``), whose
messages name only the key id. KMS answers are checked before use.

Fail fast: a Decrypt against an unreachable KMS costs up to KMS_MAX_ATTEMPTS ×
(KMS_CONNECT_TIMEOUT or KMS_READ_TIMEOUT), 15 s with the defaults when KMS hangs:
too long for a person waiting in the Temporal UI, and every such call holds a
server thread. So once a call with a master key found KMS unavailable (unreachable,
timing out, throttling, 5xx: never a refusal of the key or the data key), Decrypt
calls with that master key fail at once, without a request, for ``fail_fast``
seconds; the first one after that tries KMS again, and any successful call with the
key ends the pause early (the background data-key renewal keeps probing). The pause
is per master key, so a failure provoked with one key does not stop the others.
GenerateDataKey is never short-circuited: the outage grace and the renewal's own
backoff govern it.

Spend is bounded: at most ``max_concurrent`` KMS calls at once (a call waits up to
``queue_timeout`` for its turn), and Decrypt calls at most ``decrypt_rate`` per second
with bursts of ``decrypt_burst`` (a token bucket). A call over either limit is refused
without a request, as :class:`~codec_grpc.errors.KmsUnavailableError` saying when to retry.
The limits are the process's: with KMS_REGIONS, one :class:`KmsLimiter` is shared by the
provider of every Region (:mod:`codec_grpc.kms.regions`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import botocore.exceptions

from codec_grpc import errors

# GenerateDataKey is asked for KeySpec AES_256: a plaintext of any other length is refused.
KEY_SIZE = 32
NAMESPACE_CONTEXT_KEY = "temporal-namespace"
# Told of every KMS call: (operation, outcome, seconds). How metrics see KMS without this module knowing them.
KmsObserver = Callable[[str, str, float], None]
# Told of every call refused without a request by the fail-fast pause: (operation,).
ShortCircuitObserver = Callable[[str], None]

_UNAVAILABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "LimitExceededException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "KMSInternalException",
        "InternalFailure",
        "InternalError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "DependencyTimeoutException",
        "KeyUnavailableException",
        "CustomKeyStoreInvalidStateException",
    }
)
_ACCESS_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "MissingAuthenticationToken",
    }
)
_STATE_CODES = frozenset({"DisabledException", "KMSInvalidStateException", "InvalidKeyUsageException"})
_NOT_FOUND_CODES = frozenset({"NotFoundException"})
_CIPHERTEXT_CODES = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})
# On Decrypt the key id and the encrypted data key come from the payload: when KMS finds no such key,
# or finds them malformed (AWS checks lengths and ARN syntax), the payload is at fault, not the server.
_PAYLOAD_FAULT_CODES = frozenset({"NotFoundException", "ValidationException", "InvalidArnException"})
_NETWORK_ERRORS = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.HTTPClientError,
)


def encryption_context(namespace: str | None) -> dict[str, str]:
    """The KMS encryption context for data keys bound to ``namespace`` (None: unbound)."""
    return {} if namespace is None else {NAMESPACE_CONTEXT_KEY: namespace}


@dataclass(frozen=True)
class GeneratedKey:
    """A data key fresh from GenerateDataKey. ``plaintext`` is never shown by repr."""

    plaintext: bytes = field(repr=False)
    encrypted_key: bytes
    key_arn: str


@dataclass(frozen=True)
class KmsLimits:
    """What KMS spend one process may cause: 0 turns a limit off."""

    decrypt_rate: float = 0.0  # Decrypt calls per second, sustained
    decrypt_burst: int = 0  # Decrypt calls at once after a quiet spell (default: one second's rate)
    max_concurrent: int = 0  # KMS calls in flight at once
    queue_timeout: float = 1.0  # seconds a call waits for its turn before it is refused


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up. Thread-safe."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate} and {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there will be."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate


class KmsLimiter:
    """The KMS spend limits of one process (:class:`KmsLimits`): a Decrypt token bucket and a bound on
    calls in flight, shared by every provider given it. Thread-safe."""

    def __init__(
        self,
        limits: KmsLimits,
        clock: Callable[[], float] = time.monotonic,
        observer: ShortCircuitObserver | None = None,
    ) -> None:
        self.limits = limits
        self._observer = observer
        burst = limits.decrypt_burst or max(1, round(limits.decrypt_rate))
        self._decrypts = TokenBucket(limits.decrypt_rate, burst, clock) if limits.decrypt_rate > 0 else None
        self._slots = threading.BoundedSemaphore(limits.max_concurrent) if limits.max_concurrent > 0 else None
        self._lock = threading.Lock()
        self.limited = 0  # calls refused without a request

    def take_token(self, operation: str, where: str) -> None:
        """Spend a Decrypt token, or refuse the call (``where`` names it) without a request."""
        if operation != "Decrypt" or self._decrypts is None:
            return
        wait = self._decrypts.take()
        if wait > 0:
            self._refuse(
                operation,
                f"{where}: not sent, this server's Decrypt budget is spent "
                f"(KMS_DECRYPT_RATE={self._decrypts.rate:g}/s, KMS_DECRYPT_BURST={self._decrypts.burst}); "
                f"retry in {math.ceil(wait)}s",
            )

    def acquire(self, operation: str, where: str) -> None:
        """Wait up to ``queue_timeout`` for a slot in flight, or refuse the call without a request."""
        if self._slots is not None and not self._slots.acquire(timeout=self.limits.queue_timeout):
            self._refuse(
                operation,
                f"{where}: not sent, {self.limits.max_concurrent} KMS calls are "
                f"in flight already (KMS_MAX_CONCURRENT_CALLS); retry in 1s",
            )

    def release(self) -> None:
        if self._slots is not None:
            self._slots.release()

    def _refuse(self, operation: str, message: str) -> None:
        with self._lock:
            self.limited += 1
        if self._observer is not None:
            self._observer(operation)
        raise errors.KmsUnavailableError(message)


@dataclass(frozen=True)
class KmsCallStats:
    """Counts of KMS calls by operation and outcome, and their total duration; with KMS_REGIONS, the
    same per Region in ``regions`` (the top level sums them)."""

    calls: Mapping[tuple[str, str], int]
    seconds: Mapping[str, float]
    short_circuited: int = 0  # Decrypt calls refused without a request (fail fast)
    limited: int = 0  # calls refused without a request by the rate or concurrency limit
    paused: int = 0  # master keys (or aliases) in their fail-fast pause now
    last_error: str = ""  # the last failed call's error
    regions: Mapping[str, KmsCallStats] = field(default_factory=dict)

    def count(self, operation: str, outcome: str | None = None) -> int:
        return sum(n for (op, out), n in self.calls.items() if op == operation and outcome in (None, out))

    @property
    def errors(self) -> int:
        return sum(n for (_, out), n in self.calls.items() if out != "success")


class KmsKeyProvider:
    """Generates and unwraps data keys through an injected boto3 KMS client. Thread-safe.

    Implements ``codec_grpc.keys.KeyProvider`` (structurally: this layer imports nothing above it).
    ``region`` names the client's Region in messages about calls whose key id does not (an alias),
    when the provider is one Region's of several (:mod:`codec_grpc.kms.regions`). ``limiter``
    shares another provider's spend limits; without it ``limits`` makes this provider's own.
    """

    def __init__(
        self,
        client: Any,
        observer: KmsObserver | None = None,
        fail_fast: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        short_circuit_observer: ShortCircuitObserver | None = None,
        *,
        limits: KmsLimits | None = None,
        limited_observer: ShortCircuitObserver | None = None,
        region: str = "",
        limiter: KmsLimiter | None = None,
    ) -> None:
        if fail_fast < 0:
            raise ValueError(f"fail_fast must be 0 or more, got {fail_fast}")
        self._client = client
        self._observer = observer
        self._short_circuit_observer = short_circuit_observer
        self._fail_fast = fail_fast
        self._clock = clock
        self.region = region
        # Per master key: when its fail-fast pause ends, and why it began. Keys reach here only once
        # allowed (configured, or DECRYPT_KEY_ARNS), so these stay as small as the configuration.
        self._unavailable_until: dict[str, float] = {}
        self._last_unavailable: dict[str, str] = {}
        self._last_error = ""
        self._short_circuited = 0
        self.limiter = limiter or KmsLimiter(limits or KmsLimits(), clock, limited_observer)
        self._lock = threading.Lock()
        self._calls: Counter[tuple[str, str]] = Counter()
        self._seconds: dict[str, float] = defaultdict(float)

    def generate_data_key(self, key_id: str, namespace: str | None) -> GeneratedKey:
        """Ask KMS for a new AES-256 data key under ``key_id`` (an alias, key id or ARN)."""
        answer = self._call(
            "GenerateDataKey",
            key_id,
            KeyId=key_id,
            KeySpec="AES_256",
            EncryptionContext=encryption_context(namespace),
        )
        plaintext, blob, arn = answer.get("Plaintext"), answer.get("CiphertextBlob"), answer.get("KeyId")
        if not isinstance(plaintext, bytes) or len(plaintext) != KEY_SIZE:
            raise errors.KmsResponseError(f"KMS GenerateDataKey for {key_id} returned a key of the wrong length")
        if not isinstance(blob, bytes) or not blob or not isinstance(arn, str) or not arn:
            raise errors.KmsResponseError(f"KMS GenerateDataKey for {key_id} returned an incomplete answer")
        return GeneratedKey(plaintext=plaintext, encrypted_key=blob, key_arn=arn)

    def decrypt_data_key(self, encrypted_key: bytes, key_arn: str, namespace: str | None) -> bytes:
        """Unwrap a data key that KMS key ``key_arn`` encrypted for ``namespace``."""
        answer = self._call(
            "Decrypt",
            key_arn,
            CiphertextBlob=encrypted_key,
            KeyId=key_arn,
            EncryptionContext=encryption_context(namespace),
        )
        plaintext, answered_arn = answer.get("Plaintext"), answer.get("KeyId")
        if answered_arn != key_arn:
            raise errors.KmsInvalidCiphertextError(f"KMS unwrapped the data key with a key other than {key_arn}")
        if not isinstance(plaintext, bytes) or len(plaintext) != KEY_SIZE:
            raise errors.KmsResponseError(f"KMS Decrypt under {key_arn} returned a key of the wrong length")
        return plaintext

    def key_arn(self, key_id: str) -> str:
        """The ARN of the master key ``key_id`` (an alias, key id or ARN) names now (DescribeKey)."""
        answer = self._call("DescribeKey", key_id, KeyId=key_id)
        arn = answer.get("KeyMetadata", {}).get("Arn")
        if not isinstance(arn, str) or not arn:
            raise errors.KmsResponseError(f"KMS DescribeKey for {key_id} returned no ARN")
        return arn

    def paused(self, key_id: str) -> bool:
        """Whether KMS was found unavailable for ``key_id`` less than ``fail_fast`` seconds ago."""
        with self._lock:
            return self._unavailable_until.get(key_id, 0.0) > self._clock()

    def stats(self) -> KmsCallStats:
        with self._lock:
            now = self._clock()
            return KmsCallStats(
                calls=dict(self._calls),
                seconds=dict(self._seconds),
                short_circuited=self._short_circuited,
                limited=self.limiter.limited,
                paused=sum(1 for until in self._unavailable_until.values() if until > now),
                last_error=self._last_error,
            )

    def _where(self, operation: str, key_id: str) -> str:
        """How messages name a call: its operation and key, and the Region when the key id does not say."""
        if self.region and not key_id.startswith("arn:"):
            return f"KMS {operation} with key {key_id} in {self.region}"
        return f"KMS {operation} with key {key_id}"

    def _short_circuit(self, operation: str, key_id: str) -> None:
        """Refuse a Decrypt at once while KMS was found unavailable for its master key less than
        ``fail_fast`` seconds ago."""
        if operation != "Decrypt":
            return
        with self._lock:
            left = self._unavailable_until.get(key_id, 0.0) - self._clock()
            if left <= 0:
                return
            self._short_circuited += 1
            last = self._last_unavailable.get(key_id, "")
        if self._short_circuit_observer is not None:
            self._short_circuit_observer(operation)
        raise errors.KmsUnavailableError(
            f"{self._where(operation, key_id)}: not tried, KMS was unavailable for this key moments ago "
            f"({last}); the next attempt is in {left:.1f}s at most (KMS_FAIL_FAST_SECONDS); "
            f"retry in {math.ceil(left)}s"
        )

    def _record(  # noqa: PLR0917 - one call site
        self,
        operation: str,
        key_id: str,
        outcome: str,
        error: errors.KeyProviderError | None,
        seconds: float,
        answered: str | None = None,
    ) -> None:
        with self._lock:
            self._calls[(operation, outcome)] += 1
            self._seconds[operation] += seconds
            if error is not None:
                self._last_error = str(error)
            if isinstance(error, errors.KmsUnavailableError):
                self._unavailable_until[key_id] = self._clock() + self._fail_fast
                self._last_unavailable[key_id] = str(error).rpartition(": ")[2].removesuffix("; retry later")
            elif outcome == "success":
                self._unavailable_until.pop(key_id, None)
                if answered is not None:  # an alias's success speaks for the key it names too
                    self._unavailable_until.pop(answered, None)
        if self._observer is not None:
            self._observer(operation, outcome, seconds)

    def _call(self, operation: str, key_id: str, **params: Any) -> dict[str, Any]:
        self._short_circuit(operation, key_id)
        where = self._where(operation, key_id)
        self.limiter.take_token(operation, where)
        self.limiter.acquire(operation, where)
        try:
            return self._send(operation, key_id, params)
        finally:
            self.limiter.release()

    def _send(self, operation: str, key_id: str, params: dict[str, Any]) -> dict[str, Any]:
        method = getattr(self._client, _METHODS[operation])
        started = time.monotonic()
        outcome = "error"
        translated: errors.KeyProviderError | None = None
        answered = None
        try:
            result: dict[str, Any] = method(**params)
            outcome = "success"
            answered = result.get("KeyId") if isinstance(result.get("KeyId"), str) else None
            return result
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            translated = _translate(exc, operation, self._where(operation, key_id))
            outcome = _outcome(translated)
            raise translated from exc
        finally:
            self._record(operation, key_id, outcome, translated, time.monotonic() - started, answered)


_METHODS = {"GenerateDataKey": "generate_data_key", "Decrypt": "decrypt", "DescribeKey": "describe_key"}


def _translate(  # noqa: PLR0911 - one return per kind of KMS failure
    exc: botocore.exceptions.BotoCoreError | botocore.exceptions.ClientError, operation: str, where: str
) -> errors.KeyProviderError:
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        code = type(exc).__name__  # its report may quote the parameters: not shown
        if operation == "Decrypt":
            return _payload_fault(where, code)
        return errors.KmsResponseError(f"{where}: the request was refused before sending ({code})")
    if isinstance(exc, botocore.exceptions.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if operation == "Decrypt" and code in _PAYLOAD_FAULT_CODES:
            return _payload_fault(where, code)
        if code in _UNAVAILABLE_CODES:
            return errors.KmsUnavailableError(f"{where}: KMS is unavailable or throttling ({code}); retry later")
        if code in _ACCESS_CODES:
            return errors.KmsAccessDeniedError(
                f"{where}: access denied ({code}); check the IAM policy and key policy"
                + (", or the key id in the payload metadata was altered" if operation == "Decrypt" else "")
            )
        if code in _STATE_CODES:
            return errors.KmsKeyStateError(f"{where}: the key cannot be used ({code}); is it disabled?")
        if code in _NOT_FOUND_CODES:
            return errors.KmsNotFoundError(f"{where}: no such key or alias ({code})")
        if code in _CIPHERTEXT_CODES:
            return errors.KmsInvalidCiphertextError(
                f"{where}: KMS could not unwrap the data key ({code}); "
                "it is corrupt, or the key id or namespace was altered"
            )
        return errors.KmsResponseError(f"{where}: KMS refused the request ({code or 'unknown error'})")
    if isinstance(exc, _NETWORK_ERRORS):
        return errors.KmsUnavailableError(f"{where}: cannot reach KMS ({type(exc).__name__}); retry later")
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return errors.KmsAccessDeniedError(f"{where}: no AWS credentials found")
    return errors.KmsUnavailableError(f"{where}: {type(exc).__name__}; retry later")


def _payload_fault(where: str, code: str) -> errors.KeyProviderError:
    return errors.KmsInvalidCiphertextError(
        f"{where}: KMS cannot use the key id or encrypted data key of the payload ({code}); "
        "they were altered, or the key was deleted"
    )


def _outcome(error: errors.KeyProviderError) -> str:
    if isinstance(error, errors.KmsUnavailableError):
        return "unavailable"
    if isinstance(error, errors.KmsAccessDeniedError):
        return "access_denied"
    if isinstance(error, errors.KmsInvalidCiphertextError):
        return "invalid_ciphertext"
    return "error"
