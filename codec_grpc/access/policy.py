"""Authorization: which caller may encode, decode or read stats in which namespace.

One model for both transports. A caller's permissions are the union of

* what its token's claims grant (``AUTH_NAMESPACES_CLAIM``, ``AUTH_OPERATIONS_CLAIM``), and
* the grants of the policy file (``AUTHZ_POLICY_FILE``) that name it: by certificate identity,
  token subject or token group, with ``*`` patterns.

With neither configured, every authenticated caller may do everything (the identity provider or
the client CA is the whole trust), as may the anonymous caller of a server without authentication.
The policy file, YAML or JSON (JSON is YAML)::

    grants:
      - certificates: ["spiffe://example.org/ns/orders/sa/*"]   # workers of one namespace
        namespaces: [orders]
        operations: [encode, decode]
      - groups: [temporal-readers]                               # people, in the UI
        namespaces: ["*"]
        operations: [decode]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import yaml

from codec_grpc import errors
from codec_grpc.access.identity import ANONYMOUS, CERTIFICATE, OPERATIONS, Caller, Grant

_NAMESPACE_PATTERN = re.compile(r"^[A-Za-z0-9._*-]{1,255}$")
_WHO = ("certificates", "subjects", "groups")
_FIELDS = frozenset({*_WHO, "namespaces", "operations"})


@dataclass(frozen=True)
class Rule:
    """One grant of the policy file, and whom it names."""

    certificates: tuple[str, ...]
    subjects: tuple[str, ...]
    groups: tuple[str, ...]
    grant: Grant

    def names(self, caller: Caller) -> bool:
        if caller.kind == CERTIFICATE:
            return _any_match(caller.name, self.certificates)
        return _any_match(caller.name, self.subjects) or any(_any_match(g, self.groups) for g in caller.groups)


def _any_match(value: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(value, pattern) for pattern in patterns)


class AccessPolicy:
    """Answers whether a caller may do an operation in a namespace (see the module docstring)."""

    def __init__(self, rules: Sequence[Rule] | None = None) -> None:
        self.rules = None if rules is None else tuple(rules)

    @property
    def restricts_namespaces(self) -> bool:
        """Whether some grant of the policy file is limited to certain namespaces."""
        return any(rule.grant.namespaces != ("*",) for rule in self.rules or ())

    def allows(self, caller: Caller, operation: str, namespace: str) -> bool:
        grants = self._grants(caller)
        return grants is None or any(grant.allows(operation, namespace) for grant in grants)

    def allows_everywhere(self, caller: Caller, operation: str) -> bool:
        """Whether ``caller`` may do ``operation`` in every namespace (sees what is not per namespace)."""
        grants = self._grants(caller)
        return grants is None or any(grant.everywhere(operation) for grant in grants)

    def check(self, caller: Caller, operation: str, namespace: str) -> None:
        """Raise :class:`~codec_grpc.errors.AccessDeniedError` unless ``caller`` may do it."""
        if not self.allows(caller, operation, namespace):
            raise errors.AccessDeniedError(f"{caller} may not {operation} in namespace {namespace!r}")

    def _grants(self, caller: Caller) -> list[Grant] | None:
        """The caller's grants; None when nothing restricts it."""
        if caller.kind == ANONYMOUS or (self.rules is None and caller.claimed is None):
            return None
        grants = [rule.grant for rule in self.rules or () if rule.names(caller)]
        if caller.claimed is not None:
            grants.append(caller.claimed)
        return grants


def load_policy(path: str) -> AccessPolicy:
    """Read and check a policy file; ConfigError naming the file and the line at fault."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.ConfigError("AUTHZ_POLICY_FILE", f"cannot read {path}: {exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else 1
        raise errors.ConfigError("AUTHZ_POLICY_FILE", f"{path}:{line}: not YAML or JSON: {exc.problem}") from None
    return AccessPolicy(_Reader(path).rules(root))


class _Reader:
    """Walks the composed YAML nodes, so that every complaint names its line."""

    def __init__(self, path: str) -> None:
        self._path = path

    def fail(self, node: yaml.Node | None, message: str) -> errors.ConfigError:
        line = 1 if node is None else node.start_mark.line + 1
        return errors.ConfigError("AUTHZ_POLICY_FILE", f"{self._path}:{line}: {message}")

    def rules(self, root: yaml.Node | None) -> list[Rule]:
        if not isinstance(root, yaml.MappingNode):
            raise self.fail(root, 'expected a mapping with a "grants" list')
        fields = self.mapping(root, {"grants"})
        grants = fields.get("grants")
        if not isinstance(grants, yaml.SequenceNode):
            raise self.fail(grants or root, '"grants" must be a list of grants')
        return [self.rule(node) for node in grants.value]

    def rule(self, node: yaml.Node) -> Rule:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, "a grant must be a mapping (certificates/subjects/groups, namespaces, operations)")
        fields = self.mapping(node, _FIELDS)
        who = {name: self.strings(fields[name], name) for name in _WHO if name in fields}
        if not any(who.values()):
            raise self.fail(node, "a grant must name whom it is for: certificates, subjects or groups")
        if "namespaces" not in fields or "operations" not in fields:
            raise self.fail(node, "a grant needs namespaces and operations")
        namespaces = self.strings(fields["namespaces"], "namespaces")
        for pattern in namespaces:
            if not _NAMESPACE_PATTERN.match(pattern):
                raise self.fail(fields["namespaces"], f"{pattern!r} is not a namespace name or * pattern")
        operations = self.strings(fields["operations"], "operations")
        unknown = sorted(set(operations) - OPERATIONS)
        if unknown:
            raise self.fail(fields["operations"], f"unknown operation {unknown[0]!r}: use encode, decode, stats")
        grant = Grant(tuple(namespaces), frozenset(operations))
        return Rule(who.get("certificates", ()), who.get("subjects", ()), who.get("groups", ()), grant)

    def mapping(self, node: yaml.MappingNode, allowed: frozenset[str] | set[str]) -> dict[str, yaml.Node]:
        fields: dict[str, yaml.Node] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else ""
            if name not in allowed:
                raise self.fail(key, f"unknown field {str(name)[:40]!r}: expected one of {', '.join(sorted(allowed))}")
            if name in fields:
                raise self.fail(key, f"{name!r} is given twice")
            fields[name] = value
        return fields

    def strings(self, node: yaml.Node, name: str) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, f"{name} must be a non-empty list")
        values = []
        for item in node.value:
            if not isinstance(item, yaml.ScalarNode) or not str(item.value).strip():
                raise self.fail(item, f"{name} must hold non-empty strings")
            values.append(str(item.value).strip())
        return tuple(values)
