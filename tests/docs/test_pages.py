"""The README is a front page, the docs are linked and their generated parts are current."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from codec_grpc.runtime.config import SETTINGS
from tests.support.paths import DOCS, ROOT

README = ROOT / "README.md"
PAGES = sorted(DOCS.glob("*.md"))
MARKDOWN = [README, ROOT / "CHANGELOG.md", *PAGES, ROOT / "clients" / "python" / "README.md"]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_sections_are_current() -> None:
    assert generator().stale() == [], "run `make docs`"


def test_a_stale_section_is_noticed(tmp_path: Path) -> None:
    """The check above can fail: the settings table with one row changed is stale."""
    shutil.copytree(DOCS, tmp_path / "docs")
    page = tmp_path / "docs" / "configuration.md"
    text = page.read_text(encoding="utf-8")
    setting = SETTINGS[0]
    assert f"| `{setting.env}` |" in text
    page.write_text(text.replace(setting.help, setting.help + " (edited by hand)"), encoding="utf-8")
    assert generator().stale(tmp_path / "docs") == ["configuration.md"]


def test_every_setting_is_in_the_generated_table_and_nowhere_else_as_a_table() -> None:
    table = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert [setting.env for setting in SETTINGS] == re.findall(r"^\| `([A-Z_0-9]+)` \| `--", table, re.M)
    names = {setting.env for setting in SETTINGS}
    for path in MARKDOWN:
        if path.name == "configuration.md":
            continue
        rows = re.findall(r"^\| `([A-Z_0-9]+)` \|", path.read_text(encoding="utf-8"), re.M)
        assert not set(rows) & names, f"{path.name} has a settings table: the generated one is the only one"


def test_the_readme_is_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 210
    head = "\n".join(lines[:12])
    assert "make run" in head and "make test" in head  # the two commands come first
    linked = set(re.findall(r"\]\((docs/[a-z0-9-]+\.md)", "\n".join(lines)))
    assert linked >= {f"docs/{page.name}" for page in PAGES}, "every docs page is linked from the README"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not ours to check offline
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        assert resolved.exists(), f"{path.name}: broken link {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{path.name}: no heading for #{anchor} in {resolved.name}"


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}
