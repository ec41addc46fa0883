"""Who is calling: a :class:`Caller`, from a verified token or a verified client certificate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from cryptography import x509
from cryptography.x509.oid import NameOID

ANONYMOUS = "anonymous"
TOKEN = "token"  # noqa: S105 - a kind of caller, not a secret
CERTIFICATE = "certificate"
_SHOWN_CHARS = 200


OPERATIONS = frozenset({"encode", "decode", "stats"})


@dataclass(frozen=True)
class Grant:
    """Operations permitted in the namespaces matching any of ``namespaces`` (``*`` patterns)."""

    namespaces: tuple[str, ...]
    operations: frozenset[str]

    def allows(self, operation: str, namespace: str) -> bool:
        return operation in self.operations and any(fnmatchcase(namespace, pattern) for pattern in self.namespaces)

    def everywhere(self, operation: str) -> bool:
        """Whether it grants ``operation`` in every namespace."""
        return operation in self.operations and "*" in self.namespaces


@dataclass(frozen=True)
class Caller:
    """An authenticated identity, or the anonymous caller of a server without authentication.

    ``name`` is the token's subject or the certificate's identity; ``groups`` come from the
    token's groups claim; ``claimed`` is what the token's claims grant (None when no claim
    is configured to grant anything: the access policy alone decides).
    """

    kind: str
    name: str = ""
    groups: tuple[str, ...] = ()
    claimed: Grant | None = None

    def __str__(self) -> str:
        """How refusals and access lines name the caller: printable, bounded, never a token."""
        if self.kind == ANONYMOUS:
            return "the anonymous caller"
        shown = "".join(c if c.isprintable() else "?" for c in self.name[:_SHOWN_CHARS])
        return f"{self.kind} {shown!r}"


ANONYMOUS_CALLER = Caller(ANONYMOUS)


def certificate_identity(pem: bytes) -> str:
    """A client certificate's identity: its SPIFFE ID (a ``spiffe://`` URI SAN), else its first DNS
    SAN, else its subject's common name; "" when it has none of these."""
    certificate = x509.load_pem_x509_certificate(pem)
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = None
    if names is not None:
        spiffe = [uri for uri in names.get_values_for_type(x509.UniformResourceIdentifier) if _is_spiffe(uri)]
        if spiffe:
            return str(spiffe[0])
        dns: Sequence[str] = names.get_values_for_type(x509.DNSName)
        if dns:
            return str(dns[0])
    common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common_names[0].value) if common_names else ""


def _is_spiffe(uri: str) -> bool:
    return uri.lower().startswith("spiffe://")
