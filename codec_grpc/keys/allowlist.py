"""Which master keys this server decrypts with: a discovery filter, as the AWS Encryption SDK has.

A payload's ``encryption-key-id`` is whatever its writer put there. Sent to KMS as
``KeyId`` unchecked, it lets anyone who can write a payload make this server call KMS
with a key of their choosing: under an IAM policy on ``Resource: *``, their own key
(forged payloads that decrypt, our role's calls in their CloudTrail). So a key id is
used only when it is

* the ARN of a configured master key (``KMS_KEY_ALIAS``, ``NAMESPACE_KEY_ALIASES``),
  resolved at start-up (``DescribeKey``) and again whenever a data key is generated
  under it, so an alias moved at run time is picked up at the next rotation; or
* listed in ``DECRYPT_KEY_ARNS``: exact ARNs, or ``arn:aws:kms:REGION:ACCOUNT:key/*``
  patterns (old master keys after an alias moved, another Region's replicas).

Anything else is refused before any KMS call (:class:`~codec_grpc.errors.KeyNotAllowedError`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from fnmatch import fnmatchcase

from codec_grpc import errors

# arn:PARTITION:kms:REGION:ACCOUNT:key/KEY-ID, KEY-ID a UUID or mrk-<hex> (multi-Region).
KEY_ARN = re.compile(r"arn:aws[a-z-]{0,16}:kms:[a-z0-9-]{1,32}:[0-9]{12}:key/[A-Za-z0-9-]{1,64}")
# The same, with * allowed in the region, account and key id parts (DECRYPT_KEY_ARNS patterns).
KEY_ARN_PATTERN = re.compile(r"arn:aws[a-z-]{0,16}:kms:[a-z0-9*-]{1,32}:[0-9*]{1,12}:key/[A-Za-z0-9*-]{1,64}")
SETTING = "DECRYPT_KEY_ARNS"


def parse_key_patterns(text: str) -> tuple[str, ...]:
    """DECRYPT_KEY_ARNS: comma-separated key ARNs or patterns; ValueError naming the first bad one."""
    patterns = tuple(filter(None, (part.strip() for part in text.split(","))))
    for pattern in patterns:
        if not KEY_ARN_PATTERN.fullmatch(pattern):
            raise ValueError(
                f"expected KMS key ARNs or patterns like arn:aws:kms:REGION:ACCOUNT:key/*, got {pattern[:100]!r}"
            )
    return patterns


class KeyAllowlist:
    """The master-key ARNs this server may decrypt with: resolved ones, and ``patterns``. Thread-safe."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self._exact = frozenset(p for p in patterns if "*" not in p)
        self._patterns = tuple(p for p in patterns if "*" in p)
        self._resolved: set[str] = set()
        self._lock = threading.Lock()

    def allow(self, key_arn: str) -> None:
        """Add a configured master key's ARN (as KMS resolved it)."""
        with self._lock:
            self._resolved.add(key_arn)

    def allows(self, key_arn: str) -> bool:
        if key_arn in self._resolved or key_arn in self._exact:
            return True
        return any(fnmatchcase(key_arn, pattern) for pattern in self._patterns)

    def resolved(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._resolved)

    def refusal(self, key_arn: str) -> errors.KeyNotAllowedError:
        """The error for a key id that is not allowed (the caller checked its grammar: safe to echo)."""
        return errors.KeyNotAllowedError(
            f"KMS key {key_arn} is not one this server decrypts with: neither a configured master key "
            f"(KMS_KEY_ALIAS, NAMESPACE_KEY_ALIASES) nor in {SETTING}; not sent to KMS"
        )
