"""Temporal payload codec server: AES-256-GCM envelope encryption with AWS KMS data keys.

Layers, top to bottom; each imports only the layers below it (``make lint`` and
the tests check it with import-linter: ``[tool.importlinter]`` in pyproject.toml):

* ``runtime``: the composition root: configuration, wiring, metrics, logs, TLS,
  the WORKERS supervisor, the ``codec-server`` and ``codec-gateway`` processes;
* ``rpc`` (gRPC) and ``gateway`` (HTTP/JSON): the transports, independent of each
  other, each a thin layer over the service;
* ``service``: Encode, Decode and Stats on serialized bytes, for an authenticated
  caller: splitting, limits, namespace, authorization, errors and their status codes;
* ``storage``, beside ``service`` (neither imports the other): External Storage,
  references and their S3 objects, retrieved and offloaded within limits; with
  ``kms``, the only importer of boto3 and botocore;
* ``access``: who may do what: callers, bearer-token verification, the access
  policy (token claims and the policy file); the transports authenticate with it;
* ``core``: pure: the payload format, protobuf wire helpers, ``EnvelopeCodec``,
  namespace rules;
* ``keys``: key management: the key manager, its caches, single-flight, the
  key-provider interface;
* ``kms``: the key provider on AWS KMS, the only importer of boto3 and botocore.

Beside the layers, every layer may import ``errors`` (the domain error tree) and
``v1`` (generated protobuf code); neither imports a layer.
"""

from codec_grpc.core import EnvelopeCodec
from codec_grpc.errors import CodecError

__all__ = ["CodecError", "EnvelopeCodec"]
