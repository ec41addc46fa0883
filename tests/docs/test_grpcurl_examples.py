"""The grpcurl examples of docs/grpc.md (and the README tour), checked through server reflection only.

Like grpcurl, these tests know no proto file: every descriptor comes from the
server's reflection service, and the requests are the page's own `-d` JSON
and `-H` headers.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.support.paths import ROOT

PAGE = ROOT / "docs" / "grpc.md"  # the grpcurl section; the README tour shows the same commands
SERVICE = "codec_grpc.v1.CodecService"


def grpcurl_commands(page: Path = PAGE) -> list[list[str]]:
    """Every `grpcurl` command of a page's shell blocks, continuation lines joined."""
    text = page.read_text(encoding="utf-8").replace("\\\n", " ")
    lines = (line.strip().removeprefix("$ ") for line in text.splitlines())
    # The command itself, without its redirections and pipes.
    return [shlex.split(re.split(r" [|<>] ", line)[0]) for line in lines if line.startswith("grpcurl ")]


def page_call(method: str) -> tuple[dict[str, str], str | None]:
    """Headers and `-d` body of the page's first call of ``method`` that has a JSON body."""
    for words in grpcurl_commands():
        if words[-1] != f"{SERVICE}/{method}":
            continue
        headers = dict(h.split(": ", 1) for h in (words[i + 1] for i, w in enumerate(words) if w == "-H"))
        body = next((words[i + 1] for i, w in enumerate(words) if w == "-d"), None)
        if body != "@":
            return headers, body
    raise AssertionError(f"docs/grpc.md has no grpcurl call of {method}")


def page_output(command: str) -> list[str]:
    """The lines the page shows after ``$ <command>``, up to the next blank line or fence."""
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"$ {command}") + 1
    shown = []
    for line in lines[start:]:
        if not line.strip() or line.startswith(("```", "$ ")):
            break
        shown.append(line)
    return shown


class Reflected:
    """Descriptors and message classes obtained from the server, as grpcurl gets them."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.database = ProtoReflectionDescriptorDatabase(channel)
        self.pool = descriptor_pool.DescriptorPool(self.database)
        self.channel = channel

    def service(self) -> ServiceDescriptor:
        return self.pool.FindServiceByName(SERVICE)

    def call(self, method: str, body: str | None, headers: dict[str, str]) -> str:
        descriptor = self.service().methods_by_name[method]
        request_class = message_factory.GetMessageClass(descriptor.input_type)
        response_class = message_factory.GetMessageClass(descriptor.output_type)
        request = json_format.Parse(body or "{}", request_class())
        stub = self.channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        response = stub(request, metadata=tuple(headers.items()), timeout=10)
        # grpcurl prints proto field names, as the page shows them.
        return json_format.MessageToJson(response, preserving_proto_field_name=True)


@pytest.fixture
def reflected(codec_server, make_key) -> Reflected:
    alias, _ = make_key()
    server = codec_server(KMS_KEY_ALIAS=alias)
    return Reflected(server.channel)


def test_the_readme_tour_shows_only_commands_checked_here():
    tour = grpcurl_commands(ROOT / "README.md")
    assert len(tour) >= 3
    checked = grpcurl_commands()
    assert all(command in checked for command in tour)


def test_list_shows_the_services_the_readme_shows(reflected):
    assert sorted(reflected.database.get_services()) == page_output("grpcurl -plaintext localhost:50051 list")


def test_describe_resolves_the_service_and_its_messages(reflected):
    service = reflected.service()
    rpcs = {
        f"  rpc {m.name} ( .{m.input_type.full_name} ) returns ( .{m.output_type.full_name} );" for m in service.methods
    }
    shown = page_output(f"grpcurl -plaintext localhost:50051 describe {SERVICE}")
    assert rpcs == {line for line in shown if line.lstrip().startswith("rpc ")}
    assert {m.name for m in service.methods} == {"Encode", "Decode", "Stats"}

    request = service.methods_by_name["Encode"].input_type
    payloads, namespace = request.fields_by_name["payloads"], request.fields_by_name["namespace"]
    assert (payloads.number, payloads.message_type.full_name) == (1, "codec_grpc.v1.Payload")
    assert payloads.is_repeated
    assert (namespace.number, namespace.type) == (2, FieldDescriptor.TYPE_STRING)

    payload = reflected.pool.FindMessageTypeByName("codec_grpc.v1.Payload")
    fields = {f.name: f.number for f in payload.fields}
    assert fields == {"metadata": 1, "data": 2, "external_payloads": 3}
    assert payload.fields_by_name["metadata"].message_type.GetOptions().map_entry
    assert payload.fields_by_name["data"].type == FieldDescriptor.TYPE_BYTES
    described = page_output("grpcurl -plaintext localhost:50051 describe codec_grpc.v1.Payload")
    assert "  map<string, bytes> metadata = 1;" in described
    assert "  repeated .codec_grpc.v1.Payload.ExternalPayloadDetails external_payloads = 3;" in described


def test_readme_encode_then_decode_gives_back_the_payload(reflected):
    headers, body = page_call("Encode")
    assert headers == {"x-namespace": "default"}
    assert body is not None

    encoded = json.loads(reflected.call("Encode", body, headers))
    [payload] = encoded["payloads"]
    assert payload["metadata"]["encoding"] == "YmluYXJ5L2VuY3J5cHRlZA=="  # base64("binary/encrypted")
    assert payload["metadata"]["encryption-namespace"] == "ZGVmYXVsdA=="  # base64("default")

    decoded = json.loads(reflected.call("Decode", json.dumps(encoded), headers))
    assert decoded == json.loads(body)
    assert decoded["payloads"][0]["metadata"]["encoding"] == "anNvbi9wbGFpbg=="
    assert decoded["payloads"][0]["data"] == "eyJoZWxsbyI6IndvcmxkIn0="


def test_readme_namespace_mismatch_error(reflected):
    headers, body = page_call("Encode")
    encoded = reflected.call("Encode", body, headers)

    with pytest.raises(grpc.RpcError) as caught:
        reflected.call("Decode", encoded, {"x-namespace": "other"})

    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    shown = "\n".join(
        page_output(f"grpcurl -plaintext -H 'x-namespace: other' -d @ localhost:50051 {SERVICE}/Decode < encoded.json")
    )
    assert f"Message: {caught.value.details()}" in shown


def test_readme_stats_call(reflected):
    headers, body = page_call("Stats")
    reflected.call("Encode", page_call("Encode")[1], headers)

    stats = json.loads(reflected.call("Stats", body, headers))

    assert stats["namespace"] == "default"
    assert stats["current_key_present"] is True
    assert stats["kms_generate_data_key_calls"] == "1"  # int64 is a string in JSON
