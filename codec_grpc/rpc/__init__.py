"""The gRPC transport: CodecService served by a threaded ``grpc`` server.

* :mod:`~codec_grpc.rpc.servicer`: the servicer, thin over ``codec_grpc.service``;
* :mod:`~codec_grpc.rpc.server`: the server factory (port 0 for tests), with the
  standard health service and server reflection;
* :mod:`~codec_grpc.rpc.executor`: its thread pool (few calls running, calls waiting for KMS aside);
* :mod:`~codec_grpc.rpc.observe`: metrics and the access line of every call.
"""

from codec_grpc.rpc.authn import Authenticator
from codec_grpc.rpc.executor import CallExecutor
from codec_grpc.rpc.observe import CallObserver, ObservedHealthServicer
from codec_grpc.rpc.server import ServerOptions, call_executor, create_server, grpc_server, serving_status
from codec_grpc.rpc.servicer import CodecServicer

__all__ = [
    "Authenticator",
    "CallExecutor",
    "CallObserver",
    "CodecServicer",
    "ObservedHealthServicer",
    "ServerOptions",
    "call_executor",
    "create_server",
    "grpc_server",
    "serving_status",
]
