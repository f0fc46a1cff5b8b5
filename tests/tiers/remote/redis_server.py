"""A real redis-server (or valkey-server) on a free loopback port, started and stopped by the tests."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

SERVER_NAMES = ("valkey-server", "redis-server")


def server_binary() -> str:
    for name in SERVER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no valkey-server or redis-server on PATH: `make test` installs Debian's redis-server "
                "(scripts/ensure_packages.sh); or apt-get install redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One server process; `stop()` kills it (a crash, as far as clients can tell), `start()` brings it back
    on the same port, empty (no persistence), as a restarted cache server would be."""

    def __init__(self, workdir: Path, *args: str, own_session: bool = False) -> None:
        self.workdir, self.args, self.own_session = workdir, args, own_session
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.workdir), *self.args]
        log = open(self.workdir / f"redis-{self.port}.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=self.own_session)
        deadline = time.monotonic() + 20
        while not self._answers():  # the server's own readiness: it answers PING
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited {self.proc.returncode}: see {log.name}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cmd[0]} did not answer on port {self.port} within 20 s")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
                return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")  # up (AUTH asked first)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def cli(self, *args: str) -> str:
        """A command through redis-py (no redis-cli needed)."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        try:
            return str(client.execute_command(*args))
        finally:
            client.close()


@pytest.fixture
def redis_server(tmp_path: Path):
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


if os.environ.get("KVTIER_REDIS_SERVER"):  # pragma: no cover - a developer's own server binary
    SERVER_NAMES = (os.environ["KVTIER_REDIS_SERVER"],)


class RedisCluster:
    """Three servers in cluster mode on free loopback ports, the 16384 slots split between them, joined
    with CLUSTER ADDSLOTSRANGE and CLUSTER MEET (what `redis-cli --cluster create` does, without redis-cli)."""

    SLOTS = ((0, 5460), (5461, 10922), (10923, 16383))

    def __init__(self, workdir: Path) -> None:
        self.nodes, self.bus_ports = [], []
        for i in range(3):
            folder = workdir / f"node{i}"
            folder.mkdir()
            # NOTE: the bus port on a free port of its own (by default the port + 10000, past 65535 for many)
            self.bus_ports.append(free_port())
            self.nodes.append(RedisServer(folder, "--cluster-enabled", "yes", "--cluster-config-file",
                                          str(folder / "nodes.conf"), "--cluster-node-timeout", "2000",
                                          "--cluster-port", str(self.bus_ports[-1])))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        for node, (first, last) in zip(self.nodes, self.SLOTS):
            node.cli("CLUSTER", "ADDSLOTSRANGE", str(first), str(last))
        for node, bus_port in zip(self.nodes[1:], self.bus_ports[1:]):
            self.nodes[0].cli("CLUSTER", "MEET", "127.0.0.1", str(node.port), str(bus_port))
        deadline = time.monotonic() + 30
        while not all("cluster_state:ok" in (info := node.cli("CLUSTER", "INFO")) and "cluster_known_nodes:3" in info
                      for node in self.nodes):
            if time.monotonic() > deadline:  # the cluster's own readiness: every node sees all slots served
                raise TimeoutError("the three-node cluster did not reach cluster_state:ok within 30 s")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path):
    cluster = RedisCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def tls_files(workdir: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate it signs for 127.0.0.1 (openssl, in `workdir`): (CA, cert, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl on PATH to make a test CA")
    ca, ca_key, cert, key, request = (workdir / name for name in ("ca.pem", "ca.key", "server.pem", "server.key",
                                                                  "server.csr"))
    san = workdir / "san.ext"
    san.write_text("subjectAltName=IP:127.0.0.1\n")
    for cmd in (["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
                 "-subj", "/CN=kvtier test CA"],
                ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", "/CN=127.0.0.1"],
                ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
                 "-days", "2", "-extfile", san]):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    return ca, cert, key


class TlsRedisServer(RedisServer):
    """A server that also speaks TLS on `tls_port` with a certificate of a private CA (`ca`); the plain
    port stays for readiness and `cli`."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.ca, cert, key = tls_files(workdir)
        self.tls_port = free_port()
        super().__init__(workdir, "--tls-port", str(self.tls_port), "--tls-cert-file", str(cert), "--tls-key-file",
                         str(key), "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no", *args)

    @property
    def tls_url(self) -> str:
        return f"rediss://127.0.0.1:{self.tls_port}/0"


@pytest.fixture
def tls_redis_server(tmp_path: Path):
    server = TlsRedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
