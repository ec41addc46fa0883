"""The gateway's fast path: JSON bodies straight to and from CodecService's wire format.

``json_format`` walks descriptors in Python for every field of every payload; on
a batch of 100 payloads that, with the strict base64 checks, was most of the
gateway's CPU. Yet nearly every body the UI, the CLI and the Go SDK send has one
shape: payloads with a ``metadata`` object and ``data``, in standard padded
base64. For that shape this module checks and decodes each base64 string in one
``binascii`` call and writes the serialized request directly (``core.protowire``);
answers are read from the response bytes and their JSON written directly.

Everything else goes through the reference path, ``gateway.body`` (json_format
plus the strict checks), which also words every error: external payloads,
numbers as strings, URL-safe or unpadded base64, nulls, unknown fields, invalid
input of any kind. The tests check on random documents that both paths give
the same request, the same answer and the same error, and that the common
shapes really take the fast path. Both parse with ``body.load_document``, which
refuses bodies over the limits before they are parsed.

Memory: a large body's copies go as soon as the next one exists (its bytes once
decoded, the parsed document once converted), and a large answer is rendered in
parts (:func:`response_parts`) that the gateway writes one after the other,
without a copy of every payload first or of the whole answer after.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Iterator, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from codec_grpc.core import protowire as wire
from codec_grpc.gateway.body import DEFAULT_LIMITS, SEXTET, BodyLimits, Parsed, load_document, parse_request
from codec_grpc.v1 import codec_pb2

_SIMPLE_PAYLOAD = frozenset({"metadata", "data"})
_METADATA_TAG, _DATA_TAG = 0x0A, 0x12  # fields 1 and 2, length-delimited (as are a map entry's key, value)

# Metadata entries repeat within a batch and across calls (the envelope of one data key, for hours;
# "encoding": "json/plain"): each is converted once, then looked up. Bounded: small entries only,
# and the whole memo is dropped when full. Both JSON and wire forms are deterministic functions of
# the entry, so a stale or concurrent memo cannot change an answer.
_MEMO_ENTRIES = 4096
_MEMO_ENTRY_BYTES = 1024
_request_entries: dict[tuple[str, str], bytes] = {}
_response_members: dict[bytes, tuple[str, bytes]] = {}


def _remember(memo: dict[Any, Any], key: Any, value: Any, size: int) -> None:
    if size <= _MEMO_ENTRY_BYTES:
        if len(memo) >= _MEMO_ENTRIES:
            memo.clear()
        memo[key] = value


def request_bytes(body: bytes | bytearray, namespace: str, limits: BodyLimits = DEFAULT_LIMITS) -> bytes:
    """The serialized Encode/Decode request (their shapes are the same) for a JSON body.

    Raises ``BodyError`` (``BodyTooLarge`` over ``limits``) exactly as ``body.parse_request``
    does. A ``bytearray`` body is emptied once read (``body.load_document``).
    """
    document = load_document(body, limits)
    payloads = _simple_payloads(document, limits)
    if payloads is None:
        return reference_request_bytes(Parsed(document), namespace, limits)
    del document  # a large batch's parsed form goes before the request is joined (memory peak)
    if namespace:
        payloads.append(wire.field(2, namespace.encode()))
    return b"".join(payloads)


def reference_request_bytes(
    body: bytes | bytearray | Parsed, namespace: str, limits: BodyLimits = DEFAULT_LIMITS
) -> bytes:
    request = parse_request(body, codec_pb2.EncodeRequest(), limits)
    request.namespace = namespace
    return request.SerializeToString()


def _simple_payloads(document: Any, limits: BodyLimits) -> list[bytes] | None:
    """Each payload as field 1 of the request, or None when the body is not of the simple shape."""
    if type(document) is not dict or document.keys() != {"payloads"} or type(document["payloads"]) is not list:
        return None
    limits.check_count(len(document["payloads"]))  # as the reference path would, before the payloads' checks
    fields = []
    for payload in document["payloads"]:
        if type(payload) is not dict or not payload.keys() <= _SIMPLE_PAYLOAD:
            return None
        serialized = _simple_payload(payload.get("metadata", {}), payload.get("data", ""))
        if serialized is None:
            return None
        fields.append(wire.field(1, serialized))
    return fields


def _simple_payload(metadata: Any, data: Any) -> bytes | None:
    if type(metadata) is not dict or type(data) is not str:
        return None
    parts = []
    for item in metadata.items():
        if type(item[1]) is not str:
            return None
        entry = _request_entries.get(item)
        if entry is None:
            entry = _metadata_entry(*item)
            if entry is None:
                return None
            _remember(_request_entries, item, entry, len(entry))
        parts.append(entry)
    raw = _canonical_base64(data)
    if raw is None:
        return None
    if raw:
        parts.append(wire.field(2, raw))
    return b"".join(parts)


def _metadata_entry(key: str, text: str) -> bytes | None:
    """Field 1 of a payload for one metadata item, or None when json_format must judge it."""
    value = _canonical_base64(text)
    if value is None or not key.isascii():  # other keys: json_format's checks (unpaired surrogates)
        return None
    return wire.field(1, wire.field(1, key.encode()) + wire.field(2, value))


def _canonical_base64(text: Any) -> bytes | None:
    """The bytes of standard, padded base64 whose unused bits are zero; None for anything else.

    ``strict_mode`` refuses characters outside the alphabet, misplaced padding and
    lengths that are not a multiple of 4 in the same pass that decodes.
    """
    if type(text) is not str:
        return None
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except ValueError:  # binascii.Error, or a non-ASCII str
        return None
    if text.endswith("=="):
        return None if SEXTET[text[-3]] & 0b1111 else raw
    if text.endswith("="):
        return None if SEXTET[text[-2]] & 0b11 else raw
    return raw


def response_document(response: bytes) -> tuple[bytes, int]:
    """The answer body for a serialized Encode/Decode response (protojson of its payloads), and the
    number of payloads in it. Raises ``WireError`` when the bytes are not a valid response."""
    payloads, _ = wire.split_request(response)  # a response is field 1 of a request
    return payloads_document(payloads), len(payloads)


def response_parts(response: bytes) -> tuple[list[bytes], int]:
    """:func:`response_document` for a large answer: the protojson of each payload, to be written
    between ``{"payloads":[``, commas and ``]}`` (:func:`document_chunks`), and the number of
    payloads. Each payload is copied out of ``response`` only while it is rendered."""
    rendered: list[bytes] = []
    pos, end = 0, len(response)
    while pos < end:
        if response[pos] != _METADATA_TAG:  # anything but field 1, length-delimited: the general path
            payloads, _ = wire.split_request(response)
            return [_payload_json(payload) for payload in payloads], len(payloads)
        length, pos = wire.read_varint(response, pos + 1)
        stop = pos + length
        if stop > end:
            raise wire.WireError("a field runs past the end of the message")
        rendered.append(_payload_json(response[pos:stop]))
        pos = stop
    return rendered, len(rendered)


def document_size(rendered: Sequence[bytes]) -> int:
    """The length of the answer body made of ``rendered`` payloads."""
    return len(b'{"payloads":[]}') + sum(map(len, rendered)) + max(len(rendered) - 1, 0)


def document_chunks(rendered: list[bytes], chunk_bytes: int = 256 * 1024) -> Iterator[bytes]:
    """The answer body of :func:`response_parts`, in chunks of about ``chunk_bytes``: the same bytes
    as :func:`payloads_document`. Each payload's part is dropped from ``rendered`` once in a chunk."""
    chunk = [b'{"payloads":[']
    size = 0
    for index, part in enumerate(rendered):
        if index:
            chunk.append(b",")
        chunk.append(part)
        rendered[index] = b""
        size += len(part)
        if size >= chunk_bytes:
            yield b"".join(chunk)
            chunk, size = [], 0
    chunk.append(b"]}")
    yield b"".join(chunk)


def payloads_document(payloads: Sequence[bytes]) -> bytes:
    """``{"payloads": [...]}`` written directly: base64 needs no JSON escaping, and the
    metadata entries repeat (one data key encrypts a whole batch, and many batches), so
    each distinct entry is rendered once and remembered."""
    return b'{"payloads":[' + b",".join(_payload_json(payload) for payload in payloads) + b"]}"


def _payload_json(raw: bytes) -> bytes:
    """The protojson object of one serialized payload, as ``json_format.MessageToDict`` has it;
    fields 1 and 2 are read here, anything else goes to json_format."""
    metadata: dict[str, bytes] = {}
    data = b""
    pos, end = 0, len(raw)
    while pos < end:
        tag = raw[pos]
        if tag not in (_METADATA_TAG, _DATA_TAG):
            return _reference_payload_json(raw)  # external payloads, unknown fields
        length, pos = wire.read_varint(raw, pos + 1)
        stop = pos + length
        if stop > end:
            raise wire.WireError("a field runs past the end of a payload")
        if tag == _DATA_TAG:
            data = raw[pos:stop]
        else:
            entry = raw[pos:stop]
            member = _response_members.get(entry)
            if member is None:
                member = _metadata_member(entry)
                if member is None:
                    return _reference_payload_json(raw)
                _remember(_response_members, entry, member, len(entry))
            metadata[member[0]] = member[1]  # a repeated key: the last one wins, as in protobuf
        pos = stop
    members = []
    if metadata:
        members.append(b'"metadata":{' + b",".join(metadata.values()) + b"}")
    if data:
        members.append(b'"data":"' + binascii.b2a_base64(data, newline=False) + b'"')
    return b"{" + b",".join(members) + b"}"


def _metadata_member(entry: bytes) -> tuple[str, bytes] | None:
    """The key and its ``"key":"base64"`` text for a ``map<string, bytes>`` entry;
    None when the entry holds anything but a UTF-8 key and a value."""
    key, value = b"", b""
    pos, end = 0, len(entry)
    while pos < end:
        tag = entry[pos]
        if tag not in (_METADATA_TAG, _DATA_TAG):
            return None
        length, pos = wire.read_varint(entry, pos + 1)
        if pos + length > end:
            return None
        if tag == _METADATA_TAG:
            key = entry[pos : pos + length]
        else:
            value = entry[pos : pos + length]
        pos += length
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text, json.dumps(text).encode() + b':"' + binascii.b2a_base64(value, newline=False) + b'"'


def _reference_payload_json(raw: bytes) -> bytes:
    try:
        rendered = json_format.MessageToDict(codec_pb2.Payload.FromString(raw))
    except DecodeError as exc:
        raise wire.WireError(f"not a valid payload: {exc}") from None
    return json.dumps(rendered, separators=(",", ":")).encode()
