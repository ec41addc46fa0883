"""Multi-Region routing (KMS_REGIONS) with a fake provider in two Regions and a fake clock: which
Region each KMS call goes to, when another is asked, and when never."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from botocore.stub import Stubber

from codec_grpc import errors
from codec_grpc.core.envelope import DataKey
from codec_grpc.keys import KeyManager, KeyPolicy
from codec_grpc.keys.regions import OneRegion, RegionRouter, arn_region, in_region, is_multi_region, routes_for
from codec_grpc.kms import KmsKeyProvider, KmsLimiter, KmsLimits, RegionalKmsKeyProvider
from codec_grpc.kms.regions import arn_region as kms_arn_region
from tests.support.fakes import FakeClock, FakeProvider, FakeRegionalProvider
from tests.support.fixtures import boto_kms

EAST, WEST = "us-east-1", "us-west-2"
MRK_EAST = "arn:aws:kms:us-east-1:111122223333:key/mrk-1"
MRK_WEST = "arn:aws:kms:us-west-2:111122223333:key/mrk-1"
SINGLE_EAST = "arn:aws:kms:us-east-1:111122223333:key/1234abcd"


def inline(task: Callable[[], None]) -> None:
    task()


def manager(
    provider: FakeRegionalProvider,
    clock: FakeClock | None = None,
    spawn: Callable[[Callable[[], None]], None] = inline,
    **policy: Any,
) -> tuple[KeyManager[DataKey], list[tuple[str, str]]]:
    """A key manager over ``provider``, its master keys resolved in each Region (so none may be down yet),
    and its fallback hook's calls. Background refreshes run inline unless ``spawn`` says otherwise."""
    told: list[tuple[str, str]] = []
    settings: dict[str, Any] = {"default_alias": "alias/default", **policy}
    keys = KeyManager(
        provider,
        KeyPolicy(**settings),
        DataKey,
        clock=clock or FakeClock(),
        spawn=spawn,
        on_fallback=lambda operation, region: told.append((operation, region)),
    )
    assert keys.resolve_master_keys() == {}
    provider.calls.clear()
    return keys, told


@pytest.fixture
def provider() -> FakeRegionalProvider:
    return FakeRegionalProvider()


# The names of a key in each Region ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_id", "region", "named"),
    [
        ("alias/x", WEST, "alias/x"),  # each Region resolves an alias name itself
        ("mrk-1", WEST, "mrk-1"),
        ("1234abcd", WEST, "1234abcd"),
        (MRK_EAST, WEST, MRK_WEST),
        (MRK_EAST, EAST, MRK_EAST),
        ("arn:aws:kms:us-east-1:111122223333:alias/x", WEST, "arn:aws:kms:us-west-2:111122223333:alias/x"),
        (SINGLE_EAST, EAST, SINGLE_EAST),
        (SINGLE_EAST, WEST, None),  # a single-Region key has no counterpart elsewhere
        (
            "arn:aws-cn:kms:cn-north-1:111122223333:key/mrk-9",
            "cn-northwest-1",
            "arn:aws-cn:kms:cn-northwest-1:111122223333:key/mrk-9",
        ),
    ],
)
def test_a_master_key_as_each_region_names_it(key_id: str, region: str, named: str | None) -> None:
    assert in_region(key_id, region) == named


def test_arn_parts() -> None:
    assert arn_region(MRK_WEST) == WEST and arn_region("alias/x") is None and arn_region("mrk-1") is None
    assert kms_arn_region(MRK_WEST) == WEST and kms_arn_region("alias/x") == ""
    assert is_multi_region(MRK_EAST) and is_multi_region("mrk-1")
    assert not is_multi_region(SINGLE_EAST) and not is_multi_region("1234abcd")
    assert not is_multi_region("arn:aws:kms:us-east-1:111122223333:alias/mrk-named-alias")


def test_a_provider_without_regions_gets_every_call_as_it_comes() -> None:
    assert isinstance(routes_for(FakeProvider(), lambda arn: True), OneRegion)
    assert isinstance(routes_for(FakeRegionalProvider(), lambda arn: True), RegionRouter)
    assert not isinstance(routes_for(boto_provider(), lambda arn: True), RegionRouter)  # one KmsKeyProvider


# Encode ---------------------------------------------------------------------------------------------


def test_master_keys_resolve_in_every_region(provider: FakeRegionalProvider) -> None:
    keys, _ = manager(provider, namespace_aliases={"orders": SINGLE_EAST})
    assert keys.allowlist.resolved() == {MRK_EAST, MRK_WEST, SINGLE_EAST}  # the single-Region ARN: its own only
    provider.down.add(WEST)
    fresh = KeyManager(provider, KeyPolicy(default_alias="alias/default"), DataKey, spawn=inline)
    failures = fresh.resolve_master_keys()
    assert list(failures) == ["alias/default in us-west-2"]
    assert "cannot reach KMS" in failures["alias/default in us-west-2"]
    assert fresh.allowlist.resolved() == {MRK_EAST}


def test_encode_uses_the_first_region(provider: FakeRegionalProvider) -> None:
    keys, told = manager(provider)
    key = keys.encryption_key("default", "default", 1)
    assert key.key_id == MRK_EAST
    assert provider.asked("GenerateDataKey") == [EAST]
    assert told == [] and keys.stats().fallbacks == {}


def test_encode_falls_back_when_the_first_region_is_unavailable(provider: FakeRegionalProvider) -> None:
    keys, told = manager(provider)
    provider.down.add(EAST)
    key = keys.encryption_key("default", "default", 1)
    assert key.key_id == MRK_WEST  # the payload names the Region whose key wrapped its data key
    assert provider.asked("GenerateDataKey") == [EAST, WEST]
    assert told == [("GenerateDataKey", WEST)]
    assert keys.stats().fallbacks == {("GenerateDataKey", WEST): 1}
    assert not keys.stats().degraded  # served: no outage for key management


def test_encode_skips_a_region_paused_for_its_key(provider: FakeRegionalProvider) -> None:
    keys, told = manager(provider)
    provider.paused_keys.add(("alias/default", EAST))
    assert keys.encryption_key("default", "default", 1).key_id == MRK_WEST
    assert provider.asked("GenerateDataKey") == [WEST]  # not asked: no timeout waited out
    assert told == [("GenerateDataKey", WEST)]
    provider.paused_keys.update({("alias/default", WEST)})  # every Region paused: ask them all anyway
    provider.calls.clear()
    keys.encryption_key("other", "other", 1)
    assert provider.asked("GenerateDataKey") == [EAST]


def test_encode_in_no_region_is_an_outage_and_the_grace_applies(provider: FakeRegionalProvider) -> None:
    clock = FakeClock()
    keys, _ = manager(provider, clock, lambda task: None, rotation_interval=60, outage_grace=600)  # no refreshes
    first = keys.encryption_key("default", "default", 1)
    provider.down.update({EAST, WEST})
    clock.advance(61)
    assert keys.encryption_key("default", "default", 1) is first  # served through the grace
    stats = keys.stats()
    assert stats.degraded
    assert "us-east-1: cannot reach KMS (fake); then KMS GenerateDataKey with key alias/default in us-west-2" in (
        stats.last_refresh_error
    )
    with pytest.raises(errors.KmsUnavailableError):
        keys.encryption_key("new-namespace", "new-namespace", 1)


def test_a_refusal_in_the_first_region_is_the_answer(provider: FakeRegionalProvider) -> None:
    keys, told = manager(provider)
    provider.refusing[EAST] = errors.KmsAccessDeniedError("KMS GenerateDataKey with key alias/default: access denied")
    with pytest.raises(errors.KmsAccessDeniedError):
        keys.encryption_key("default", "default", 1)
    assert provider.asked("GenerateDataKey") == [EAST] and told == []


def test_a_refusal_after_an_outage_leaves_the_outage_as_the_error(provider: FakeRegionalProvider) -> None:
    keys, _ = manager(provider)
    provider.down.add(EAST)
    provider.refusing[WEST] = errors.KmsNotFoundError(
        "KMS GenerateDataKey with key alias/default in us-west-2: no such key"
    )
    with pytest.raises(errors.KmsUnavailableError) as caught:
        keys.encryption_key("default", "default", 1)
    assert "cannot reach KMS (fake); then KMS GenerateDataKey with key alias/default in us-west-2: no such key" in str(
        caught.value
    )


# Decode ---------------------------------------------------------------------------------------------


def written_in(provider: FakeRegionalProvider, region: str, key: str = "alias/default") -> DataKey:
    """A data key written in ``region`` by another server (this one has not cached it)."""
    generated = provider.generate_data_key(key, "default", region)
    return DataKey(generated.plaintext, generated.key_arn, generated.encrypted_key, "default")


def same(key: DataKey, other: DataKey) -> bool:
    """Whether two data keys hold the same key material (and metadata)."""
    nonce = bytes(12)
    return key.encrypt(b"probe", nonce) == other.encrypt(b"probe", nonce)


def test_decode_asks_the_payloads_own_region_first(provider: FakeRegionalProvider) -> None:
    keys, told = manager(provider)
    written = written_in(provider, WEST)
    provider.calls.clear()
    assert same(keys.decryption_key(written.key_id, written.encrypted_key, "default"), written)
    assert provider.asked("Decrypt") == [WEST]  # its own Region, although us-east-1 comes first
    assert told == []


def test_decode_of_a_multi_region_key_falls_back_on_an_outage(provider: FakeRegionalProvider) -> None:
    keys, told = manager(provider)
    written = written_in(provider, EAST)
    provider.down.add(EAST)
    provider.calls.clear()
    key = keys.decryption_key(MRK_EAST, written.encrypted_key, "default")
    assert same(key, written) and key.key_id == MRK_EAST  # cached as the payload names it
    assert [(op, region, arn) for op, region, arn in provider.calls] == [
        ("Decrypt", EAST, MRK_EAST),
        ("Decrypt", WEST, MRK_WEST),
    ]
    assert told == [("Decrypt", WEST)] and keys.stats().fallbacks == {("Decrypt", WEST): 1}
    provider.calls.clear()
    assert keys.decryption_key(MRK_EAST, written.encrypted_key, "default") is key
    assert provider.calls == []


@pytest.mark.parametrize(
    "refusal",
    [
        errors.KmsInvalidCiphertextError("KMS Decrypt: could not unwrap"),
        errors.KmsAccessDeniedError("KMS Decrypt: access denied"),
        errors.KmsKeyStateError("KMS Decrypt: disabled"),
    ],
)
def test_decode_never_falls_back_on_a_refusal(provider: FakeRegionalProvider, refusal: errors.KeyProviderError) -> None:
    keys, told = manager(provider)
    written = written_in(provider, EAST)
    provider.refusing[EAST] = refusal
    provider.calls.clear()
    with pytest.raises(type(refusal)):
        keys.decryption_key(MRK_EAST, written.encrypted_key, "default")
    assert provider.asked("Decrypt") == [EAST] and told == []


def test_a_single_region_key_never_falls_back(provider: FakeRegionalProvider) -> None:
    keys, told = manager(provider, namespace_aliases={"orders": "alias/single"})
    written = written_in(provider, EAST, "alias/single")
    provider.down.add(EAST)
    provider.calls.clear()
    with pytest.raises(errors.KmsUnavailableError) as caught:
        keys.decryption_key(SINGLE_EAST, written.encrypted_key, "default")
    assert str(caught.value) == (
        f"KMS Decrypt with key {SINGLE_EAST} in us-east-1: cannot reach KMS (fake); "
        f"{SINGLE_EAST} is a single-Region key: no other Region can unwrap its data keys"
    )
    assert provider.asked("Decrypt") == [EAST] and told == []


def test_a_replica_the_allowlist_does_not_allow_is_not_asked(provider: FakeRegionalProvider) -> None:
    other_east = "arn:aws:kms:us-east-1:111122223333:key/mrk-old"
    keys, _ = manager(provider, decrypt_key_patterns=(other_east,))  # its us-west-2 replica not listed
    written = written_in(provider, EAST, other_east)
    provider.down.add(EAST)
    provider.calls.clear()
    with pytest.raises(
        errors.KmsUnavailableError, match="its replicas in the other Regions of KMS_REGIONS are not allowed"
    ):
        keys.decryption_key(other_east, written.encrypted_key, "default")
    assert provider.asked("Decrypt") == [EAST]
    provider.down.clear()
    listed, _ = manager(provider, decrypt_key_patterns=("arn:aws:kms:*:111122223333:key/mrk-old",))
    provider.down.add(EAST)
    assert same(listed.decryption_key(other_east, written.encrypted_key, "default"), written)


def test_a_replica_not_resolved_at_start_is_resolved_when_a_decode_needs_it(provider: FakeRegionalProvider) -> None:
    """us-west-2 was out when the server started: its replica is resolved (and allowed) when a decode
    first needs to fall back to it, at most once per resolve_interval."""
    clock = FakeClock()
    provider.down.add(WEST)
    keys = KeyManager(provider, KeyPolicy(default_alias="alias/default"), DataKey, clock=clock, spawn=inline)
    assert list(keys.resolve_master_keys()) == ["alias/default in us-west-2"]
    written = written_in(provider, EAST)
    provider.down = {EAST}  # us-west-2 back, us-east-1 out
    provider.calls.clear()
    with pytest.raises(errors.KmsUnavailableError, match="not allowed"):  # retried too soon: not asked
        keys.decryption_key(MRK_EAST, written.encrypted_key, "default")
    assert provider.asked("DescribeKey") == []
    clock.advance(30)
    assert same(keys.decryption_key(MRK_EAST, written.encrypted_key, "default"), written)
    assert provider.asked("DescribeKey") == [WEST] and MRK_WEST in keys.allowlist.resolved()


def test_a_key_in_a_region_outside_kms_regions_is_refused_before_any_call(provider: FakeRegionalProvider) -> None:
    keys, _ = manager(provider, decrypt_key_patterns=("arn:aws:kms:*:111122223333:key/*",))
    elsewhere = "arn:aws:kms:eu-west-1:111122223333:key/mrk-1"
    with pytest.raises(errors.KeyNotAllowedError) as caught:
        keys.decryption_key(elsewhere, b"mrk-1|eu-west-1|default|1", "default")
    assert str(caught.value) == (
        f"KMS key {elsewhere} is in Region eu-west-1, not one of KMS_REGIONS (us-east-1, us-west-2); not sent to KMS"
    )
    assert provider.calls == []


def test_every_region_unavailable_says_what_each_answered(provider: FakeRegionalProvider) -> None:
    keys, told = manager(provider)
    written = written_in(provider, EAST)
    provider.down.update({EAST, WEST})
    with pytest.raises(errors.KmsUnavailableError) as caught:
        keys.decryption_key(MRK_EAST, written.encrypted_key, "default")
    assert str(caught.value) == (
        f"KMS Decrypt with key {MRK_EAST} in us-east-1: cannot reach KMS (fake); "
        f"then KMS Decrypt with key {MRK_WEST} in us-west-2: cannot reach KMS (fake)"
    )
    assert told == []


# The KMS layer: one provider per Region -------------------------------------------------------------


def boto_provider(
    region: str = EAST, limiter: KmsLimiter | None = None, clock: FakeClock | None = None
) -> KmsKeyProvider:
    return KmsKeyProvider(boto_kms(), fail_fast=5.0, clock=clock or FakeClock(), region=region, limiter=limiter)


def test_regional_provider_sends_each_call_to_its_region() -> None:
    limiter = KmsLimiter(KmsLimits())
    east, west = boto_provider(EAST, limiter), boto_provider(WEST, limiter)
    regional = RegionalKmsKeyProvider({EAST: east, WEST: west})
    assert regional.regions == (EAST, WEST)
    with Stubber(east._client) as in_east, Stubber(west._client) as in_west:
        in_west.add_response("decrypt", {"Plaintext": b"k" * 32, "KeyId": MRK_WEST})
        in_east.add_response(
            "generate_data_key", {"Plaintext": b"k" * 32, "CiphertextBlob": b"blob", "KeyId": MRK_EAST}
        )
        in_west.add_client_error("describe_key", service_error_code="ThrottlingException")
        assert regional.decrypt_data_key(b"blob", MRK_WEST, None) == b"k" * 32
        assert regional.generate_data_key("alias/x", None, EAST).key_arn == MRK_EAST
        with pytest.raises(errors.KmsUnavailableError) as caught:
            regional.key_arn("alias/x", WEST)
        in_east.assert_no_pending_responses()
        in_west.assert_no_pending_responses()
    # The message names the Region of a key id that does not: an alias.
    assert str(caught.value) == (
        "KMS DescribeKey with key alias/x in us-west-2: KMS is unavailable or throttling (ThrottlingException); "
        "retry later"
    )
    assert regional.paused("alias/x", WEST) and not regional.paused("alias/x", EAST)
    stats = regional.stats()
    assert stats.count("Decrypt") == 1 and stats.count("GenerateDataKey") == 1 and stats.errors == 1
    assert stats.paused == 1 and "ThrottlingException" in stats.last_error
    assert stats.regions[WEST].count("Decrypt") == 1 and stats.regions[WEST].errors == 1
    assert stats.regions[EAST].errors == 0 and stats.regions[EAST].last_error == ""
    with pytest.raises(errors.KeyNotAllowedError, match="not in one of KMS_REGIONS"):
        regional.decrypt_data_key(b"blob", "arn:aws:kms:eu-west-1:111122223333:key/mrk-1", None)


def test_the_fail_fast_pause_is_per_region() -> None:
    """The same multi-Region key, paused in one Region, is asked at once in the other."""
    clock, limiter = FakeClock(), KmsLimiter(KmsLimits())
    east, west = boto_provider(EAST, limiter, clock), boto_provider(WEST, limiter, clock)
    regional = RegionalKmsKeyProvider({EAST: east, WEST: west})
    with Stubber(east._client) as in_east, Stubber(west._client) as in_west:
        in_east.add_client_error("decrypt", service_error_code="KMSInternalException", http_status_code=500)
        in_west.add_response("decrypt", {"Plaintext": b"k" * 32, "KeyId": MRK_WEST})
        with pytest.raises(errors.KmsUnavailableError):
            regional.decrypt_data_key(b"blob", MRK_EAST, None)
        with pytest.raises(errors.KmsUnavailableError, match="not tried, KMS was unavailable for this key"):
            regional.decrypt_data_key(b"blob", MRK_EAST, None)  # paused in us-east-1: no request
        assert regional.decrypt_data_key(b"blob", MRK_WEST, None) == b"k" * 32
        in_east.assert_no_pending_responses()
    assert regional.stats().regions[EAST].short_circuited == 1
    assert regional.stats().regions[WEST].short_circuited == 0


def test_every_region_shares_the_process_spend_limits() -> None:
    limiter = KmsLimiter(KmsLimits(decrypt_rate=1, decrypt_burst=1), clock=FakeClock())
    east, west = boto_provider(EAST, limiter), boto_provider(WEST, limiter)
    regional = RegionalKmsKeyProvider({EAST: east, WEST: west})
    with Stubber(east._client) as in_east:
        in_east.add_response("decrypt", {"Plaintext": b"k" * 32, "KeyId": MRK_EAST})
        regional.decrypt_data_key(b"blob", MRK_EAST, None)
    with pytest.raises(errors.KmsUnavailableError, match="Decrypt budget is spent"):
        regional.decrypt_data_key(b"blob", MRK_WEST, None)  # the other Region: the same budget
    assert regional.stats().limited == 1
    with pytest.raises(ValueError, match="share one KmsLimiter"):
        RegionalKmsKeyProvider({EAST: boto_provider(EAST), WEST: boto_provider(WEST)})
    with pytest.raises(ValueError, match="at least one Region"):
        RegionalKmsKeyProvider({})
