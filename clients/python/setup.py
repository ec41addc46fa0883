"""Builds temporal-codec-client; its protobuf messages are generated here, never committed.

``build_py`` runs protoc (from the ``grpcio-tools`` build requirement) on the repository's
``protos/codec_grpc/v1/codec.proto`` and puts ``codec_pb2.py`` and ``codec_pb2.pyi`` into
``temporal_codec_client/v1/`` of the build (of the source tree for an editable install).
protoc sees the proto under its own name, ``codec_grpc/v1/codec.proto``: the descriptor the
module registers is then byte for byte the server's, so both packages load in one process.

``sdist`` ships a copy of the proto in ``protos/``, which is where a build from the sdist finds it.
Everything else is declared in ``pyproject.toml``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PROTO = "codec_grpc/v1/codec.proto"
GENERATED = ("codec_pb2.py", "codec_pb2.pyi")
TARGET_PACKAGE = ("temporal_codec_client", "v1")


def proto_root() -> Path:
    """``protos/`` beside this file (an unpacked sdist), else the repository's."""
    for root in (HERE / "protos", HERE.parent.parent / "protos"):
        if (root / PROTO).is_file():
            return root
    raise FileNotFoundError(f"{PROTO} is neither in {HERE / 'protos'} nor in {HERE.parent.parent / 'protos'}")


def generate_messages(destination: Path) -> None:
    """Write the generated modules of ``PROTO`` into ``destination``."""
    from grpc_tools import protoc  # a build requirement, not a runtime one

    root = proto_root()
    with tempfile.TemporaryDirectory() as out:
        arguments = ["protoc", f"-I{root}", f"--python_out={out}", f"--pyi_out={out}", str(root / PROTO)]
        if protoc.main(arguments) != 0:
            raise RuntimeError(f"protoc failed on {root / PROTO}: {' '.join(arguments)}")
        destination.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            shutil.copyfile(Path(out, PROTO).with_name(name), destination / name)


class BuildPyWithMessages(build_py):
    def run(self) -> None:
        super().run()
        # An editable install imports the source tree, so that is where the modules go.
        base = HERE if self.editable_mode else Path(self.build_lib)
        generate_messages(base.joinpath(*TARGET_PACKAGE))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        if self.editable_mode:
            return super().get_outputs(include_bytecode)
        target = Path(self.build_lib).joinpath(*TARGET_PACKAGE)
        return [*super().get_outputs(include_bytecode), *(str(target / name) for name in GENERATED)]


class SdistWithProto(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        copy = Path(base_dir, "protos", PROTO)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(proto_root() / PROTO, copy)


setup(cmdclass={"build_py": BuildPyWithMessages, "sdist": SdistWithProto})
