"""The yardstick for the HTTP gateway's cost: a minimal codec server of the shape of
Temporal's Python sample (samples-python ``encryption/codec_server.py``).

aiohttp, POST /encode and /decode, proto3 JSON through ``google.protobuf.json_format``
into messages, AES-256-GCM with ONE static key made at start (no KMS, no key cache,
no gRPC hop), the encrypted payload's metadata ``encoding: binary/encrypted`` plus
a key id. Written for `make bench` only: it is the straightforward way to serve the
contract, so the real gateway should cost no more CPU per call than this.
"""

from __future__ import annotations

import argparse
import json
import os

from aiohttp import web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import json_format

from codec_grpc.v1.codec_pb2 import EncodeRequest as Payloads  # field 1: repeated Payload, as Temporal's
from codec_grpc.v1.codec_pb2 import Payload

NONCE_BYTES = 12


class StaticKeyCodec:
    """Every payload encrypted whole (its serialized bytes) with one key; no associated data."""

    def __init__(self) -> None:
        self.key_id = b"bench-static-key"
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))

    def encode(self, payloads: Payloads) -> Payloads:
        out = Payloads()
        for payload in payloads.payloads:
            nonce = os.urandom(NONCE_BYTES)
            out.payloads.add(
                metadata={"encoding": b"binary/encrypted", "encryption-key-id": self.key_id},
                data=nonce + self._aead.encrypt(nonce, payload.SerializeToString(), None),
            )
        return out

    def decode(self, payloads: Payloads) -> Payloads:
        out = Payloads()
        for payload in payloads.payloads:
            if payload.metadata.get("encoding") != b"binary/encrypted":
                out.payloads.append(payload)
                continue
            if payload.metadata.get("encryption-key-id") != self.key_id:
                raise web.HTTPBadRequest(text="unknown key id")
            plain = self._aead.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], None)
            out.payloads.append(Payload.FromString(plain))
        return out


def create_app() -> web.Application:
    codec = StaticKeyCodec()

    async def encode(request: web.Request) -> web.Response:
        return _json(codec.encode(await _payloads(request)))

    async def decode(request: web.Request) -> web.Response:
        return _json(codec.decode(await _payloads(request)))

    app = web.Application()
    app.add_routes([web.post("/encode", encode), web.post("/decode", decode)])
    return app


async def _payloads(request: web.Request) -> Payloads:
    return json_format.ParseDict(json.loads(await request.read()), Payloads())


def _json(payloads: Payloads) -> web.Response:
    body = json.dumps(json_format.MessageToDict(payloads), separators=(",", ":"))
    return web.Response(text=body, content_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
