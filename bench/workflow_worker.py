"""One Temporal worker for bench/workflow.py, in a process of its own so that its CPU can be read
from /proc; and what it and the bench's client share: the workflow, its activity and each mode's
data converter.

    python -m bench.workflow_worker --mode none|remote|inprocess --address HOST:PORT --task-queue Q \\
        [--namespace default] [--codec-target HOST:PORT]

Modes (``converter``):

* ``none``: temporalio's default data converter, payloads in clear;
* ``remote``: ``temporal_codec_client.data_converter``: our server.py over gRPC at ``--codec-target``;
* ``inprocess``: the same format with the codec core embedded in this process: the ``CodecService``
  that server.py builds (``codec_grpc.runtime.wiring.build_service``), from the same
  settings (this process's environment: AWS_ENDPOINT_URL_KMS, KMS_KEY_ALIAS, ...; keys from KMS
  through boto3), called directly with the serialized requests the remote client would send.

Prints "ready" once the worker runs; stops on SIGTERM, SIGINT or when stdin closes. Payload contents
are never printed or logged.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from codec_grpc.access import ANONYMOUS_CALLER
from codec_grpc.runtime.config import load_config
from codec_grpc.runtime.wiring import build_service, kms_client, kms_clients
from codec_grpc.service import DECODE, ENCODE, CodecService
from codec_grpc.v1 import codec_pb2

MODES = ("none", "remote", "inprocess")
SHUTDOWN_SECONDS = 10.0


@activity.defn(name="BenchAnswer")  # type: ignore[untyped-decorator]  # temporalio is not type-checked here
async def answer(text: str) -> str:
    """The activity: a result as long as its input (1 KiB in, 1 KiB out)."""
    return text[::-1]


@workflow.defn(name="BenchOneActivity")
class OneActivity:
    """The workflow: one activity, its result returned."""

    @workflow.run  # type: ignore[untyped-decorator]
    async def run(self, text: str) -> str:
        result: str = await workflow.execute_activity(answer, text, start_to_close_timeout=timedelta(seconds=30))
        return result


class InProcessPayloadCodec(PayloadCodec):
    """``CodecService`` called in this process, on the bytes ``RemotePayloadCodec`` would send.

    As server.py's in-process gateway does (``InProcessUpstream``), a call first runs on the event
    loop with cached keys only, and again on a thread, where it may wait for KMS, when a key is not
    cached. The caller is the anonymous caller a server without authentication gives every call.
    """

    def __init__(self, service: CodecService, namespace: str) -> None:
        self._service = service
        self._namespace = namespace
        # The request is temporalio's Payloads followed by field 2 (namespace), as the remote client's.
        self._suffix = codec_pb2.EncodeRequest(namespace=namespace).SerializeToString()

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return await self._call(ENCODE, payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return await self._call(DECODE, payloads)

    async def _call(self, method: str, payloads: Sequence[Payload]) -> list[Payload]:
        if not payloads:
            return []
        request = Payloads(payloads=payloads).SerializeToString() + self._suffix
        batch = self._service.prepare(method, request, self._namespace, ANONYMOUS_CALLER)
        response = self._service.run_cached(batch)
        if response is None:
            response = await asyncio.to_thread(self._service.run, batch)
        result = list(Payloads.FromString(response).payloads)
        if len(result) != len(payloads):
            raise RuntimeError(f"in-process {method}: {len(result)} payloads answered for {len(payloads)}")
        return result


def in_process_service(environ: Mapping[str, str]) -> CodecService:
    """The ``CodecService`` server.py would build from ``environ`` (``wiring.build_service``, the
    service half of ``build_app``: no gRPC server, whose port would be bound), metrics unserved."""
    config = load_config({**environ, "GATEWAY_ENABLED": "false", "WORKERS": "1"})
    if not config.aws_endpoint_url_kms and not config.kms_regions:
        raise SystemExit("inprocess: AWS_ENDPOINT_URL_KMS (the bench's moto KMS) is not set")
    # boto3's chain would read credentials from os.environ: the bench's own process passes them in ``environ``.
    credentials = {
        argument: environ[name]
        for argument, name in (
            ("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
            ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
            ("aws_session_token", "AWS_SESSION_TOKEN"),
        )
        if name in environ
    }
    client = kms_clients(config, **credentials) if config.kms_regions else kms_client(config, **credentials)
    return build_service(config, client, CollectorRegistry()).service


def converter(mode: str, namespace: str, codec_target: str | None, environ: Mapping[str, str]) -> DataConverter:
    """The data converter of ``mode`` (see the module docstring); remote and inprocess also encrypt
    failures' messages, as ``temporal_codec_client.data_converter`` does."""
    if mode == "none":
        return DataConverter.default
    if mode == "remote":
        from temporal_codec_client import data_converter

        if not codec_target:
            raise SystemExit("remote: --codec-target is required")
        return data_converter(codec_target, namespace=namespace)
    if mode == "inprocess":
        codec = InProcessPayloadCodec(in_process_service(environ), namespace)
        return dataclasses.replace(
            DataConverter.default,
            payload_codec=codec,
            failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
        )
    raise ValueError(f"unknown mode {mode!r}")


async def serve(args: argparse.Namespace) -> None:
    data_converter = converter(args.mode, args.namespace, args.codec_target, os.environ)
    client = await Client.connect(args.address, namespace=args.namespace, data_converter=data_converter)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 4096):  # the bench closed its end (or died)
            loop.remove_reader(sys.stdin.fileno())
            stop.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    worker: Any = Worker(
        client,
        task_queue=args.task_queue,
        workflows=[OneActivity],
        activities=[answer],
        # As the test suite's worker; the sandbox would add its own cost to every workflow.
        workflow_runner=UnsandboxedWorkflowRunner(),
    )
    running = asyncio.create_task(worker.run())
    print("ready", flush=True)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        running.result()  # the worker failed: its exception, not a silent exit
        raise SystemExit("the worker stopped by itself")
    try:
        await asyncio.wait_for(worker.shutdown(), SHUTDOWN_SECONDS)
        await running
    except TimeoutError:
        print(f"worker: no clean shutdown within {SHUTDOWN_SECONDS:g}s", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--address", required=True, help="the Temporal frontend, host:port")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--codec-target", help="remote: the codec server's gRPC host:port")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
