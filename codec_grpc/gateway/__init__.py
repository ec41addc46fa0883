"""The HTTP/JSON transport for the Temporal Web UI, CLI and Go SDK's remote codec.

* :mod:`~codec_grpc.gateway.app`: the aiohttp application: routes, CORS, the
  access line of every request;
* :mod:`~codec_grpc.gateway.statuses`: :class:`HttpError` and the one map from
  status codes to HTTP statuses;
* :mod:`~codec_grpc.gateway.jsonwire` (fast path) and :mod:`~codec_grpc.gateway.body`
  (reference path, every error's wording): JSON bodies to and from the wire format;
* :mod:`~codec_grpc.gateway.auth`: optional bearer tokens;
* :mod:`~codec_grpc.gateway.upstreams`: the codec service in this process, or over gRPC;
* :mod:`~codec_grpc.gateway.storage`: External Storage on the codec routes: references
  resolved, kept (``?preserveStorageRefs=true``), downloaded, and large payloads offloaded;
* :mod:`~codec_grpc.gateway.runner`: serving it on a port, on a thread of its own.
"""

from codec_grpc.gateway.app import GatewaySettings, create_app
from codec_grpc.gateway.runner import GatewayThread, RunningGateway, serve
from codec_grpc.gateway.statuses import HttpError, http_error_for_status
from codec_grpc.gateway.upstreams import GrpcUpstream, InProcessUpstream, Upstream

__all__ = [
    "GatewaySettings",
    "GatewayThread",
    "GrpcUpstream",
    "HttpError",
    "InProcessUpstream",
    "RunningGateway",
    "Upstream",
    "create_app",
    "http_error_for_status",
    "serve",
]
