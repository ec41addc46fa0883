"""docs/format-v1.md is the format's specification: its constants are the code's, and the reader it
shows, run as written, decrypts the committed test vectors."""

from __future__ import annotations

import re
import subprocess
import sys

from codec_grpc.core import envelope
from codec_grpc.kms.provider import KEY_SIZE, NAMESPACE_CONTEXT_KEY
from tests.support.paths import DOCS, ROOT

PAGE = (DOCS / "format-v1.md").read_text(encoding="utf-8")


def constants() -> dict[str, str]:
    """The rows of the page's Constants table: description → cell, backticks kept."""
    section = PAGE.split("## Constants", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", section, re.M)
    return {name.strip(): value.strip() for name, value in rows if not set(name) <= {"-", "|"} and name != "constant"}


def test_the_constants_table_is_the_code() -> None:
    table = constants()
    assert table["version string, the AAD prefix"] == f"`{envelope.AAD_PREFIX.decode()}`"
    assert table["`encoding` of an encrypted payload"] == f"`{envelope.ENCODING.decode()}`"
    assert table["`encryption-algorithm`"] == f"`{envelope.ALGORITHM.decode()}`"
    keys = (envelope.ENCODING_KEY, envelope.KEY_ID_KEY, envelope.DATA_KEY_KEY, envelope.ALGORITHM_KEY)
    assert table["metadata keys"] == ", ".join(f"`{key}`" for key in (*keys, envelope.NAMESPACE_KEY))
    assert table["KMS encryption-context key"] == f"`{NAMESPACE_CONTEXT_KEY}`"
    assert table["data key size"] == f"`{envelope.KEY_SIZE}` bytes" == f"`{KEY_SIZE}` bytes"
    assert table["nonce size"] == f"`{envelope.NONCE_SIZE}` bytes"
    assert table["tag size"] == f"`{envelope.TAG_SIZE}` bytes"


def test_the_documented_reader_decrypts_and_reproduces_every_vector() -> None:
    (reader,) = re.findall(r"```python\n(.*?)```", PAGE, re.S)
    checked = reader + "\nprint(len(doc['vectors']))\n"
    result = subprocess.run(
        [sys.executable, "-c", checked], cwd=ROOT, capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 4


def test_the_documented_reader_fails_on_a_tampered_vector(tmp_path) -> None:
    """The reader is no check that cannot fail: one flipped bit of a vector makes it raise."""
    (reader,) = re.findall(r"```python\n(.*?)```", PAGE, re.S)
    vectors = (ROOT / "tests" / "vectors" / "format_v1.json").read_text()
    data = re.search(r'"data": "([0-9a-f]+)"', vectors)
    assert data is not None
    flipped = data.group(1)[:-1] + ("0" if data.group(1)[-1] != "0" else "1")
    (tmp_path / "tests" / "vectors").mkdir(parents=True)
    (tmp_path / "tests" / "vectors" / "format_v1.json").write_text(vectors.replace(data.group(1), flipped, 1))
    result = subprocess.run(
        [sys.executable, "-c", reader], cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode != 0
    assert "InvalidTag" in result.stderr
