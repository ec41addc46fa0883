"""Temporal namespaces: what a valid name is, and which namespace a request is for.

Every transport resolves a request's namespace through :func:`resolve_namespace`,
so gRPC and HTTP agree on the rule (the first name given, else the server's
default) and on the error wording.
"""

from __future__ import annotations

import re

from codec_grpc import errors

# The header (gRPC metadata key, HTTP header) the Temporal UI, CLI and our clients name the namespace in.
NAMESPACE_HEADER = "x-namespace"

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9._-]{1,255}$")


def parse_namespace(text: str) -> str:
    """A namespace name as written (surrounding blanks removed); ValueError when it is not one."""
    value = text.strip()
    if not _NAMESPACE_RE.match(value):
        raise ValueError(f"must be a Temporal namespace name (letters, digits, '.', '_', '-'), got {text!r}")
    return value


def resolve_namespace(*named: str, default: str) -> str:
    """The namespace of a request: the first non-empty of ``named``, in order of precedence (gRPC: the
    request's field, then the header; HTTP: the header, then the path), else ``default``.

    Raises :class:`~codec_grpc.errors.RequestError` when the chosen name is not a namespace name.
    """
    chosen = next((name for name in named if name), "")
    if not chosen:
        return default
    try:
        return parse_namespace(chosen)
    except ValueError as exc:
        raise errors.RequestError(f"invalid namespace: {exc}") from None
