"""Runs the pod of a rendered Deployment as local processes, the way the kubelet would run it.

:class:`Pod` takes the Deployment and Service that ``helm template`` rendered and, for each
container, runs its ``command`` (the entry points ``codec-server`` / ``codec-gateway`` of the
package, installed beside this Python) with its rendered environment, changed only where a
laptop differs from a pod:

* every container port gets a free local port, and env values naming a port of the pod (``"8081"``,
  ``"127.0.0.1:50051"``) are rewritten to it: the containers share one network namespace;
* ``0.0.0.0`` becomes ``127.0.0.1``: tests bind loopback only. What the rendered address meant is
  kept: a port whose ``*_HOST`` setting is loopback (``GRPC_HOST`` for ``GRPC_PORT``, ``GATEWAY_HOST``
  for ``PORT``, ``METRICS_HOST`` for ``METRICS_PORT``) is out of reach of the kubelet's probes and of
  the Service, which come from outside the pod: probing it fails, and a Service port aimed at it is
  an error. :meth:`Pod.port_forward` reaches any port, as ``kubectl port-forward`` does;
* secret and ConfigMap volumes are written into a temporary directory from ``secrets`` and
  ``config_maps`` (name -> key -> bytes or text, honouring ``items``), and env values under a
  ``mountPath`` point into it;
* ``overrides`` are added last (the KMS endpoint, credentials: what IRSA gives a real pod), and
  ``replacements`` replace the values of settings a container has (an unreachable identity provider).

:meth:`Pod.probe` runs a container's readiness or liveness probe as the kubelet does (HTTP GET
without certificate checks, e.g. ``/health`` of the gateway or ``/healthz`` of a metrics port, TCP
connect, gRPC health check of ``""``; a container without that probe counts as passing while it
runs); :meth:`Pod.service_port` resolves a Service port to the local port its ``targetPort`` landed on.
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
# The settings that choose the address of a port setting's listener.
LISTENERS = {"GRPC_HOST": "GRPC_PORT", "GATEWAY_HOST": "PORT", "METRICS_HOST": "METRICS_PORT"}
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


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
        config_maps: dict[str, dict[str, str]] | None = None,
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
        self.listen_hosts = self._listen_hosts(self.containers.values())
        sources: dict[str, dict[str, bytes]] = {
            name: {key: value.encode() for key, value in data.items()} for name, data in (config_maps or {}).items()
        }
        self._volumes = self._make_volumes(spec.get("volumes", []), workdir, secrets, sources)
        self._overrides = overrides
        self._replacements = replacements or {}
        self._base_env = base_env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {name: workdir / f"{name}.log" for name in self.containers}

    @staticmethod
    def _make_volumes(
        volumes: list[dict[str, Any]],
        workdir: Path,
        secrets: dict[str, dict[str, bytes]],
        config_maps: dict[str, dict[str, bytes]],
    ) -> dict[str, Path]:
        made: dict[str, Path] = {}
        for volume in volumes:
            directory = workdir / "volumes" / volume["name"]
            directory.mkdir(parents=True)
            if "secret" in volume:
                source, data = volume["secret"], secrets[volume["secret"]["secretName"]]
            elif "configMap" in volume:
                source = volume["configMap"]
                assert source["name"] in config_maps, f"no ConfigMap {source['name']} (volume {volume['name']})"
                data = config_maps[source["name"]]
            else:
                source, data = {}, {}
            items = source.get("items") or [{"key": key, "path": key} for key in data]
            for item in items:
                assert item["key"] in data, f"volume {volume['name']}: no key {item['key']!r} in its source"
                (directory / item["path"]).write_bytes(data[item["key"]])
            made[volume["name"]] = directory
        return made

    def _listen_hosts(self, containers: Any) -> dict[int, str]:
        """Container port -> the address its listener was rendered to bind (before 0.0.0.0 became
        127.0.0.1 here)."""
        hosts: dict[int, str] = {}
        for container in containers:
            env = {item["name"]: item["value"] for item in container["env"]}
            for host_setting, port_setting in LISTENERS.items():
                port = env.get(port_setting, "")
                if host_setting in env and port.isdigit() and int(port) in self.ports:
                    hosts[int(port)] = env[host_setting]
        return hosts

    def reachable_from_outside(self, port: int | str) -> bool:
        """Whether a port (number or name) listens beyond loopback: the kubelet's probes and the
        Service come from outside the pod's network namespace. Ports of no known setting count as open."""
        number = self.named[port] if isinstance(port, str) else port
        return self.listen_hosts.get(number, "0.0.0.0") not in LOOPBACK

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
        target = port["targetPort"]
        assert self.reachable_from_outside(target), f"Service port {name} targets {target}, bound to loopback"
        return self.local_port(target)

    def port_forward(self, port: int | str) -> int:
        """The local port ``kubectl port-forward`` to this container port reaches (loopback included)."""
        return self.local_port(port)

    def probe(self, container: str, kind: str) -> bool:
        """Runs the container's ``readinessProbe`` / ``livenessProbe``: True when it succeeds. As the
        kubelet, a container without that probe passes while its process runs, and a probe of a port
        bound to loopback fails (the kubelet connects to the pod IP)."""
        spec = self.containers[container].get(kind)
        if spec is None:
            return container in self.processes and self.processes[container].poll() is None
        probed = next((spec[way]["port"] for way in ("httpGet", "tcpSocket", "grpc") if way in spec), None)
        if probed is not None and not self.reachable_from_outside(probed):
            return False
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
