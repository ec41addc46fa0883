"""Where things are in the repository, for tests of every tier."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "server.py"
VECTORS = ROOT / "tests" / "vectors"
DOCS = ROOT / "docs"
