"""Memory bound: RSS of server.py after 2,000 distinct data keys and 200,000 encoded payloads.

Runs moto's KMS server and server.py as processes on 127.0.0.1. DATA_KEY_MAX_ENCRYPTIONS=100
makes every batch of 100 payloads use up a data key, so 200,000 payloads leave 2,000 data
keys cached. Then a fresh server decodes one payload of each data key (2,000 KMS Decrypts,
2,000 keys in its decrypted-key cache). RSS (all processes of the server, from /proc) is
printed along the way, against the Helm chart's 128 MiB limit, with the bytes per cached key.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc

from bench.run import process, rss_mib, start_kms
from codec_grpc.v1 import codec_pb2 as pb
from codec_grpc.v1 import codec_pb2_grpc
from tests.support.fixtures import free_port

LIMIT_MIB = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--payload-bytes", type=int, default=1024)
    args = parser.parse_args()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="codec-memory-")))
        server_env = {
            **start_kms(stack, workdir, "alias/memory"),
            "GRPC_HOST": "127.0.0.1",
            "GATEWAY_ENABLED": "false",
            "METRICS_ENABLED": "false",
            "LOG_LEVEL": "warning",
            "DATA_KEY_MAX_ENCRYPTIONS": str(args.batch),
            "MAX_PAYLOADS_PER_REQUEST": str(args.batch),
        }

        def start(name: str) -> tuple[Any, codec_pb2_grpc.CodecServiceStub]:
            port = free_port()
            proc = stack.enter_context(
                process(
                    [sys.executable, "server.py"], {**server_env, "GRPC_PORT": str(port)}, port, workdir / f"{name}.log"
                )
            )
            channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}"))
            return proc, codec_pb2_grpc.CodecServiceStub(channel)

        writer, stub = start("writer")
        body = os.urandom(args.payload_bytes // 2).hex().encode()[: args.payload_bytes]
        request = pb.EncodeRequest(payloads=[pb.Payload(metadata={"encoding": b"json/plain"}, data=body)] * args.batch)
        stub.Encode(request)
        base = rss_mib(writer.pid)
        print(f"writer after its first call: RSS {base:.1f} MiB")
        samples: list[pb.Payload] = []
        started = time.monotonic()
        for i in range(args.keys):
            encoded = stub.Encode(request).payloads
            samples.append(encoded[0])
            if (i + 1) % (args.keys // 4) == 0:
                stats = stub.Stats(pb.StatsRequest())
                print(
                    f"  {(i + 1) * args.batch:>7} payloads encoded, {stats.cached_keys_count:>5} data keys cached, "
                    f"RSS {rss_mib(writer.pid):.1f} MiB ({time.monotonic() - started:.0f} s)",
                    flush=True,
                )
        stats = stub.Stats(pb.StatsRequest())
        after = rss_mib(writer.pid)
        keys = stats.cached_keys_count
        print(
            f"writer: {args.keys * args.batch + args.batch} payloads, {keys} data keys cached, "
            f"{stats.kms_generate_data_key_calls} GenerateDataKey calls: RSS {after:.1f} MiB "
            f"(limit {LIMIT_MIB} MiB: {'ok' if after <= LIMIT_MIB else 'OVER'})"
        )

        reader, reader_stub = start("reader")
        reader_stub.Stats(pb.StatsRequest())
        reader_base = rss_mib(reader.pid)
        for i in range(0, len(samples), args.batch):
            reader_stub.Decode(pb.DecodeRequest(payloads=samples[i : i + args.batch]))
        reader_stats = reader_stub.Stats(pb.StatsRequest())
        reader_after = rss_mib(reader.pid)
        per_key = (reader_after - reader_base) * 1024 * 1024 / max(1, reader_stats.decrypted_cache_size)
        print(
            f"reader: {reader_stats.kms_decrypt_calls} Decrypt calls, {reader_stats.decrypted_cache_size} keys cached: "
            f"RSS {reader_base:.1f} -> {reader_after:.1f} MiB, about {per_key:.0f} bytes per cached key "
            f"(limit {LIMIT_MIB} MiB: {'ok' if reader_after <= LIMIT_MIB else 'OVER'})"
        )


if __name__ == "__main__":
    main()
