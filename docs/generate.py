"""Writes the generated sections of docs/ from the code: ``make docs``.

A generated section sits between two marker lines::

    <!-- BEGIN GENERATED: NAME (make docs) -->
    <!-- END GENERATED: NAME -->

and is rewritten whole. ``--check`` writes nothing and exits 1 when a section is
stale (tests/docs runs the same check).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from codec_grpc.runtime.config import SETTINGS

DOCS = Path(__file__).resolve().parent


def settings_table() -> str:
    """Every setting: its variable, flag, default and help, as ``--help`` shows them."""
    rows = ["| Variable | Flag | Default | What it sets |", "|---|---|---|---|"]
    for setting in SETTINGS:
        default = f"`{setting.default}`" if setting.default else "unset"
        rows.append(f"| `{setting.env}` | `{setting.flag}` | {default} | {_cell(setting.help)} |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


SECTIONS: dict[tuple[str, str], Callable[[], str]] = {
    ("configuration.md", "settings"): settings_table,
}


def render(text: str, name: str, content: str) -> str:
    """``text`` with section ``name`` replaced by ``content``; ValueError when its markers are missing."""
    pattern = re.compile(
        rf"(<!-- BEGIN GENERATED: {re.escape(name)} \(make docs\) -->\n).*?(<!-- END GENERATED: {re.escape(name)} -->)",
        re.S,
    )
    if not pattern.search(text):
        raise ValueError(f"no markers for the generated section {name!r}")
    return pattern.sub(lambda match: match.group(1) + content + "\n" + match.group(2), text, count=1)


def stale(docs: Path = DOCS) -> list[str]:
    """The files whose generated sections differ from what the code gives now."""
    return [file for file, text in _rendered(docs).items() if (docs / file).read_text(encoding="utf-8") != text]


def _rendered(docs: Path) -> dict[str, str]:
    texts: dict[str, str] = {}
    for (file, name), make in SECTIONS.items():
        text = texts.get(file) or (docs / file).read_text(encoding="utf-8")
        texts[file] = render(text, name, make())
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a section is stale")
    args = parser.parse_args(argv)
    if args.check:
        files = stale()
        for file in files:
            print(f"docs/{file}: generated sections are stale; run `make docs`", file=sys.stderr)
        return 1 if files else 0
    for file, text in _rendered(DOCS).items():
        (DOCS / file).write_text(text, encoding="utf-8")
        print(f"docs/{file}: generated sections written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
