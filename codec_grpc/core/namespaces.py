"""Temporal namespaces: what a valid name is, and which namespace a request is for.

Every transport resolves a request's namespace through :func:`resolve_namespace`,
so gRPC and HTTP agree on the rule (the first name given, else the server's
default) and on the error wording.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

from codec_grpc import errors

# The header (gRPC metadata key, HTTP header) the Temporal UI, CLI and our clients name the namespace in.
NAMESPACE_HEADER = "x-namespace"

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9._-]{1,255}$")


def parse_namespace(text: str) -> str:
    """A namespace name as written (surrounding blanks removed); ValueError when it is not one."""
    value = text.strip()
    if not _NAMESPACE_RE.match(value):
        shown = repr(text[:100]) + ("…" if len(text) > 100 else "")  # escaped and short: it is echoed
        raise ValueError(f"must be a Temporal namespace name (letters, digits, '.', '_', '-'), got {shown}")
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


class NamespaceScope:
    """The namespaces this server serves: the configured ones (the default, those with their own master
    key) and those matching ALLOWED_NAMESPACES (``*`` patterns; ``*`` alone: any). Every served
    namespace may cost a data key (a KMS call, a current-key slot): a multi-tenant server lists its
    tenants here, so that made-up namespaces are refused before they cost anything."""

    def __init__(self, patterns: tuple[str, ...] = ("*",), configured: tuple[str, ...] = ()) -> None:
        self.patterns = patterns
        self.configured = frozenset(configured) | {p for p in patterns if "*" not in p}
        self._any = "*" in patterns
        self._wild = tuple(p for p in patterns if "*" in p)

    def serves(self, namespace: str) -> bool:
        return self._any or namespace in self.configured or any(fnmatchcase(namespace, p) for p in self._wild)

    def check(self, namespace: str) -> None:
        if not self.serves(namespace):
            raise errors.AccessDeniedError(
                f"namespace {namespace!r} is not served by this codec server (ALLOWED_NAMESPACES)"
            )
