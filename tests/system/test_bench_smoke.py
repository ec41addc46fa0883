"""`make bench` is a tool, not a test; this runs its gateway section at a tiny scale so that
the harness (processes, load generator, CPU accounting, table) cannot rot unnoticed."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.paths import ROOT


def test_gateway_bench_prints_a_ratio_line_per_case() -> None:
    # Enough calls that every measurement spans several of the CPU clock's 10 ms ticks.
    command = [sys.executable, "-m", "bench.run", "--only", "gateway", "--scale", "0.1"]
    command += ["--rounds", "1", "--batches", "1,10"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=360, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # call, batch | in-process µs, ratio | sidecar: gateway µs, codec µs, total µs, ratio | sample µs
    row = r"^(Encode|Decode) +(\d+) \| +\d+ +(\d+\.\d\d) \| +\d+ +\d+ +\d+ +(\d+\.\d\d) \| +\d+ \|"
    rows = re.findall(row, result.stdout, re.MULTILINE)
    assert [(method, batch) for method, batch, _, _ in rows] == [
        ("Encode", "1"),
        ("Encode", "10"),
        ("Decode", "1"),
        ("Decode", "10"),
    ], result.stdout
    assert all(float(inproc) > 0 and float(sidecar) > 0 for _, _, inproc, sidecar in rows), result.stdout
    assert "gRPC CodecService vs echo server" not in result.stdout  # --only gateway


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
