"""docs/format-v2.md is version 2's specification: its constants are the code's, and the reader it shows,
run as written, decrypts and decompresses the committed test vectors, and fails on altered ones."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from codec_grpc.core import compression, envelope
from tests.support.paths import DOCS, ROOT

PAGE = (DOCS / "format-v2.md").read_text(encoding="utf-8")
VECTORS = ROOT / "tests" / "vectors" / "format_v2.json"


def constants() -> dict[str, str]:
    section = PAGE.split("## Constants", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", section, re.M)
    return {name.strip(): value.strip() for name, value in rows if not set(name) <= {"-", "|"} and name != "constant"}


def test_the_constants_table_is_the_code() -> None:
    table = constants()
    assert table["version string, the AAD prefix"] == f"`{envelope.AAD_PREFIX_V2.decode()}`"
    assert table["`encoding` of an encrypted payload"] == f"`{envelope.ENCODING.decode()}`"
    assert table["`encryption-algorithm`"] == f"`{envelope.ALGORITHM.decode()}`"
    assert table["`encryption-compression`"] == ", ".join(f"`{name}`" for name in envelope.COMPRESSIONS)
    keys = [envelope.ENCODING_KEY, envelope.KEY_ID_KEY, envelope.DATA_KEY_KEY, envelope.ALGORITHM_KEY]
    keys += [envelope.NAMESPACE_KEY, envelope.COMPRESSION_KEY]
    assert table["metadata keys"] == ", ".join(f"`{key}`" for key in keys)
    assert table["largest zstd window"] == f"`{compression.ZSTD_MAX_WINDOW}` bytes"
    assert table["data key size"] == f"`{envelope.KEY_SIZE}` bytes"
    assert table["nonce size"] == f"`{envelope.NONCE_SIZE}` bytes"
    assert table["tag size"] == f"`{envelope.TAG_SIZE}` bytes"


def test_the_documented_defaults_are_the_code() -> None:
    policy = compression.CompressionPolicy()
    assert f"`COMPRESSION_MIN_BYTES` bytes ({policy.min_bytes} by default)" in PAGE
    assert f"`COMPRESSION_MAX_RATIO` ({policy.max_ratio})" in PAGE
    assert f"({envelope.compression_overhead('zstd')} bytes for `zstd` and\n  `zlib`)" in PAGE
    assert envelope.compression_overhead("zstd") == envelope.compression_overhead("zlib")


def reader() -> str:
    (code,) = re.findall(r"```python\n(.*?)```", PAGE, re.S)
    return str(code)


def run_reader(cwd: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )


def test_the_documented_reader_decrypts_and_decompresses_every_vector() -> None:
    result = run_reader(ROOT, reader() + "\nprint(len(doc['vectors']))\n")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == len(json.loads(VECTORS.read_text())["vectors"]) >= 5


def altered(tmp_path: Path, change: Any) -> Path:
    document = json.loads(VECTORS.read_text())
    change(next(v for v in document["vectors"] if v["compression"] == "zstd"))
    (tmp_path / "tests" / "vectors").mkdir(parents=True)
    (tmp_path / "tests" / "vectors" / "format_v2.json").write_text(json.dumps(document))
    return tmp_path


def test_the_documented_reader_fails_on_altered_data(tmp_path: Path) -> None:
    def flip(vector: dict[str, Any]) -> None:
        vector["data"] = vector["data"][:-1] + ("0" if vector["data"][-1] != "0" else "1")

    result = run_reader(altered(tmp_path, flip), reader())
    assert result.returncode != 0
    assert "InvalidTag" in result.stderr


def test_the_documented_reader_fails_on_an_altered_algorithm(tmp_path: Path) -> None:
    """zstd made zlib in the metadata and in the associated data alike: the tag check fails, the
    reader never gets to decompress."""

    def swap(vector: dict[str, Any]) -> None:
        vector["metadata"]["encryption-compression"] = b"zlib".hex()
        assert vector["associated_data"].endswith(b"zstd".hex())
        vector["associated_data"] = vector["associated_data"][: -len(b"zstd".hex())] + b"zlib".hex()

    result = run_reader(altered(tmp_path, swap), reader())
    assert result.returncode != 0
    assert "InvalidTag" in result.stderr
