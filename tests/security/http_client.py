"""Raw-socket HTTP for hostile-client tests: framings and half-sent requests no library sends."""

from __future__ import annotations

import json
import select
import socket
from pathlib import Path

CHUNK = b"x" * (64 * 1024)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def head(path: str, headers: dict[str, str], method: str = "POST") -> bytes:
    """The request line and headers of one request, ready to send."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in
                                                              headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response (Content-Length framed, as the server sends)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += part
    top, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    while len(body) < int(headers.get("content-length", "0")):
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return int(status_line.split()[1]), headers, body


def send_chunked_until_answered(sock: socket.socket, total: int) -> int:
    """Send up to `total` body bytes as 64 KiB chunks, stopping once an answer is readable.

    Returns the body bytes sent before the answer came (the terminating chunk is never sent,
    so a server that waits for the whole body never answers).
    """
    sent = 0
    while sent < total:
        if select.select([sock], [], [], 0)[0]:
            break
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(CHUNK)
    return sent


def error_of(body: bytes) -> dict:
    """The `{"error": {...}}` envelope of an error body; fails on any other shape."""
    doc = json.loads(body)
    assert set(doc) == {"error"}, doc
    assert set(doc["error"]) == {"code", "message"}, doc
    return doc["error"]


def rss_bytes(pid: int | str = "self") -> int:
    """VmRSS of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line")
