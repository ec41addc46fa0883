"""Just enough of the protobuf wire format to handle payloads as bytes.

Encode/Decode requests and responses are ``repeated Payload payloads = 1`` plus,
in requests, ``string namespace = 2``. Splitting a request into the serialized
bytes of its payloads, and joining serialized payloads into a response, needs
only tags, varints and length prefixes (protobuf's "encoding" documentation):

    field        = tag value
    tag          = varint(field_number << 3 | wire_type)
    wire type 2  = varint(length) bytes     (strings, bytes, messages, map entries)
    wire type 0  = varint;  1 = 8 bytes;  5 = 4 bytes

Working on bytes spares a parse and a re-serialization of every payload, and
keeps every field of the inner payload, unknown ones included. The protobuf
classes remain the reference: tests check both give identical results.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message of the expected shape."""


def varint(value: int) -> bytes:
    """Encode a non-negative integer as a protobuf varint."""
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:  # two bytes: payloads from 128 bytes to 16 KiB
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode the varint at ``pos``; return it and the position after it."""
    if pos + 1 < len(buf) and buf[pos] >= 0x80 and buf[pos + 1] < 0x80:  # the common two-byte case
        return (buf[pos] & 0x7F) | (buf[pos + 1] << 7), pos + 2
    result = 0
    shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("truncated or oversized varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def field(number: int, value: bytes) -> bytes:
    """A length-delimited field (wire type 2): tag, length, value."""
    return varint(number << 3 | 2) + varint(len(value)) + value


def map_entries(number: int, entries: Mapping[str, bytes]) -> bytes:
    """A ``map<string, bytes>`` field, entries sorted by key (as deterministic serialization)."""
    return b"".join(field(number, field(1, key.encode()) + field(2, value)) for key, value in sorted(entries.items()))


def split_request(buf: bytes) -> tuple[list[bytes], str]:  # noqa: PLR0912 - hot loop, varints inlined
    """Split an Encode/Decode request into its serialized payloads (field 1) and namespace (field 2)."""
    payloads: list[bytes] = []
    namespace = b""
    pos, end = 0, len(buf)
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = read_varint(buf, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 2:
            if pos >= end:
                raise WireError("truncated or oversized varint")
            length = buf[pos]
            if length < 0x80:
                pos += 1
            elif pos + 1 < end and buf[pos + 1] < 0x80:  # two bytes: payloads from 128 bytes to 16 KiB
                length = (length & 0x7F) | (buf[pos + 1] << 7)
                pos += 2
            else:
                length, pos = read_varint(buf, pos)
            stop = pos + length
            if stop > end:
                raise WireError("a field runs past the end of the message")
            if number == 1:
                payloads.append(buf[pos:stop])
            elif number == 2:
                namespace = buf[pos:stop]  # proto3: the last value wins
            pos = stop
        else:
            pos = _skip(buf, pos, wire_type)
    try:
        return payloads, namespace.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("the namespace is not UTF-8 text") from None


def join_response(payloads: Iterable[bytes]) -> bytes:
    """Serialize payloads as field 1 of an Encode/Decode response."""
    parts: list[bytes] = []
    for payload in payloads:
        length = len(payload)
        parts.append(b"\x0a" + varint(length))
        parts.append(payload)
    return b"".join(parts)


def _skip(buf: bytes, pos: int, wire_type: int) -> int:
    if wire_type == 0:
        return read_varint(buf, pos)[1]
    if wire_type == 1:
        pos += 8
    elif wire_type == 5:
        pos += 4
    else:
        raise WireError(f"unsupported wire type {wire_type}")
    if pos > len(buf):
        raise WireError("a field runs past the end of the message")
    return pos
