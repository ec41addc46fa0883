"""The transport's own limit: a gRPC server with CodecService's messages that only echoes.

Same generated code, same thread pool and the same server options as the codec
server, so `make bench` can compare the codec's cost with what the transport costs.
"""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from codec_grpc.rpc.server import ServerOptions, grpc_server
from codec_grpc.v1 import codec_pb2, codec_pb2_grpc


class EchoServicer(codec_pb2_grpc.CodecServiceServicer):
    def Encode(self, request: codec_pb2.EncodeRequest, context: Any) -> codec_pb2.EncodeResponse:
        return codec_pb2.EncodeResponse(payloads=request.payloads)

    def Decode(self, request: codec_pb2.DecodeRequest, context: Any) -> codec_pb2.DecodeResponse:
        return codec_pb2.DecodeResponse(payloads=request.payloads)

    def Stats(self, request: codec_pb2.StatsRequest, context: Any) -> codec_pb2.StatsResponse:
        return codec_pb2.StatsResponse()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--max-message-bytes", type=int, default=16 * 1024 * 1024)
    args = parser.parse_args()
    options = ServerOptions("127.0.0.1", args.port, args.max_message_bytes, args.workers)
    server, _ = grpc_server(options)
    codec_pb2_grpc.add_CodecServiceServicer_to_server(EchoServicer(), server)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
