"""One history, two views: temporalio's DataConverter with RemotePayloadCodec in the
worker, and the HTTP gateway as the Temporal UI and CLI call it, on one real server.

Values and failures a worker converts leave it encrypted; the gateway, called with
the UI's JSON requests, shows their plain form; what the gateway encodes (a CLI's
or the UI's input) the worker decodes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from google.protobuf import json_format
from temporal_codec_client import RemotePayloadCodec, data_converter
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.failure.v1 import Failure
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.exceptions import ApplicationError

from codec_grpc.v1 import codec_pb2
from tests.support.gateway import UI_ORIGIN, Gateway, assert_cors, b64

NAMESPACE = "orders"


@dataclasses.dataclass
class Order:
    order_id: str
    items: list[str]
    total_cents: int
    note: str | None = None


VALUES = [
    Order("ORD-7781", ["teapot", "kettle"], 12_999, note="leave at the door"),
    "a secret string",
    b"\x00\x01secret bytes\xff",
    None,
    ["listed secret", 2, {"nested": "secret dict"}],
]
TYPE_HINTS: list[type] = [Order, str, bytes, type(None), list]
SECRETS = [b"ORD-7781", b"leave at the door", b"a secret string", b"secret bytes", b"listed secret", b"secret dict"]


@pytest.fixture
def server(start_gateway) -> Gateway:
    """The codec server with the HTTP gateway in front (``server.codec.target`` is its gRPC side)."""
    gateway: Gateway = start_gateway()
    return gateway


def worker_converter(target: str) -> DataConverter:
    """The wiring docs/workers.md shows: the default converter, our codec, failures encrypted too."""
    converter = data_converter(target, namespace=NAMESPACE)
    assert isinstance(converter.payload_codec, RemotePayloadCodec)
    assert converter.failure_converter_class is DefaultFailureConverterWithEncodedAttributes
    return converter


def service_view(server: Gateway, payloads: list[Payload]) -> list[codec_pb2.Payload]:
    """What the UI shows: its JSON request to the gateway's /decode, with its headers."""
    body = json_format.MessageToDict(Payloads(payloads=payloads))
    reply = server.post("/api/codec/decode?preserveStorageRefs=true", body, X_Namespace=NAMESPACE, Origin=UI_ORIGIN)
    assert reply.status == 200, reply.body
    assert_cors(reply)
    return list(json_format.ParseDict(reply.json(), codec_pb2.DecodeResponse()).payloads)


def assert_encrypted(payloads: list[Payload]) -> None:
    for payload in payloads:
        assert payload.metadata["encoding"] == b"binary/encrypted"
        assert payload.metadata["encryption-namespace"] == NAMESPACE.encode()
        wire = payload.SerializeToString()
        assert not [secret for secret in SECRETS if secret in wire]


def test_values_leave_the_worker_encrypted_and_come_back_equal(server):
    converter = worker_converter(server.codec.target)

    async def trip():
        encoded = await converter.encode(VALUES)
        return encoded, await converter.decode(encoded, TYPE_HINTS)

    encoded, decoded = asyncio.run(trip())

    assert len(encoded) == len(VALUES)
    assert_encrypted(encoded)
    assert decoded == VALUES
    assert isinstance(decoded[0], Order)


def test_the_service_shows_what_the_worker_wrote(server):
    converter = worker_converter(server.codec.target)
    encoded = asyncio.run(converter.encode(VALUES))
    assert_encrypted(encoded)

    shown = service_view(server, encoded)

    plain = DataConverter.default.payload_converter.to_payloads(VALUES)
    assert [p.SerializeToString(deterministic=True) for p in shown] == [
        codec_pb2.Payload.FromString(p.SerializeToString()).SerializeToString(deterministic=True) for p in plain
    ]
    assert json.loads(shown[0].data) == dataclasses.asdict(VALUES[0])  # type: ignore[call-overload]
    assert shown[0].metadata["encoding"] == b"json/plain"


def test_what_the_service_encodes_the_worker_decodes(server):
    # As `temporal workflow signal --input '{...}'` through a codec endpoint would send it.
    typed = {"order_id": "ORD-1", "items": ["cup"], "total_cents": 350, "note": None}
    cli_input = {"metadata": {"encoding": b64("json/plain")}, "data": b64(json.dumps(typed))}
    reply = server.post("/encode", {"payloads": [cli_input]}, X_Namespace=NAMESPACE)
    assert reply.status == 200, reply.body
    history = list(json_format.ParseDict(reply.json(), Payloads()).payloads)
    assert_encrypted(history)

    decoded = asyncio.run(worker_converter(server.codec.target).decode(history, [Order]))

    assert decoded == [Order("ORD-1", ["cup"], 350)]


def raise_declined() -> None:
    try:
        raise ValueError("card 4242 secret cause")
    except ValueError as cause:
        raise ApplicationError("card 4242 declined", VALUES[0], type="PaymentDeclined") from cause


def test_failures_are_encrypted_message_stack_details_and_cause(server):
    converter = worker_converter(server.codec.target)
    with pytest.raises(ApplicationError) as raised:
        raise_declined()

    async def trip():
        failure = Failure()
        await converter.encode_failure(raised.value, failure)
        wire = failure.SerializeToString()
        # decode_failure decodes in place: keep `failure` as the history holds it.
        return failure, wire, await converter.decode_failure(Failure.FromString(wire))

    failure, wire, decoded = asyncio.run(trip())

    # What Temporal's history would hold: no message, no stack, no details in clear.
    assert failure.message == "Encoded failure"
    assert failure.stack_trace == ""
    assert failure.cause.message == "Encoded failure"
    assert_encrypted([failure.encoded_attributes, failure.cause.encoded_attributes])
    assert_encrypted(list(failure.application_failure_info.details.payloads))
    assert b"4242" not in wire
    assert b"raise_declined" not in wire
    # What the worker gets back.
    assert isinstance(decoded, ApplicationError)
    assert decoded.message == "card 4242 declined"
    assert decoded.type == "PaymentDeclined"
    assert decoded.details == (dataclasses.asdict(VALUES[0]),)  # type: ignore[call-overload]
    assert "raise_declined" in decoded.failure.stack_trace
    assert isinstance(decoded.__cause__, ApplicationError)
    assert decoded.__cause__.message == "card 4242 secret cause"
    assert decoded.__cause__.type == "ValueError"


def test_the_service_shows_a_failure_message_and_stack(server):
    converter = worker_converter(server.codec.target)
    with pytest.raises(ApplicationError) as raised:
        raise_declined()
    failure = Failure()
    asyncio.run(converter.encode_failure(raised.value, failure))
    assert_encrypted([failure.encoded_attributes])

    [attributes] = service_view(server, [failure.encoded_attributes])

    shown = json.loads(attributes.data)
    assert shown["message"] == "card 4242 declined"
    assert "raise_declined" in shown["stack_trace"]
