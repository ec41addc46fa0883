"""Key management: which data key encrypts a batch and which one decrypts a payload.

* :mod:`~codec_grpc.keys.manager`: :class:`KeyManager` (master key per namespace,
  rotation, refresh ahead, outage grace) and :class:`CachedKeys`, its view that
  never waits for KMS;
* :mod:`~codec_grpc.keys.caches`: the current-key and decrypted-key caches, with
  validated limits;
* :mod:`~codec_grpc.keys.allowlist`: which master keys may decrypt (before any KMS call);
* :mod:`~codec_grpc.keys.regions`: with KMS_REGIONS, which Region each KMS call goes to
  (multi-Region keys: encodes and decodes survive a Region's outage);
* :mod:`~codec_grpc.keys.singleflight`: concurrent misses share one provider call;
* :mod:`~codec_grpc.keys.provider`: the :class:`KeyProvider` and :class:`RegionalKeyProvider`
  interfaces that the KMS layer below implements (structurally: it does not import this package).
"""

from codec_grpc.keys.allowlist import KeyAllowlist
from codec_grpc.keys.caches import CurrentKeyInfo
from codec_grpc.keys.manager import (
    CachedKeys,
    KeyManager,
    KeyPolicy,
    KeyStats,
    RequestKeys,
    UnwrapBudget,
    WouldBlock,
)
from codec_grpc.keys.provider import KeyProvider, RegionalKeyProvider, WrappedKey

__all__ = [
    "CachedKeys",
    "CurrentKeyInfo",
    "KeyAllowlist",
    "KeyManager",
    "KeyPolicy",
    "KeyProvider",
    "KeyStats",
    "RegionalKeyProvider",
    "RequestKeys",
    "UnwrapBudget",
    "WouldBlock",
    "WrappedKey",
]
