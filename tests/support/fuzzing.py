"""Hypothesis settings for the property and fuzz tests: bounded in `make test`, larger in `make fuzz`.

``FUZZ_EXAMPLES`` (set by `make fuzz`) replaces every test's own example count; the tests read it
here because they, unlike library code, may look at the environment.
"""

from __future__ import annotations

import os

from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings

from codec_grpc.service import SERVICE_NAME
from codec_grpc.v1 import codec_pb2 as pb
from tests.support.fixtures import RunningCodec

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))


def examples(bounded: int) -> settings:
    """``bounded`` examples in `make test`, FUZZ_EXAMPLES in `make fuzz`; no per-example deadline
    (examples over sockets vary in time), and a server fixture shared by every example is intended."""
    return settings(
        max_examples=FUZZ_EXAMPLES or bounded,
        # The bounded run tries the same examples every time (a CI failure reproduces); make fuzz explores.
        derandomize=not FUZZ_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def assert_healthy(server: RunningCodec) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", SERVICE_NAME):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    payload = pb.Payload(metadata={"encoding": b"json/plain"}, data=b'"still here"')
    encoded = server.stub.Encode(pb.EncodeRequest(payloads=[payload]), timeout=10).payloads
    assert list(server.stub.Decode(pb.DecodeRequest(payloads=encoded), timeout=10).payloads) == [payload]
