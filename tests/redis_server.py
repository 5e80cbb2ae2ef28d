"""A throwaway redis-server on a free loopback port, for tests that need real Redis behaviour.

Never port 6379 and never persistence, so a developer's own Redis is left untouched; `stop()`
and `start()` let a test take the server away mid-run and bring it back on the same URL.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

_START_TIMEOUT_S = 10.0


def _free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (closed again, so Redis can take it)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != 6379:
            return port


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """Context manager around a redis-server subprocess; `.url` points at database 0."""

    def __init__(self, executable: str | None = None) -> None:
        exe = executable or shutil.which("redis-server")
        if exe is None:
            raise RuntimeError(
                "redis-server is not on PATH; the Redis store tests need it "
                "(apt-get install redis-server, or brew install redis)"
            )
        self._exe = exe
        self._tmp = tempfile.TemporaryDirectory(prefix="tandem-redis-")
        self._log = Path(self._tmp.name) / "redis.log"
        self.port = _free_port()
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
            "--save", "", "--appendonly", "no", "--dir", self._tmp.name,
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

    def __enter__(self) -> RedisServer:
        try:
            self.start()
        except BaseException:
            self._tmp.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._tmp.cleanup()
