"""The KMS key provider against moto's KMS server, plus botocore's Stubber for error codes."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.stub import Stubber

from codec_grpc import errors
from codec_grpc.kms import KmsKeyProvider, encryption_context
from tests.conftest import boto_kms, free_port


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
        ("NotFoundException", errors.KmsNotFoundError),
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
