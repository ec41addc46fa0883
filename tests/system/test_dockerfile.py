"""The Dockerfile's promises, checked by parsing it (no Docker engine runs here)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field

import pytest

from codec_grpc.errors import ConfigError
from codec_grpc.runtime.config import check_exposure, load_config
from tests.support.paths import ROOT
from tests.system.test_locks import lock_entries, read_lock

COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|build-essential|make|apt-get|apt|protoc|grpc_tools)\b")
BASE = re.compile(r"^python:3\.11-slim@sha256:[0-9a-f]{64}$")
DEV_PACKAGES = {"pytest", "moto", "ruff", "mypy", "hypothesis", "temporalio", "grpcio-tools", "setuptools", "uv"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages; a FROM's ``${ARG}`` is replaced by the default of an ARG declared before the first FROM."""
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    logical = re.sub(r"\\\n", " ", text)
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arg = line.partition(" ")
        keyword, arg = keyword.upper(), " ".join(arg.split())
        if keyword == "ARG" and not stages:
            name, _, default = arg.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            base, _, name = arg.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda found: global_args[found.group(1)], base.strip())
            stages.append(Stage(base, name.strip() or None))
        else:
            stages[-1].instructions.append((keyword, arg))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def makefile_recipe(target: str) -> list[str]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_multi_stage_on_slim_python(stages):
    assert len(stages) >= 2
    assert stages[0].name == "build"
    assert all(BASE.match(stage.base) for stage in stages)
    assert len({stage.base for stage in stages}) == 1


def test_base_image_is_pinned_by_digest_through_its_build_argument():
    """A tag moves under the same name; a digest names one set of bytes (docs/operations.md#the-base-images-digest)."""
    (default,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert BASE.match(default), default


def test_needs_no_image_but_the_base_which_a_build_arg_can_replace():
    """A `# syntax=` directive makes BuildKit pull its frontend image from Docker Hub first: a build
    against a mirror or an internal registry fails on it. The built-in frontend does RUN --mount."""
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim@sha256:[0-9a-f]{64}$", text, re.MULTILINE)
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_build_stage_runs_the_same_install_and_proto_commands_as_make(stages):
    runs = " && ".join(stages[0].args("RUN"))
    stamp = [line.replace("$(BIN)/", ".venv/bin/") for line in makefile_recipe("$(STAMP)")]
    pip = next(line for line in stamp if "-r requirements/pip.lock" in line)
    dev = next(line for line in stamp if "-r requirements/dev.lock" in line)
    # the same commands; the image's build stage takes build.lock, the runtime and the build tools only
    assert f"{pip} && {dev.replace('dev.lock', 'build.lock')}" in runs
    protos = re.search(r"^PROTOS := \$\(shell (.+)\)$", (ROOT / "Makefile").read_text(), re.M)
    assert protos is not None
    (proto,) = makefile_recipe("proto")
    assert proto.replace("$(BIN)/", ".venv/bin/").replace("$(PROTOS)", f"$({protos.group(1)})") in runs
    # the wheels the final stage installs: pip's and the runtime lock's, hash-checked, and the package's
    locks = "-r requirements/pip.lock -r requirements/runtime.lock"
    assert f"pip wheel --quiet --require-hashes --wheel-dir /wheels {locks}" in runs
    assert "pip wheel --quiet --no-deps --no-build-isolation --wheel-dir /wheels ." in runs


def pip_installs(command: str) -> list[str]:
    return [part.strip() for part in command.split("&&") if re.search(r"\bpip (install|wheel)\b", part)]


def test_pip_is_pinned_and_every_install_checks_hashes(stages):
    """Each stage first installs pip from requirements/pip.lock; every install of a package from an
    index or a wheel directory is hash-checked; only the package's own wheel (built from this tree)
    goes in without, with --no-deps so that it brings nothing in."""
    for stage in stages:
        installs = [install for run in stage.args("RUN") for install in pip_installs(run)]
        assert installs, stage.name
        assert re.search(r"pip install .*--require-hashes -r (/?)requirements/pip\.lock$", installs[0]), installs[0]
        for install in installs:
            assert "--upgrade" not in install and " -U " not in install, install
            assert "--require-hashes" in install or "--no-deps" in install, install
            assert "--require-hashes" in install or not re.search(r"\s-r\s", install), install
    (pip,) = read_lock("pip").values()
    assert pip.name == "pip" and pip.version


def test_the_image_installs_only_the_runtime_lock(stages):
    runs = " && ".join(stage_run for stage in stages for stage_run in stage.args("RUN"))
    assert "dev.lock" not in runs and "dev.lock" not in " ".join(stages[0].args("COPY"))
    (final,) = stages[-1].args("RUN")
    locks = re.findall(r"-r /requirements/(\S+)", final)
    assert locks == ["pip.lock", "runtime.lock"]


def test_runtime_lock_holds_no_development_package():
    assert not DEV_PACKAGES & set(read_lock("runtime")), "tests, lint and build tools belong in dev.lock or build.lock"
    assert {"grpcio-tools", "setuptools"} <= set(read_lock("build"))


@pytest.mark.parametrize("name", ["pip", "runtime", "build", "dev"])
def test_every_requirement_of_the_locks_carries_sha256_hashes(name):
    entries = lock_entries(ROOT / "requirements" / f"{name}.lock")
    assert entries
    for entry in entries:
        assert re.search(r"\s--hash=sha256:[0-9a-f]{64}\b", entry), entry
        assert all(re.match(r"sha256:[0-9a-f]{64}$", digest.split()[0]) for digest in entry.split("--hash=")[1:]), entry


def test_final_stage_installs_wheels_only_and_has_no_compilers(stages):
    final = stages[-1]
    runs = final.args("RUN")
    assert len(runs) == 1
    assert "--no-index" in runs[0] and "from=build" in runs[0] and "/wheels" in runs[0]
    assert all("--no-index" in install for install in pip_installs(runs[0]))
    for kw, arg in final.instructions:
        if kw in ("RUN", "COPY", "ADD"):
            assert not COMPILERS.search(arg), f"{kw} {arg}"
    assert not final.args("COPY") and not final.args("ADD")


def test_non_root_numeric_user(stages):
    (user,) = stages[-1].args("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or (gid.isdigit() and int(gid) > 0))


def test_exposes_only_grpc_gateway_and_metrics_ports(stages):
    exposed = {port for arg in stages[-1].args("EXPOSE") for port in arg.split()}
    assert exposed == {"50051", "8081", "9464"}
    assert not any(stage.args("EXPOSE") for stage in stages[:-1])


def test_read_only_root_filesystem_settings_and_default_command(stages):
    env = " ".join(stages[-1].args("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env
    (cmd,) = stages[-1].args("CMD")
    assert json.loads(cmd) == ["codec-server"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "codec-server" in scripts


def test_dockerignore_keeps_local_state_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests"} <= ignored


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="needs setuptools in the venv")
def test_package_wheel_carries_the_generated_code_and_console_script(tmp_path):
    """What the final stage installs: built as the build stage does (offline: no build isolation)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("temporal_codec_grpc-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {
        "server.py",
        "codec_grpc/v1/codec_pb2.py",
        "codec_grpc/v1/codec_pb2_grpc.py",
        "codec_grpc/runtime/metrics.py",
    } <= names
    assert not any(name.startswith("tests/") for name in names)
    assert "codec-server = codec_grpc.runtime.server_process:main" in entry_points


def test_the_image_listens_on_all_interfaces_and_so_needs_authentication(stages):
    """The image sets the hosts explicitly; with them the server's own check refuses to start
    without authentication (ALLOW_UNAUTHENTICATED loosens it): the same settings, checked here."""
    env = dict(item.split("=", 1) for arg in stages[-1].args("ENV") for item in arg.replace("\\", " ").split())
    hosts = {name: env[name] for name in ("GRPC_HOST", "GATEWAY_HOST", "METRICS_HOST")}
    assert hosts == dict.fromkeys(hosts, "0.0.0.0")
    config = load_config(hosts)
    with pytest.raises(ConfigError, match="^GRPC_HOST: 0.0.0.0 is beyond loopback"):
        check_exposure(config, serves_grpc=True, serves_gateway=True)
