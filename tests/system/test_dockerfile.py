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

COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|build-essential|make|apt-get|apt|protoc|grpc_tools)\b")


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
    assert all(stage.base == "python:3.11-slim" for stage in stages)


def test_needs_no_image_but_the_base_which_a_build_arg_can_replace():
    """A `# syntax=` directive makes BuildKit pull its frontend image from Docker Hub first: a build
    against a mirror or an internal registry fails on it. The built-in frontend does RUN --mount."""
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.MULTILINE)
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_build_stage_runs_the_same_install_and_proto_commands_as_make(stages):
    runs = " && ".join(stages[0].args("RUN"))
    install = next(line for line in makefile_recipe("$(STAMP)") if "-r requirements.lock" in line)
    assert install.replace("$(BIN)/", ".venv/bin/") in runs
    protos = re.search(r"^PROTOS := \$\(shell (.+)\)$", (ROOT / "Makefile").read_text(), re.M)
    assert protos is not None
    (proto,) = makefile_recipe("proto")
    assert proto.replace("$(BIN)/", ".venv/bin/").replace("$(PROTOS)", f"$({protos.group(1)})") in runs
    assert "--constraint requirements.lock" in runs and "pip wheel" in runs


def test_final_stage_installs_wheels_only_and_has_no_compilers(stages):
    final = stages[-1]
    runs = final.args("RUN")
    assert len(runs) == 1
    assert "--no-index" in runs[0] and "from=build" in runs[0] and "/wheels" in runs[0]
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
