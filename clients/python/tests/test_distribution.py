"""The distribution installs into a fresh virtual environment with only its own dependencies.

Installs ``clients/python`` from the real package index (pip's cache is fine) and prints
what it installed; skipped only when the index cannot be reached.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parent.parent
MUST_HAVE = {"temporal-codec-client", "grpcio", "protobuf", "temporalio"}
MUST_NOT_HAVE = {"boto3", "botocore", "aiohttp", "prometheus-client", "pyjwt", "cryptography", "temporal-codec-grpc"}
# pip's words when it cannot reach the index ("versions: none" rather than a list of versions).
UNREACHABLE = (
    "(from versions: none)",
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ProxyError",
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # check=False: the caller reads the output first (an unreachable index is a skip, not a failure).
    command_line = [str(part) for part in command]
    return subprocess.run(command_line, cwd=cwd, capture_output=True, text=True, timeout=800, check=False)


@pytest.mark.timeout(900)
def test_a_fresh_venv_gets_the_client_and_its_three_dependencies_only(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"

    install = run(python, "-m", "pip", "install", "--disable-pip-version-check", CLIENT, cwd=tmp_path)
    output = install.stdout + install.stderr
    if install.returncode != 0 and any(marker in output for marker in UNREACHABLE):
        pytest.skip(f"the package index is unreachable:\n{output[-2000:]}")
    assert install.returncode == 0, output

    listing = run(python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    installed = {canonical(item["name"]): item["version"] for item in json.loads(listing.stdout)}
    report = "\n".join(f"{name}=={version}" for name, version in sorted(installed.items()))
    (tmp_path / "installed.txt").write_text(report + "\n")
    print(f"pip install {CLIENT} into a fresh venv installed ({tmp_path / 'installed.txt'}):\n{report}")

    assert installed.keys() >= MUST_HAVE
    assert installed.keys() & MUST_NOT_HAVE == set()

    script = "import temporal_codec_client\nfrom temporal_codec_client.v1 import codec_pb2\nprint(codec_pb2.__file__)"
    imported = run(python, "-W", "error", "-c", script, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith(str(venv)), imported.stdout
