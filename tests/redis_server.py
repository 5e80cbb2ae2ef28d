"""Throwaway Redis for tests that need real Redis behaviour: one redis-server on a free loopback
port (`RedisServer`), or a 3-master Redis Cluster of them (`RedisClusterServer`).

Never port 6379 and never persistence, so a developer's own Redis is left untouched; `stop()`
and `start()` let a test take a server (or one cluster node) away mid-run and bring it back on
the same URL.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TypeVar

_START_TIMEOUT_S = 10.0
_CLUSTER_BUS_OFFSET = 10_000  # a cluster node also listens on its port + 10000 (the bus)


def _free_port(taken: frozenset[int] = frozenset()) -> int:
    """A port the kernel just handed out on 127.0.0.1 (closed again, so Redis can take it)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != 6379 and port not in taken:
            return port


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_cluster_port(taken: frozenset[int]) -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = _free_port(taken)
        bus = port + _CLUSTER_BUS_OFFSET
        if bus <= 65535 and bus not in taken and _bindable(bus):
            return port


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


_S = TypeVar("_S", bound="_Managed")


class _Managed:
    """A server as a context manager: started on enter (closed again if that fails), closed
    on exit, whatever the server."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisServer(_Managed):
    """Context manager around a redis-server subprocess; `.url` points at database 0."""

    def __init__(
        self, executable: str | None = None, *, port: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self._exe = _which("redis-server", executable)
        self._tmp = tempfile.TemporaryDirectory(prefix="tandem-redis-")
        self._log = Path(self._tmp.name) / "redis.log"
        self.port = port or _free_port()
        self._extra_args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start (or restart) the server on this object's port and wait until it answers PING."""
        if self.running:
            return
        cmd = [
            self._exe, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", self._tmp.name, *self._extra_args,
        ]
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at start:\n{self._log_tail()}")
            if _pings(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"redis-server did not answer PING within {_START_TIMEOUT_S:.0f} s:\n"
            f"{self._log_tail()}"
        )

    def stop(self) -> None:
        """Terminate the server and wait until it is gone (the port then refuses connections)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def _log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        self._tmp.cleanup()


def _which(name: str, given: str | None = None) -> str:
    exe = given or shutil.which(name)
    if exe is None:
        raise RuntimeError(
            f"{name} is not on PATH; the Redis store tests need it "
            "(apt-get install redis-server, or brew install redis)"
        )
    return exe


def _command(port: int, *args: str) -> bytes:
    """One command's raw reply from the node on `port` (inline protocol, no client library)."""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
        s.sendall(" ".join(args).encode() + b"\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n")
        if head[:1] != b"$":
            return head
        size = int(head[1:])
        while len(body) < size:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return body[:size]


class RedisClusterServer(_Managed):
    """A Redis Cluster of `masters` redis-server nodes on free loopback ports, no replicas.

    Each node runs with `--cluster-enabled yes` and its own nodes file; the first `start()`
    joins them with `redis-cli --cluster create` and waits until every node reports
    `cluster_state:ok`. `stop_node(i)` and `start()` take one node away and bring it back (it
    rejoins from its nodes file, holding the same slots, empty). `.url` is the store's
    `redis+cluster://` URL, `.node_urls` each node's own `redis://` URL.
    """

    def __init__(self, masters: int = 3, node_timeout_ms: int = 2000) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self._cli = _which("redis-cli")
        ports: list[int] = []
        for _ in range(masters):
            taken = frozenset(ports + [p + _CLUSTER_BUS_OFFSET for p in ports])
            ports.append(_free_cluster_port(taken))
        self.nodes = [
            RedisServer(port=port, extra_args=(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms)))
            for port in ports
        ]
        self._created = False

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    @property
    def node_urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self) -> None:
        """Start every node that is down (creating the cluster the first time); wait until OK."""
        if all(n.running for n in self.nodes) and self._created:
            return
        for node in self.nodes:
            node.start()
        if not self._created:
            self._create()
        self.wait_ok()

    def _create(self) -> None:
        cmd = [self._cli, "--cluster", "create",
               *(f"127.0.0.1:{p}" for p in self.ports),
               "--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}\n"
                               f"{done.stderr}")
        self._created = True

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every node reports cluster_state:ok and knows every other node as connected."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self._node_ok(p) for p in self.ports):
                return
            time.sleep(0.05)
        states = {p: self._info(p) for p in self.ports}
        raise RuntimeError(f"Redis Cluster not ok within {timeout_s:.0f} s: {states}")

    def _info(self, port: int) -> str:
        try:
            return _command(port, "CLUSTER", "INFO").decode(errors="replace")
        except OSError as e:
            return f"unreachable: {e}"

    def _node_ok(self, port: int) -> bool:
        if "cluster_state:ok" not in self._info(port):
            return False
        try:
            nodes = _command(port, "CLUSTER", "NODES").decode(errors="replace").splitlines()
        except OSError:
            return False
        # Every master known, none flagged failing, every link up: the restarted node's
        # peers have seen it again, so no command is sent to a stale address.
        masters = [ln for ln in nodes if "master" in ln.split()[2]]
        return len(masters) == len(self.nodes) and all(
            "fail" not in ln.split()[2] and ln.split()[7] == "connected" for ln in masters)

    def stop_node(self, index: int) -> None:
        """Take one master (and the slots it serves) away; `start()` brings it back."""
        self.nodes[index].stop()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        for node in self.nodes:
            node.close()
