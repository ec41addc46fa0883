"""Reference implementations the tests hold production code to: written the plain way, slowly."""

from __future__ import annotations

import json
from collections.abc import Sequence

from google.protobuf import json_format

from codec_grpc.v1 import codec_pb2


def payloads_json(payloads: Sequence[codec_pb2.Payload]) -> bytes:
    """The gateway's answer body as json_format writes it: proto3 JSON, always a ``payloads`` array."""
    rendered = [json_format.MessageToDict(payload) for payload in payloads]
    return json.dumps({"payloads": rendered}, separators=(",", ":")).encode()
