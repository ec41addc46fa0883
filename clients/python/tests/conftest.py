"""Tests of the installed ``temporal_codec_client``.

Its ``v1.codec_pb2`` exists only in a build (``setup.py`` generates it), so the package must
be installed first: ``pip install ./clients/python``. This folder has no ``__init__.py`` on
purpose: pytest then puts only this folder on ``sys.path``, never ``clients/python``, whose
source tree would hide the installed package.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    try:
        from temporal_codec_client.v1 import codec_pb2  # noqa: F401
    except ImportError as exc:
        raise pytest.UsageError(
            f"temporal_codec_client is not installed with its generated messages ({exc}); "
            "run `pip install ./clients/python` first, and pytest from anywhere but clients/python "
            "with `python -m pytest` (which would import the source tree)"
        ) from exc
