"""`make bench` is a tool, not a test; this runs its gateway, compression and workflow sections at a
tiny scale so that the harness (processes, load generator, CPU accounting, table) cannot rot unnoticed."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.paths import ROOT
from tests.support.temporal import temporal_or_fail


def test_gateway_bench_prints_a_ratio_line_per_case() -> None:
    # Enough calls that every measurement spans several of the CPU clock's 10 ms ticks.
    command = [sys.executable, "-m", "bench.run", "--only", "gateway", "--scale", "0.1"]
    command += ["--rounds", "1", "--batches", "1,10", "--http-concurrency", "4,16"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=360, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # call, batch, concurrency | in-process µs, ratio | sidecar: gateway µs, codec µs, total µs, ratio | sample µs
    row = r"^(Encode|Decode) +(\d+) +(\d+) \| +\d+ +(\d+\.\d\d) \| +\d+ +\d+ +\d+ +(\d+\.\d\d) \| +\d+ \|"
    rows = re.findall(row, result.stdout, re.MULTILINE)
    assert [(method, batch, concurrency) for method, batch, concurrency, _, _ in rows] == [
        (method, batch, concurrency)
        for method in ("Encode", "Decode")
        for batch in ("1", "10")
        for concurrency in ("4", "16")
    ], result.stdout
    assert all(float(inproc) > 0 and float(sidecar) > 0 for *_, inproc, sidecar in rows), result.stdout
    assert "gRPC CodecService vs echo server" not in result.stdout  # --only gateway


def test_concurrency_bench_prints_a_line_per_case_pinned_and_not() -> None:
    command = [sys.executable, "-m", "bench.run", "--only", "concurrency", "--scale", "0.05"]
    command += ["--rounds", "1", "--batches", "1,100", "--in-flight", "1,16"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=360, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # rpc, batch, in flight | echo µs, ours µs, ratio, median ratio, [target] | echo pl/s, ours pl/s, tput
    row = (
        r"^(Encode|Decode) +(\d+) +(\d+) \| +\d+\.\d +\d+\.\d +(\d+\.\d\d) +\d+\.\d\d +(?:≥[0-9.]+)? *\| "
        r"+\d+ +\d+ +(\d+\.\d\d) \|"
    )
    rows = re.findall(row, result.stdout, re.MULTILINE)
    cases = [("Encode", "1", n) for n in ("1", "16")] + [
        (m, "100", n) for m in ("Encode", "Decode") for n in ("1", "16")
    ]
    assert [(method, batch, n) for method, batch, n, _, _ in rows] == cases * 2, result.stdout  # pinned, unpinned
    assert all(float(ratio) > 0 and float(tput) > 0 for *_, ratio, tput in rows), result.stdout
    assert re.search(r"^Encode +1 +16 \|.* (ok|MISS)", result.stdout, re.MULTILINE), result.stdout  # a target judged


def test_compression_bench_prints_a_line_per_size_and_algorithm() -> None:
    command = [sys.executable, "-m", "bench.compression", "--compression-levels", "default"]
    command += ["--rounds", "1", "--scale", "0.2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"gRPC transfer on loopback, both ends: \d+\.\d\d ns of CPU per byte", result.stdout)
    rows = re.findall(r"^ +(\d+) (off|zstd|zlib) +(\d*) \| +(\d+) +(-?\d+\.\d)% \|", result.stdout, re.MULTILINE)
    assert [(algorithm, level) for _, algorithm, level, _, _ in rows] == [("off", ""), ("zstd", "1"), ("zlib", "1")] * 5
    sizes = sorted({int(size) for size, *_ in rows})
    assert sizes[0] >= 1024 and sizes[-1] >= 1024 * 1024
    assert all(float(saved) > 40 for _, algorithm, _, _, saved in rows if algorithm != "off"), result.stdout
    assert re.search(r"^ +\d+ zstd +1 \|.*(ok|MISS)$", result.stdout, re.MULTILINE), result.stdout


def test_workflow_bench_prints_each_mode_and_the_overhead() -> None:
    temporal_or_fail()  # the section runs the real Temporal dev server: missing, this fails, never skips
    command = [sys.executable, "-m", "bench.run", "--only", "workflow", "--workflows", "6", "--rounds", "2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    number = r"(\d+\.\d\d)"
    # mode, workflows | p50, p99, mean, round p50s | worker CPU, codec server CPU (remote only), Temporal CPU
    row = rf"^(none|remote|in-process) +6 \| +{number} +{number} +{number} +[\d.]+ to [\d.]+ "
    row += rf"\| +{number} +(\S+) +{number}$"
    rows = re.findall(row, result.stdout, re.MULTILINE)
    assert [mode for mode, *_ in rows] == ["none", "remote", "in-process"], result.stdout
    assert all(float(p50) > 0 and float(p99) >= float(p50) for _, p50, p99, *_ in rows), result.stdout
    codec_cpu = {mode: figure for mode, _, _, _, _, figure, _ in rows}
    assert re.fullmatch(r"\d+\.\d\d", codec_cpu["remote"]) and codec_cpu["none"] == codec_cpu["in-process"] == "-"
    overhead = r"^  (remote|in-process) +[+-]\d+\.\d\d ms = [+-]\d+\.\d% of none's p50, [+-]\d+\.\d% of its own;"
    assert re.findall(overhead, result.stdout, re.MULTILINE) == ["remote", "in-process"], result.stdout
    assert re.search(r"^  remote .* (ok|MISS)$", result.stdout, re.MULTILINE), result.stdout
    assert "in-process worker's stored result: same format ok" in result.stdout
    burst = rf"^(none|remote|in-process) +6 \| +{number} +{number} +\d+\.\d \| +{number} +\S+$"
    assert [mode for mode, *_ in re.findall(burst, result.stdout, re.MULTILINE)] == ["none", "remote", "in-process"]
    assert "gRPC CodecService vs echo server" not in result.stdout  # --only workflow
