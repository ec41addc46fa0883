"""The hashed locks of requirements/ (docs/development.md#dependencies), checked by parsing them.

Whether `make lock` would write the same files needs PyPI and a minute: too slow and too networked
for the suite. What a stale or hand-edited lock gets wrong is checked here instead: a pin that no
longer satisfies its ``.in`` file, a dependency missing from a lock (pip installs it unpinned and
unhashed... or, under ``--require-hashes``, refuses), a package that has no business in the runtime
lock, a runtime pin that moved in the development lock only.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.paths import ROOT

REQUIREMENTS = ROOT / "requirements"
LOCKS = ("pip", "runtime", "build", "dev")
# Each lock extends the one named here: `make lock` compiles it constrained by that lock.
EXTENDS = {"build": "runtime", "dev": "build"}
HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: Marker | None
    hashes: frozenset[str]

    def applies_here(self) -> bool:
        return self.marker is None or self.marker.evaluate()


def lock_entries(path: Path) -> list[str]:
    """The requirement lines of a lock, each with its ``\\``-continued hash lines joined to it."""
    logical = re.sub(r"\\\n", " ", path.read_text())
    return [line.strip() for line in logical.splitlines() if line.strip() and not line.strip().startswith("#")]


def read_lock(name: str) -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    for entry in lock_entries(REQUIREMENTS / f"{name}.lock"):
        requirement, *hashes = (part.strip() for part in entry.split("--hash="))
        req = Requirement(requirement)
        (spec,) = req.specifier
        assert spec.operator == "==", entry
        pin = Pin(canonicalize_name(req.name), spec.version, req.marker, frozenset(hashes))
        assert pin.name not in pins, f"{name}.lock pins {pin.name} twice"
        pins[pin.name] = pin
    return pins


def read_in(name: str) -> list[Requirement]:
    """A ``.in`` file's requirements, with those of the files it includes (``-r``)."""
    requirements: list[Requirement] = []
    for raw in (REQUIREMENTS / f"{name}.in").read_text().splitlines():
        line = raw.partition("#")[0].strip()
        if line.startswith("-r "):
            requirements += read_in(line.removeprefix("-r ").strip().removesuffix(".in"))
        elif line:
            assert not line.startswith("-"), f"{name}.in: {line}"
            requirements.append(Requirement(line))
    return requirements


def closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution these requirements need on this machine, from the installed metadata
    (the venv that `make install` made from dev.lock), following extras and environment markers."""
    needed: set[str] = set()
    seen: set[tuple[str, str]] = set()
    todo = [(canonicalize_name(req.name), extra) for req in requirements for extra in ("", *req.extras)]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        needed.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name} is not installed: run `make install`")
        for dependency in map(Requirement, requires):
            if dependency.marker is None or dependency.marker.evaluate({"extra": extra}):
                todo += [(canonicalize_name(dependency.name), e) for e in ("", *dependency.extras)]
    return needed


def key(req: Requirement) -> tuple[str, str, frozenset[str]]:
    return canonicalize_name(req.name), str(req.specifier), frozenset(req.extras)


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize("name", LOCKS)
def test_each_lock_satisfies_its_in_file(name):
    pins = read_lock(name)
    for req in read_in(name):
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{name}.lock has no pin for {req} ({name}.in): run `make lock`"
        assert req.specifier.contains(pin.version, prereleases=True), f"{name}.lock: {pin.version} ∉ {req}"


@pytest.mark.parametrize("name", LOCKS)
def test_every_pin_is_exact_and_hashed(name):
    pins = read_lock(name)
    assert pins
    for pin in pins.values():
        assert pin.hashes, f"{name}.lock: {pin.name} has no --hash"
        assert all(HASH.match(digest) for digest in pin.hashes), f"{name}.lock: {pin.name}"


@pytest.mark.parametrize(("name", "base"), EXTENDS.items())
def test_each_lock_includes_the_one_it_extends_at_the_same_versions(name, base):
    """The image builds from runtime.lock and build.lock, the tests run on dev.lock: the same files."""
    pins, base_pins = read_lock(name), read_lock(base)
    for pin in base_pins.values():
        assert pins.get(pin.name) == pin, f"{name}.lock and {base}.lock disagree on {pin.name}"


def test_runtime_in_lists_the_dependencies_of_pyproject(pyproject):
    assert {key(req) for req in read_in("runtime")} == {key(Requirement(dep)) for dep in pyproject["dependencies"]}


def test_dev_in_covers_the_dev_extra_of_pyproject(pyproject):
    dev = {key(req) for req in read_in("dev")}
    missing = [dep for dep in pyproject["optional-dependencies"]["dev"] if key(Requirement(dep)) not in dev]
    assert not missing, f"in pyproject.toml's dev extra, not in requirements/dev.in: {missing}"


@pytest.mark.parametrize("name", LOCKS)
def test_each_lock_is_exactly_the_closure_of_its_in_file(name):
    """Complete (every transitive dependency pinned, so that --require-hashes never meets an unpinned
    one) and nothing more (a package no requirement needs has no place, above all in runtime.lock).
    Pins whose environment marker is false here (colorama on Windows) are left out of the comparison."""
    pins = {pin.name: pin for pin in read_lock(name).values() if pin.applies_here()}
    needed = closure(read_in(name))
    assert set(pins) == needed, f"missing from {name}.lock: {needed - set(pins)}; extra: {set(pins) - needed}"
    for pin in pins.values():
        installed = importlib.metadata.version(pin.name)
        assert installed == pin.version, f"{pin.name} {installed} installed, {pin.version} locked: `make install`"


def test_pip_lock_pins_pip_alone():
    (pin,) = read_lock("pip").values()
    assert pin.name == "pip"


def test_make_lock_compiles_each_in_file_constrained_by_the_lock_it_extends():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lock:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None
    compile_flags = re.search(r"^UV_COMPILE = (.+?)(?<!\\)$", makefile, re.MULTILINE | re.DOTALL)
    assert compile_flags is not None and "--generate-hashes" in compile_flags.group(1)
    lines = recipe.group(1).splitlines()
    for name in LOCKS:
        (line,) = (line for line in lines if f" {name}.in " in line)
        assert line.endswith(f"-o {name}.lock")
        if name in EXTENDS:
            assert f"-c {EXTENDS[name]}.lock" in line
    assert "uv" in read_lock("dev"), "make lock runs uv from the venv: dev.lock must pin it"


def test_make_install_installs_pip_then_the_dev_lock_with_hashes():
    makefile = (ROOT / "Makefile").read_text()
    rule = re.search(r"^\$\(STAMP\): (.+)\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert rule is not None
    assert {"requirements/pip.lock", "requirements/dev.lock"} <= set(rule.group(1).split())
    installs = [line.strip() for line in rule.group(2).splitlines() if "pip install" in line]
    assert installs[0].endswith("pip install --quiet --require-hashes -r requirements/pip.lock")
    assert installs[1].endswith("pip install --quiet --require-hashes -r requirements/dev.lock")
    assert all("--require-hashes" in line or "--no-deps -e ." in line for line in installs)
    assert "--upgrade" not in rule.group(2)
