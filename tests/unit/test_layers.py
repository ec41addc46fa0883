"""The layer rule of codec_grpc (its package docstring) holds, and its check would notice a breach."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter with the contracts of pyproject.toml, on the package found under ``root``."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_every_contract_is_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "codec_grpc", tmp_path / "codec_grpc", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_an_upward_import_breaks_the_layers_contract(tmp_path: Path) -> None:
    root = copy_of_the_package(tmp_path)
    keys = root / "codec_grpc" / "keys" / "manager.py"
    keys.write_text(keys.read_text() + "\nfrom codec_grpc.service import CodecService  # noqa\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "Layers: each imports only the layers below it (codec_grpc/__init__.py) BROKEN" in result.stdout
    assert "codec_grpc.keys.manager -> codec_grpc.service" in result.stdout


def test_boto3_outside_the_kms_layer_breaks_a_contract(tmp_path: Path) -> None:
    root = copy_of_the_package(tmp_path)
    service = root / "codec_grpc" / "service.py"
    service.write_text(service.read_text() + "\nimport boto3  # noqa\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "Only the KMS and storage layers talk to AWS BROKEN" in result.stdout
