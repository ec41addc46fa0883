"""The TypeScript codec (clients/typescript) against the real server: runs its `npm test`.

The Node tests cover round trips, pass-through, namespaces and errors; this test
starts the server they talk to and checks their result. It fails, rather than
skips, when the package's dependencies are not installed: CI must run them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.support.paths import ROOT

PACKAGE = ROOT / "clients" / "typescript"
MIN_NODE_TESTS = 15


def npm_or_fail() -> str:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed: the TypeScript codec needs Node.js 20+ with npm")
    if not (PACKAGE / "node_modules").is_dir():
        pytest.fail("clients/typescript/node_modules is missing: run `npm ci --prefix clients/typescript`")
    return npm


def test_typescript_codec_passes_its_node_tests_against_the_real_server(codec_server, make_key):
    npm = npm_or_fail()
    alias, _ = make_key()
    server = codec_server(KMS_KEY_ALIAS=alias)
    env = {**os.environ, "CODEC_SERVER_TARGET": server.target}

    result = subprocess.run(
        [npm, "test"], cwd=PACKAGE, env=env, capture_output=True, text=True, timeout=240, check=False
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    counts = {name: int(n) for name, n in re.findall(r"^# (pass|fail|cancelled|skipped) (\d+)$", output, re.M)}
    assert counts.get("fail") == 0, output[-6000:]
    assert counts.get("cancelled") == 0, output[-6000:]
    assert counts.get("skipped") == 0, output[-6000:]
    assert counts.get("pass", 0) >= MIN_NODE_TESTS, output[-6000:]
    # The server really served them: data keys were generated through KMS.
    assert server.kms["GenerateDataKey"] >= 1
