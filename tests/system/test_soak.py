"""`make soak` in miniature, so the tool cannot rot: a few seconds of load, every figure reported."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT


def test_soak_runs_briefly_and_reports() -> None:
    soak = [sys.executable, "-m", "bench.soak", "--seconds", "3", "--sample-every", "1"]
    done = subprocess.run(
        [*soak, "--grpc-clients", "2", "--http-clients", "1"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = re.search(r"round trips: (\d+) \((\d+) gRPC, (\d+) HTTP\).*errors: 0, mismatches: 0", done.stdout)
    assert summary is not None, done.stdout
    assert int(summary[2]) > 0 and int(summary[3]) > 0
    assert "server log errors: 0" in done.stdout and done.stdout.rstrip().endswith("soak: ok")


def test_soak_verdict_fails_on_errors_mismatches_growth_and_logged_errors(tmp_path: Path) -> None:
    from argparse import Namespace

    from bench.soak import Tally, verdict

    args, log = Namespace(max_growth_mib=10.0), tmp_path / "server.log"
    log.write_text("2026-01-01 INFO codec_server: fine\n")
    samples = [(0.0, 100.0), (10.0, 101.0), (20.0, 105.0)]
    healthy = Tally()
    healthy.ok("grpc", 5)
    assert verdict(args, healthy, samples, 5.0, log) == 0
    for kind in ("error", "mismatch"):
        broken = Tally()
        broken.ok("grpc", 5)
        broken.problem(kind, "what went wrong")
        assert verdict(args, broken, samples, 5.0, log) == 1
    assert verdict(args, healthy, [(0.0, 100.0), (10.0, 101.0), (20.0, 112.0)], 5.0, log) == 1  # grew 11 MiB
    log.write_text("2026-01-01 ERROR codec_grpc.service: internal error: KeyError at x.py:1\n")
    assert verdict(args, healthy, samples, 5.0, log) == 1
