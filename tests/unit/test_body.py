"""Unit tests of the gateway's JSON mapping: strict base64 the way Go's protojson reads it,
proto3 JSON in and out, and the /stats durations."""

from __future__ import annotations

import base64
import json
import os

import pytest

from codec_grpc.gateway.body import BodyError, check_base64, go_duration, parse_request, stats_json
from codec_grpc.gateway.jsonwire import response_document
from codec_grpc.v1 import codec_pb2


def spellings(raw: bytes) -> set[str]:
    std = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    return {std, std.rstrip("="), url, url.rstrip("=")}


@pytest.mark.parametrize("length", range(0, 40))
def test_every_encoder_spelling_is_accepted_and_means_the_same_bytes(length: int) -> None:
    raw = os.urandom(length)
    for text in spellings(raw):
        check_base64("p", text)
        parsed = parse_request(json.dumps({"payloads": [{"data": text}]}).encode(), codec_pb2.DecodeRequest())
        assert parsed.payloads[0].data == raw


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("json/plain", "non-zero bits"),  # the classic: a plain string where base64 belongs
        ("YR==", "non-zero bits"),
        ("YR", "non-zero bits"),
        ("a", "not valid base64"),
        ("abcde", "not valid base64"),
        ("YQ=", "not valid base64"),  # padding only when the length is a multiple of 4
        ("ab==cd==", "not valid base64"),
        ("=YWJ", "not valid base64"),
        ("YW Jj", "not valid base64"),
        ("YWJj\n", "not valid base64"),
        ("YW.j", "not valid base64"),
        ("é", "not valid base64"),
        ("-/8A", "mixes the standard and URL-safe alphabets"),
    ],
)
def test_garbage_is_refused(text: str, reason: str) -> None:
    with pytest.raises(BodyError) as raised:
        check_base64('payloads[3].metadata["encoding"]', text)
    assert str(raised.value).startswith('payloads[3].metadata["encoding"]: ')
    assert reason in str(raised.value)


@pytest.mark.parametrize("value", [None, 5, ["YQ=="], {"a": 1}, True])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(BodyError, match=r"^payloads\[0\]\.data: must be a base64 string$"):
        check_base64("payloads[0].data", value)


def test_external_payloads_in_both_spellings_as_string_or_number() -> None:
    body = {
        "payloads": [
            {"external_payloads": [{"size_bytes": 7}, {"sizeBytes": "8"}]},
            {"externalPayloads": [{"size_bytes": "9"}, {"sizeBytes": 10}]},
        ]
    }
    parsed = parse_request(json.dumps(body).encode(), codec_pb2.EncodeRequest())
    sizes = [[item.size_bytes for item in payload.external_payloads] for payload in parsed.payloads]
    assert sizes == [[7, 8], [9, 10]]


def test_answers_use_protojson_and_always_carry_payloads() -> None:
    def answer(payloads: list[codec_pb2.Payload]) -> object:
        return json.loads(response_document(codec_pb2.EncodeResponse(payloads=payloads).SerializeToString())[0])

    assert answer([]) == {"payloads": []}
    payload = codec_pb2.Payload(metadata={"encoding": b"json/plain"}, data=b"1")
    payload.external_payloads.add(size_bytes=3)
    assert answer([payload, codec_pb2.Payload()]) == {
        "payloads": [
            {"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "MQ==", "externalPayloads": [{"sizeBytes": "3"}]},
            {},
        ]
    }


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (-3, "0s"), (0.4, "0s"), (59.6, "1m0s"), (90, "1m30s"), (1530, "25m30s"), (3600, "1h0m0s"),
     (90061, "25h1m1s")],
)  # fmt: skip
def test_go_durations(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_stats_json_has_the_seed_fields_as_numbers_and_durations() -> None:
    stats = codec_pb2.StatsResponse(
        cached_keys_count=3,
        current_key_age_seconds=1530.2,
        current_key_expires_in_seconds=2069.8,
        current_key_present=True,
        namespace="default",
        kms_decrypt_calls=4,
    )
    stats.current_keys.add(key_alias="alias/a", key_arn="arn:k", namespace="default", age_seconds=5, encryptions=2)
    document = stats_json(stats)
    assert document["cached_keys_count"] == 3
    assert document["current_key_age"] == "25m30s"
    assert document["current_key_expires_in"] == "34m30s"
    assert document["current_key_expired"] is False
    assert document["kms_decrypt_calls"] == 4
    assert "current_key_age_seconds" not in document
    assert document["current_keys"] == [
        {
            "key_alias": "alias/a",
            "key_arn": "arn:k",
            "namespace": "default",
            "age": "5s",
            "expires_in": "0s",
            "expired": False,
            "encryptions": 2,
        }
    ]


def test_stats_json_has_each_kms_region_as_numbers() -> None:
    stats = codec_pb2.StatsResponse(kms_decrypt_calls=3)
    stats.kms_regions.add(region="us-east-1", decrypt_calls=1, unavailable=1, errors=1, last_error="KMS Decrypt …")
    stats.kms_regions.add(region="us-west-2", decrypt_calls=2, decrypt_fallbacks=1)
    document = stats_json(stats)
    assert [region["region"] for region in document["kms_regions"]] == ["us-east-1", "us-west-2"]
    assert document["kms_regions"][1] == {
        "region": "us-west-2",
        "generate_data_key_calls": 0,
        "decrypt_calls": 2,
        "errors": 0,
        "unavailable": 0,
        "decrypt_short_circuited": 0,
        "decrypt_fallbacks": 1,
        "generate_data_key_fallbacks": 0,
        "keys_paused": 0,
        "last_error": "",
    }
    assert stats_json(codec_pb2.StatsResponse())["kms_regions"] == []
