"""Runs the pod of a rendered Deployment as local processes, the way the kubelet would run it.

:class:`Pod` takes the Deployment and Service that ``helm template`` rendered and, for each
container, runs its ``command`` (the entry points ``codec-server`` / ``codec-gateway`` of the
package, installed beside this Python) with its rendered environment, changed only where a
laptop differs from a pod:

* every container port gets a free local port, and env values naming a port of the pod (``"8081"``,
  ``"localhost:50051"``) are rewritten to it: the containers share one network namespace;
* ``0.0.0.0`` becomes ``127.0.0.1``: tests bind loopback only;
* secret volumes are written into a temporary directory from ``secrets`` (name -> key -> bytes,
  honouring ``items``), and env values under a ``mountPath`` point into it;
* ``overrides`` are added last (the KMS endpoint, credentials: what IRSA gives a real pod), and
  ``replacements`` replace the values of settings a container has (an unreachable identity provider).

:meth:`Pod.probe` runs a container's readiness or liveness probe as the kubelet does (HTTP GET
without certificate checks, TCP connect, gRPC health check of ``""``); :meth:`Pod.service_port`
resolves a Service port to the local port its ``targetPort`` landed on.
"""

from __future__ import annotations

import http.client
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.fixtures import free_port, wait_for_port

PROBE_TIMEOUT = 1.0  # the kubelet's default timeoutSeconds


class Pod:
    def __init__(
        self,
        deployment: dict[str, Any],
        service: dict[str, Any],
        workdir: Path,
        secrets: dict[str, dict[str, bytes]],
        overrides: dict[str, str],
        base_env: dict[str, str],
        replacements: dict[str, str] | None = None,
    ) -> None:
        spec = deployment["spec"]["template"]["spec"]
        self.service = service
        self.containers: dict[str, dict[str, Any]] = {c["name"]: c for c in spec["containers"]}
        self.ports: dict[int, int] = {}  # container port -> local port
        self.named: dict[str, int] = {}  # port name -> container port
        for container in self.containers.values():
            for port in container.get("ports", []):
                self.ports[port["containerPort"]] = free_port()
                assert port["name"] not in self.named, f"port name {port['name']} used twice in the pod"
                self.named[port["name"]] = port["containerPort"]
        self._volumes = self._make_volumes(spec.get("volumes", []), workdir, secrets)
        self._overrides = overrides
        self._replacements = replacements or {}
        self._base_env = base_env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {name: workdir / f"{name}.log" for name in self.containers}

    @staticmethod
    def _make_volumes(volumes: list[dict[str, Any]], workdir: Path, secrets: dict[str, dict[str, bytes]]) -> dict:
        made: dict[str, Path] = {}
        for volume in volumes:
            directory = workdir / "volumes" / volume["name"]
            directory.mkdir(parents=True)
            if "secret" in volume:
                data = secrets[volume["secret"]["secretName"]]
                items = volume["secret"].get("items") or [{"key": key, "path": key} for key in data]
                for item in items:
                    (directory / item["path"]).write_bytes(data[item["key"]])
            made[volume["name"]] = directory
        return made

    def env(self, name: str) -> dict[str, str]:
        """The container's environment as its process gets it."""
        container = self.containers[name]
        mounts = {m["mountPath"]: self._volumes[m["name"]] for m in container.get("volumeMounts", [])}
        env = dict(self._base_env)
        for item in container["env"]:
            env[item["name"]] = self._replacements.get(item["name"], self._localise(item["value"], mounts))
        return env | self._overrides

    def _localise(self, value: str, mounts: dict[str, Path]) -> str:
        if value == "0.0.0.0":
            return "127.0.0.1"
        if value.isdigit() and int(value) in self.ports:
            return str(self.ports[int(value)])
        host, _, port = value.rpartition(":")
        if host in ("localhost", "127.0.0.1") and port.isdigit() and int(port) in self.ports:
            return f"{host}:{self.ports[int(port)]}"
        for mount_path, directory in mounts.items():
            if value.startswith(mount_path.rstrip("/") + "/"):
                path = directory / value[len(mount_path.rstrip("/")) + 1 :]
                assert path.exists(), f"{value}: no such key in the volume mounted at {mount_path}"
                return str(path)
        assert not value.startswith("/etc/"), f"{value} lies under no volume mount of the container"
        return value

    def start(self) -> None:
        for name, container in self.containers.items():
            command = [str(Path(sys.executable).with_name(container["command"][0])), *container["command"][1:]]
            with self.logs[name].open("wb") as log:
                self.processes[name] = subprocess.Popen(
                    command, env=self.env(name), stdout=log, stderr=subprocess.STDOUT
                )
        for name, container in self.containers.items():
            for port in container.get("ports", []):
                try:
                    wait_for_port(self.ports[port["containerPort"]], timeout=60, proc=self.processes[name])
                except (RuntimeError, TimeoutError) as exc:
                    raise AssertionError(f"{name}: port {port['name']}: {exc}\n{self.log(name)[-3000:]}") from None

    def local_port(self, port: int | str) -> int:
        """A probe's or targetPort's port (number or name) as it is bound here."""
        return self.ports[self.named[port] if isinstance(port, str) else port]

    def service_port(self, name: str) -> int:
        port = next(p for p in self.service["spec"]["ports"] if p["name"] == name)
        return self.local_port(port["targetPort"])

    def probe(self, container: str, kind: str) -> bool:
        """Runs the container's ``readinessProbe`` / ``livenessProbe``: True when it succeeds."""
        spec = self.containers[container][kind]
        try:
            if "httpGet" in spec:
                get = spec["httpGet"]
                port = self.local_port(get["port"])
                if get.get("scheme", "HTTP") == "HTTPS":
                    unverified = ssl._create_unverified_context()  # as the kubelet: no certificate check
                    connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                        "127.0.0.1", port, timeout=PROBE_TIMEOUT, context=unverified
                    )
                else:
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
                try:
                    connection.request("GET", get["path"])
                    return 200 <= connection.getresponse().status < 400
                finally:
                    connection.close()
            if "tcpSocket" in spec:
                socket.create_connection(
                    ("127.0.0.1", self.local_port(spec["tcpSocket"]["port"])), PROBE_TIMEOUT
                ).close()
                return True
            if "grpc" in spec:
                port = self.local_port(spec["grpc"]["port"])
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    request = health_pb2.HealthCheckRequest(service=spec["grpc"].get("service", ""))
                    answer = health_pb2_grpc.HealthStub(channel).Check(request, timeout=PROBE_TIMEOUT)
                    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)
        except (OSError, ssl.SSLError, http.client.HTTPException, grpc.RpcError):
            return False
        raise AssertionError(f"unknown probe {spec}")

    def terminate(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGTERM)

    def wait(self, name: str, timeout: float = 60) -> int:
        return self.processes[name].wait(timeout=timeout)

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def kill(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
