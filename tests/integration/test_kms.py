"""The KMS key provider against moto's KMS server, plus botocore's Stubber for error codes."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from botocore.stub import Stubber

from codec_grpc import errors
from codec_grpc.kms import KmsKeyProvider, KmsLimits, encryption_context
from tests.support.fixtures import boto_kms, free_port


def test_generate_and_decrypt_round_trip(admin_kms: Any, make_key: Any) -> None:
    alias, arn = make_key()
    provider = KmsKeyProvider(admin_kms)
    generated = provider.generate_data_key(alias, "ns")
    assert len(generated.plaintext) == 32
    assert generated.key_arn == arn
    assert "plaintext" not in repr(generated) and generated.plaintext.hex() not in repr(generated)
    assert provider.decrypt_data_key(generated.encrypted_key, arn, "ns") == generated.plaintext
    stats = provider.stats()
    assert stats.count("GenerateDataKey", "success") == 1 and stats.count("Decrypt", "success") == 1
    assert stats.errors == 0


def test_encryption_context_carries_the_namespace(admin_kms: Any, make_key: Any) -> None:
    alias, arn = make_key()
    provider = KmsKeyProvider(admin_kms)
    generated = provider.generate_data_key(alias, "team-a")
    with pytest.raises(errors.KmsInvalidCiphertextError, match=f"KMS Decrypt with key {arn}: KMS could not unwrap"):
        provider.decrypt_data_key(generated.encrypted_key, arn, "team-b")
    with pytest.raises(errors.KmsInvalidCiphertextError):
        provider.decrypt_data_key(generated.encrypted_key, arn, None)
    assert encryption_context("team-a") == {"temporal-namespace": "team-a"}
    assert encryption_context(None) == {}
    assert provider.stats().count("Decrypt", "invalid_ciphertext") == 2


def test_unknown_alias_is_not_found(admin_kms: Any) -> None:
    with pytest.raises(errors.KmsNotFoundError, match="alias/does-not-exist: no such key or alias"):
        KmsKeyProvider(admin_kms).generate_data_key("alias/does-not-exist", None)


def test_wrong_key_id_on_decrypt_is_refused(admin_kms: Any, make_key: Any) -> None:
    """AWS says IncorrectKeyException, moto AccessDeniedException: both are clear refusals."""
    alias, _ = make_key()
    _, other_arn = make_key()
    provider = KmsKeyProvider(admin_kms)
    generated = provider.generate_data_key(alias, None)
    with pytest.raises((errors.KmsInvalidCiphertextError, errors.KmsAccessDeniedError), match=other_arn):
        provider.decrypt_data_key(generated.encrypted_key, other_arn, None)


def test_unreachable_kms_is_unavailable() -> None:
    client = boto_kms(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(errors.KmsUnavailableError, match="cannot reach KMS .*retry later"):
        KmsKeyProvider(client).generate_data_key("alias/x", None)


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        ("ThrottlingException", errors.KmsUnavailableError),
        ("KMSInternalException", errors.KmsUnavailableError),
        ("DependencyTimeoutException", errors.KmsUnavailableError),
        ("AccessDeniedException", errors.KmsAccessDeniedError),
        ("DisabledException", errors.KmsKeyStateError),
        ("KMSInvalidStateException", errors.KmsKeyStateError),
        ("NotFoundException", errors.KmsInvalidCiphertextError),  # Decrypt: the payload's key id
        ("ValidationException", errors.KmsInvalidCiphertextError),
        ("InvalidCiphertextException", errors.KmsInvalidCiphertextError),
        ("IncorrectKeyException", errors.KmsInvalidCiphertextError),
        ("SomethingNewException", errors.KmsResponseError),
    ],
)
def test_client_error_codes_are_translated(code: str, error_type: type[errors.KeyProviderError]) -> None:
    client = boto_kms()
    with Stubber(client) as stub:
        stub.add_client_error("decrypt", service_error_code=code, service_message="secret detail")
        with pytest.raises(error_type) as caught:
            KmsKeyProvider(client).decrypt_data_key(b"blob", "arn:aws:kms:us-east-1:1:key/k", "ns")
    assert "arn:aws:kms:us-east-1:1:key/k" in str(caught.value)
    assert code in str(caught.value)
    assert type(caught.value) is error_type


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"Plaintext": b"short", "CiphertextBlob": b"blob", "KeyId": "arn:k"}, "a key of the wrong length"),
        ({"Plaintext": b"k" * 32, "CiphertextBlob": b"", "KeyId": "arn:k"}, "an incomplete answer"),
    ],
)
def test_bad_generate_answers_are_refused(answer: dict[str, Any], message: str) -> None:
    client = boto_kms()
    with Stubber(client) as stub:
        stub.add_response("generate_data_key", answer)
        with pytest.raises(errors.KmsResponseError, match=message):
            KmsKeyProvider(client).generate_data_key("alias/x", None)


def test_decrypt_answer_from_another_key_is_refused() -> None:
    client = boto_kms()
    with Stubber(client) as stub:
        stub.add_response("decrypt", {"Plaintext": b"k" * 32, "KeyId": "arn:other"})
        with pytest.raises(errors.KmsInvalidCiphertextError, match="with a key other than arn:mine"):
            KmsKeyProvider(client).decrypt_data_key(b"blob", "arn:mine", None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_decrypt_fails_fast_for_a_while_after_kms_was_unavailable() -> None:
    client, clock, refused = boto_kms(), Clock(), list[str]()
    provider = KmsKeyProvider(client, fail_fast=5.0, clock=clock, short_circuit_observer=refused.append)
    arn = "arn:aws:kms:us-east-1:1:key/k"
    with Stubber(client) as stub:  # Stubber fails any request it was not given an answer for
        stub.add_client_error("decrypt", service_error_code="ThrottlingException")
        with pytest.raises(errors.KmsUnavailableError, match="ThrottlingException"):
            provider.decrypt_data_key(b"blob", arn, None)
        clock.now += 4.9
        with pytest.raises(errors.KmsUnavailableError) as caught:
            provider.decrypt_data_key(b"blob", arn, None)
        assert str(caught.value) == (
            f"KMS Decrypt with key {arn}: not tried, KMS was unavailable for this key moments ago "
            "(KMS is unavailable or throttling (ThrottlingException)); "
            "the next attempt is in 0.1s at most (KMS_FAIL_FAST_SECONDS); retry in 1s"
        )
        stub.assert_no_pending_responses()
        clock.now += 0.2  # the pause is over: KMS is asked again
        stub.add_response("decrypt", {"Plaintext": b"k" * 32, "KeyId": arn})
        assert provider.decrypt_data_key(b"blob", arn, None) == b"k" * 32
    stats = provider.stats()
    assert stats.short_circuited == 1 and stats.count("Decrypt") == 2
    assert refused == ["Decrypt"]  # the hook metrics count with; told only of the refused call


def test_a_success_ends_the_fail_fast_pause_and_generate_is_never_short_circuited() -> None:
    client, clock, refused = boto_kms(), Clock(), list[str]()
    provider = KmsKeyProvider(client, fail_fast=60.0, clock=clock, short_circuit_observer=refused.append)
    arn = "arn:aws:kms:us-east-1:1:key/k"
    generated = {"Plaintext": b"k" * 32, "CiphertextBlob": b"blob", "KeyId": arn}
    with Stubber(client) as stub:
        stub.add_client_error("decrypt", service_error_code="KMSInternalException", http_status_code=500)
        stub.add_response("generate_data_key", generated)
        stub.add_response("decrypt", {"Plaintext": b"k" * 32, "KeyId": arn})
        with pytest.raises(errors.KmsUnavailableError):
            provider.decrypt_data_key(b"blob", arn, None)
        provider.generate_data_key("alias/x", None)  # asked although Decrypt is paused; and it succeeds
        assert provider.decrypt_data_key(b"blob", arn, None) == b"k" * 32
        stub.assert_no_pending_responses()
    assert refused == []


@pytest.mark.parametrize("code", ["AccessDeniedException", "InvalidCiphertextException", "DisabledException"])
def test_only_an_unavailable_kms_starts_the_fail_fast_pause(code: str) -> None:
    client = boto_kms()
    provider = KmsKeyProvider(client, fail_fast=60.0, clock=Clock())
    arn = "arn:aws:kms:us-east-1:1:key/k"
    with Stubber(client) as stub:
        stub.add_client_error("decrypt", service_error_code=code)
        stub.add_response("decrypt", {"Plaintext": b"k" * 32, "KeyId": arn})
        with pytest.raises(errors.KeyProviderError):
            provider.decrypt_data_key(b"blob", arn, None)
        assert provider.decrypt_data_key(b"blob", arn, None) == b"k" * 32
    assert provider.stats().short_circuited == 0


def test_fail_fast_off_and_invalid() -> None:
    client, clock = boto_kms(), Clock()
    provider = KmsKeyProvider(client, fail_fast=0.0, clock=clock)
    with Stubber(client) as stub:
        stub.add_client_error("decrypt", service_error_code="ThrottlingException")
        stub.add_client_error("decrypt", service_error_code="ThrottlingException")
        for _ in range(2):
            with pytest.raises(errors.KmsUnavailableError, match="ThrottlingException"):
                provider.decrypt_data_key(b"blob", "arn:k", None)
        stub.assert_no_pending_responses()
    with pytest.raises(ValueError, match="fail_fast must be 0 or more, got -1"):
        KmsKeyProvider(client, fail_fast=-1)


def test_malformed_decrypt_parameters_are_the_payloads_fault() -> None:
    """botocore refuses before sending (here: an empty key id); no KMS outage is assumed."""
    provider = KmsKeyProvider(boto_kms(), fail_fast=60.0)
    with pytest.raises(errors.KmsInvalidCiphertextError, match=r"\(ParamValidationError\); they were altered"):
        provider.decrypt_data_key(b"blob", "", None)
    with pytest.raises(errors.KmsResponseError, match="refused before sending"):
        provider.generate_data_key("", None)
    with Stubber(provider._client) as stub:
        stub.add_response("decrypt", {"Plaintext": b"k" * 32, "KeyId": "arn:k"})
        assert provider.decrypt_data_key(b"blob", "arn:k", None) == b"k" * 32  # not paused
    assert provider.stats().short_circuited == 0


def test_the_fail_fast_pause_is_per_master_key() -> None:
    """A failure provoked with one key (throttled, say) does not stop decodes under the others."""
    client, clock = boto_kms(), Clock()
    provider = KmsKeyProvider(client, fail_fast=60.0, clock=clock)
    first, second = "arn:aws:kms:us-east-1:1:key/a", "arn:aws:kms:us-east-1:1:key/b"
    with Stubber(client) as stub:
        stub.add_client_error("decrypt", service_error_code="ThrottlingException")
        stub.add_response("decrypt", {"Plaintext": b"k" * 32, "KeyId": second})
        with pytest.raises(errors.KmsUnavailableError, match="ThrottlingException"):
            provider.decrypt_data_key(b"blob", first, None)
        assert provider.decrypt_data_key(b"blob", second, None) == b"k" * 32  # asked: not paused
        with pytest.raises(errors.KmsUnavailableError, match="not tried"):
            provider.decrypt_data_key(b"blob", first, None)  # paused, no request
        stub.assert_no_pending_responses()
    assert provider.stats().short_circuited == 1


def test_decrypt_rate_is_a_token_bucket() -> None:
    client, clock = boto_kms(), Clock()
    provider = KmsKeyProvider(client, clock=clock, limits=KmsLimits(decrypt_rate=2, decrypt_burst=3))
    arn = "arn:aws:kms:us-east-1:1:key/k"
    with Stubber(client) as stub:
        for _ in range(4):
            stub.add_response("decrypt", {"Plaintext": b"k" * 32, "KeyId": arn})
        for _ in range(3):  # the burst
            provider.decrypt_data_key(b"blob", arn, None)
        with pytest.raises(errors.KmsUnavailableError) as caught:
            provider.decrypt_data_key(b"blob", arn, None)
        assert str(caught.value) == (
            f"KMS Decrypt with key {arn}: not sent, this server's Decrypt budget is spent "
            "(KMS_DECRYPT_RATE=2/s, KMS_DECRYPT_BURST=3); retry in 1s"
        )
        clock.now += 0.5  # one token back at 2/s
        provider.decrypt_data_key(b"blob", arn, None)
        stub.assert_no_pending_responses()
    stats = provider.stats()
    assert (stats.count("Decrypt"), stats.limited, stats.short_circuited) == (4, 1, 0)
    with Stubber(client) as stub:  # the budget's refusal starts no fail-fast pause: it was not KMS's
        stub.add_response("decrypt", {"Plaintext": b"k" * 32, "KeyId": arn})
        clock.now += 10
        provider.decrypt_data_key(b"blob", arn, None)


def test_concurrent_kms_calls_are_bounded() -> None:
    """A call finding every slot taken waits queue_timeout, then is refused without a request."""
    arn = "arn:aws:kms:us-east-1:1:key/k"
    release, entered = threading.Event(), threading.Event()

    class SlowClient:
        def decrypt(self, **_: Any) -> dict[str, Any]:
            entered.set()
            release.wait(10)
            return {"Plaintext": b"k" * 32, "KeyId": arn}

    provider = KmsKeyProvider(SlowClient(), limits=KmsLimits(max_concurrent=1, queue_timeout=0.05))
    first = threading.Thread(target=provider.decrypt_data_key, args=(b"blob", arn, None))
    first.start()
    assert entered.wait(5)
    with pytest.raises(
        errors.KmsUnavailableError, match=r"1 KMS calls are in flight already \(KMS_MAX_CONCURRENT_CALLS\); retry in 1s"
    ):
        provider.decrypt_data_key(b"blob", arn, None)
    release.set()
    first.join(5)
    assert provider.decrypt_data_key(b"blob", arn, None) == b"k" * 32  # the slot is free again
    assert provider.stats().limited == 1


def test_key_arn_resolves_an_alias(admin_kms: Any, make_key: Any) -> None:
    alias, arn = make_key()
    provider = KmsKeyProvider(admin_kms)
    assert provider.key_arn(alias) == arn
    assert provider.key_arn(arn) == arn
    with pytest.raises(errors.KmsNotFoundError, match="KMS DescribeKey with key alias/nope: no such key or alias"):
        provider.key_arn("alias/nope")
