"""JSON bodies of the HTTP gateway: proto3 JSON ``{"payloads": [...]}`` in and out.

This is the reference path: the mapping itself is ``google.protobuf.json_format``
(``jsonwire`` has the fast path for common bodies). Before it runs, every
bytes field is checked the way Go's protojson decodes it, because Python's
json_format silently drops characters outside the base64 alphabet: a UI or
script sending ``"encoding": "json/plain"`` would otherwise have garbage
encrypted instead of hearing that its request is wrong.

Both paths parse a body with :func:`load_document`, which refuses what would not fit
:class:`BodyLimits` *before* ``json.loads`` builds its objects: a Python object costs 30 to
90 bytes for each ``{}``, ``[]``, ``,`` or ``:`` of the body, so 16 MiB of ``{},`` would
become 5.6 million dicts (1.2 GB of resident memory). A body over :data:`PRESCAN_BYTES`
is first reduced to its structure, a megabyte at a time (``bytes.translate``, under a
nanosecond a byte), whose size bounds what parsing it can build; only a body over
:attr:`BodyLimits.max_structure` is walked, to say which limit it breaks.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from codec_grpc.v1 import codec_pb2

M = TypeVar("M", bound=Message)

_PAYLOAD_FIELDS = frozenset({"metadata", "data", "externalPayloads", "external_payloads"})


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
SEXTET = {char: index for index, char in enumerate(_ALPHABET)}


# Bodies up to this size are parsed as they come: the most json.loads can build from 256 KiB is
# about 11 MiB of objects (arrays nested 500 deep, over and over), and these bodies are parsed on
# the event loop, one at a time. Larger ones are measured first (no slower for the UI's and CLI's
# usual batches: 100 payloads of 1 KiB are 140 KiB).
PRESCAN_BYTES = 256 * 1024
# Brackets, braces, commas and colons a body may hold per payload it may hold: a payload of the
# UI or CLI has 2 + 2 per metadata entry + 5 (19 for our encrypted payloads, 6 entries), one with
# an external payload 8 more. At MAX_PAYLOADS_PER_REQUEST = 10,000 that is 480,000, which
# json.loads turns into at most ~30 MiB of objects whatever their shape.
STRUCTURE_PER_PAYLOAD = 48
STRUCTURE_SLACK = 4096
# A payloads document is 5 deep at most: {"payloads": [{"externalPayloads": [{...}]}]}.
MAX_DEPTH = 8

_STRUCTURE = b'[]{},:"'
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(_STRUCTURE)))
_QUOTE, _COMMA, _BACKSLASH, _OPENS, _CLOSES = ord('"'), ord(","), ord("\\"), b"[{", b"]}"
_WINDOW = 1024 * 1024  # a large body is measured this much at a time: no copy of it is made whole


class BodyError(ValueError):
    """The request body is not a valid payloads document; the message names the field."""


class BodyTooLarge(BodyError):
    """The request body holds more than :class:`BodyLimits` allow (HTTP 413); the message names the setting."""


@dataclass(frozen=True)
class BodyLimits:
    """What one request body may hold, enforced before its objects are built."""

    max_payloads: int = 10_000  # MAX_PAYLOADS_PER_REQUEST

    @property
    def max_structure(self) -> int:
        """Most brackets, braces, commas and colons (outside strings) a body may hold."""
        return self.max_payloads * STRUCTURE_PER_PAYLOAD + STRUCTURE_SLACK

    def check_count(self, count: int) -> None:
        if count > self.max_payloads:
            raise BodyTooLarge(
                f"{count} payloads in one request; the limit is {self.max_payloads} "
                "(MAX_PAYLOADS_PER_REQUEST): split the batch"
            )


DEFAULT_LIMITS = BodyLimits()


@dataclass(frozen=True)
class Parsed:
    """A body :func:`load_document` already parsed: the reference path takes it instead of the bytes."""

    document: Any


def load_document(body: bytes | bytearray, limits: BodyLimits = DEFAULT_LIMITS) -> Any:
    """The JSON value of a request body, refusing first what would not fit ``limits``.

    A ``bytearray`` body is emptied once decoded, so that a large body's bytes do not outlive
    their text (json.loads needs text; the gateway reads bodies into a bytearray).
    Raises :class:`BodyTooLarge` or :class:`BodyError`, worded as the reference path words them.
    """
    try:
        encoding = json.detect_encoding(body)
        if len(body) > PRESCAN_BYTES:
            # UTF-16 and UTF-32 (which json.loads reads too) are measured as UTF-8.
            utf8 = (
                body
                if encoding in ("utf-8", "utf-8-sig")
                else body.decode(encoding, "surrogatepass").encode("utf-8", "surrogatepass")
            )
            _prescan(utf8, limits)
            del utf8
        text = body.decode(encoding, "surrogatepass")  # as json.loads decodes bytes
    except UnicodeDecodeError as exc:
        raise BodyError(f"body is not valid JSON: {exc}") from None
    if isinstance(body, bytearray):
        body.clear()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BodyError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BodyError("body is not a payloads document: nested too deeply") from None


def _prescan(body: bytes | bytearray, limits: BodyLimits) -> None:
    """Refuse a body whose structure exceeds ``limits``, at C speed for every body that does not."""
    structure = quotes = 0
    for skeleton in _skeletons(body):
        quoted = skeleton.count(b'"')
        structure += len(skeleton) - quoted
        quotes += quoted
    # Counting what strings hold too: exact without quotes left, else an over-estimate the walk settles.
    if structure <= limits.max_structure:
        return
    skeletons = _skeletons(body)
    try:
        refusal = _walk(skeletons, limits, exact=not quotes)
    finally:
        skeletons.close()  # releases its view of the body (a bytearray is emptied later)
    if refusal is not None:
        raise refusal


def _skeletons(body: bytes | bytearray) -> Generator[bytes, None, None]:
    """The body's structure, a window at a time: its brackets, braces, commas, colons and quotes,
    less the strings without any of those inside (nearly all of them) and escaped quotes."""
    view = memoryview(body)
    try:
        pos, end = 0, len(body)
        while pos < end:
            stop = min(pos + _WINDOW, end)
            while stop < end and body[stop - 1] == _BACKSLASH:
                stop += 1  # an escape sequence stays whole, in one window
            window = view[pos:stop].tobytes()
            pos = stop
            if b"\\" in window:
                # Pairs of backslashes first (JSON pairs them from the left, as replace does), then the
                # escaped quotes: every quote left starts or ends a string.
                window = window.replace(b"\\\\", b"").replace(b'\\"', b"")
            window = window.translate(None, _NOT_STRUCTURE)
            if b'""' in window:
                # Two quotes in a row are a string without structure inside: in JSON another character
                # comes between a string and the next (or json.loads stops there, having built no more).
                window = window.replace(b'""', b"")
            yield window
    finally:
        view.release()


def _walk(skeletons: Iterator[bytes], limits: BodyLimits, *, exact: bool) -> BodyError | None:
    """The limit the body's structure breaks first, outside strings, or None when it breaks none.

    A Python loop over the structure (strings are jumped over by ``find``), for a bounded number
    of steps: ``max_structure`` (a string counts as one), or, when the skeleton is ``exact`` (all
    structure, and more than the budget: refused whatever the walk finds), a quarter of it, enough
    to find first a nesting or a payload count over the limits. So some tens of milliseconds for
    16 MiB of structure, and never more than a few tenths of a second for any body.
    """
    budget = limits.max_structure
    steps = budget // 4 if exact else budget
    depth = elements = 0
    in_string = False
    for skeleton in skeletons:
        find = skeleton.find
        pos, end = 0, len(skeleton)
        while pos < end:
            if in_string:
                close = find(b'"', pos)
                if close < 0:
                    break  # the string goes on in the next window
                in_string = False
                pos = close + 1
                continue
            if steps == 0:
                return _too_complex(limits)
            steps -= 1
            char = skeleton[pos]
            pos += 1
            if char == _QUOTE:
                in_string = True
            elif char == _COMMA:
                if depth == 2:  # between the elements of "payloads"
                    elements += 1
                    if elements >= limits.max_payloads:
                        return BodyTooLarge(
                            f"more than {limits.max_payloads} payloads in one request; the limit is "
                            f"{limits.max_payloads} (MAX_PAYLOADS_PER_REQUEST): split the batch"
                        )
            elif char in _OPENS:
                depth += 1
                if depth > MAX_DEPTH:
                    return BodyError(f"body is not a payloads document: nested deeper than {MAX_DEPTH} levels")
            elif char in _CLOSES:
                depth -= 1
    # The end: within the budget (an unterminated string included: json.loads stops there, having
    # built no more than this), unless it is exactly over it.
    return _too_complex(limits) if exact else None


def _too_complex(limits: BodyLimits) -> BodyTooLarge:
    return BodyTooLarge(
        f"request body too complex: more than {limits.max_structure} brackets, braces, commas and colons "
        f"({STRUCTURE_PER_PAYLOAD} per payload of MAX_PAYLOADS_PER_REQUEST, {limits.max_payloads}): "
        "fewer metadata entries, or split the batch"
    )


def parse_request(body: bytes | bytearray | Parsed, message: M, limits: BodyLimits = DEFAULT_LIMITS) -> M:
    """Fill ``message`` (an Encode or Decode request) from a ``{"payloads": [...]}`` body."""
    document = body.document if isinstance(body, Parsed) else load_document(body, limits)
    if not isinstance(document, dict):
        raise BodyError('body must be a JSON object like {"payloads": [...]}')
    unknown = sorted(set(document) - {"payloads"})
    if unknown:
        raise BodyError(f'unknown field {unknown[0]!r}: the body is {{"payloads": [...]}}')
    payloads = document.get("payloads")
    if payloads is None:
        payloads = []
    if not isinstance(payloads, list):
        raise BodyError("payloads: must be an array")
    limits.check_count(len(payloads))
    for index, payload in enumerate(payloads):
        _check_payload(f"payloads[{index}]", payload)
    try:
        return json_format.ParseDict({"payloads": payloads}, message)
    except json_format.ParseError as exc:
        raise BodyError(f"invalid payloads: {exc}") from None


def _check_payload(path: str, payload: Any) -> None:
    if not isinstance(payload, dict):
        raise BodyError(f"{path}: must be an object")
    unknown = sorted(set(payload) - _PAYLOAD_FIELDS)
    if unknown:
        raise BodyError(f"{path}: unknown field {unknown[0]!r}")
    metadata = payload.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise BodyError(f"{path}.metadata: must be an object of base64 strings")
        for key, value in metadata.items():
            check_base64(f"{path}.metadata[{json.dumps(key)}]", value)
    if payload.get("data") is not None:
        check_base64(f"{path}.data", payload["data"])


def check_base64(path: str, value: Any) -> None:
    """Accept what Go's protojson accepts for a bytes field, in canonical form only.

    Like protojson: the URL-safe alphabet when the text contains ``-`` or ``_``,
    the standard one otherwise; no padding when the length is not a multiple of
    4; no skipped characters. Stricter on one point: the unused bits of the last
    character must be zero, as every encoder writes them. Without that rule
    ``"json/plain"`` would pass as 7 bytes of binary: exactly the mistake
    (a plain string where base64 belongs) this check exists to catch.
    """
    if not isinstance(value, str):
        raise BodyError(f"{path}: must be a base64 string")
    text = value
    if "-" in text or "_" in text:
        if "+" in text or "/" in text:
            raise BodyError(f"{path}: not valid base64 (mixes the standard and URL-safe alphabets)")
        text = text.replace("-", "+").replace("_", "/")
    if len(text) % 4:
        if "=" in text:
            raise BodyError(f"{path}: not valid base64")
        text += "=" * (-len(text) % 4)
    try:
        binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError):
        raise BodyError(f"{path}: not valid base64") from None
    padding = len(text) - len(text.rstrip("="))
    if padding and SEXTET[text[-padding - 1]] & (0b1111 if padding == 2 else 0b11):
        raise BodyError(f"{path}: not valid base64 (non-zero bits after the last byte: is it base64-encoded?)")


def go_duration(seconds: float) -> str:
    """Whole seconds in Go's ``time.Duration`` notation, as the seed's /stats showed: ``25m30s``."""
    hours, rest = divmod(round(max(seconds, 0.0)), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def stats_json(stats: codec_pb2.StatsResponse) -> dict[str, Any]:
    """The /stats document: the seed's four fields first, then every counter as a number."""
    document: dict[str, Any] = {
        "cached_keys_count": stats.cached_keys_count,
        "current_key_age": go_duration(stats.current_key_age_seconds),
        "current_key_expires_in": go_duration(stats.current_key_expires_in_seconds),
        "current_key_expired": stats.current_key_expired,
        "current_key_present": stats.current_key_present,
        "namespace": stats.namespace,
    }
    skipped = {"current_key_age_seconds", "current_key_expires_in_seconds", "current_keys", "kms_regions", *document}
    for field in stats.DESCRIPTOR.fields:
        if field.name not in skipped:
            document[field.name] = getattr(stats, field.name)
    document["current_keys"] = [
        {
            "key_alias": key.key_alias,
            "key_arn": key.key_arn,
            "namespace": key.namespace,
            "age": go_duration(key.age_seconds),
            "expires_in": go_duration(key.expires_in_seconds),
            "expired": key.expired,
            "encryptions": key.encryptions,
        }
        for key in stats.current_keys
    ]
    # With KMS_REGIONS: each Region's counters, as numbers.
    document["kms_regions"] = [
        {field.name: getattr(region, field.name) for field in region.DESCRIPTOR.fields} for region in stats.kms_regions
    ]
    return document
