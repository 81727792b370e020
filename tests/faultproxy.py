"""An HTTP fault proxy for tests: sits between RelayFS and the S3 server and misbehaves.

It understands just enough HTTP/1.1 (request line, headers, Content-Length bodies) to act on
whole requests. Faults are rules matched in order against each request:

* ``latency(s)``: delay every request by ``s`` seconds;
* ``fail(status)``: answer with an S3-style error (500, 503, ...) instead of forwarding;
* ``reset()``: drop the connection with a TCP reset, no answer;
* ``stall(s)``: hold the request ``s`` seconds without answering, then drop it;
* ``cut_short()``: forward, but send only half the answer's body and close.

Each rule may be limited to a method, a key substring, and a number of hits. ``counts``
records the requests seen per method, for tests that check what was (not) uploaded.
Runs in threads of the test process; stops when ``close()`` is called.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

HOST = "127.0.0.1"


@dataclass
class Rule:
    action: str  # fail | reset | stall | cut_short
    status: int = 503
    seconds: float = 0.0
    method: str | None = None
    contains: str | None = None
    remaining: int | None = None  # None: forever

    def matches(self, method: str, target: str) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.method and self.method != method:
            return False
        return not (self.contains and self.contains not in target)


@dataclass
class Request:
    method: str
    target: str
    head: bytes
    body: bytes
    keep_alive: bool = True


@dataclass
class FaultProxy:
    backend_port: int
    port: int = 0
    delay: float = 0.0
    rules: list[Rule] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, target, outcome)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, self.port))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    # -- configuring faults ------------------------------------------------------------
    def latency(self, seconds: float) -> None:
        self.delay = seconds

    def add(self, action: str, *, status: int = 503, seconds: float = 0.0, method: str | None = None,
            contains: str | None = None, count: int | None = None) -> Rule:
        rule = Rule(action, status, seconds, method, contains, count)
        with self._lock:
            self.rules.append(rule)
        return rule

    def fail(self, status: int = 503, **kw: object) -> Rule:
        return self.add("fail", status=status, **kw)  # type: ignore[arg-type]

    def reset(self, **kw: object) -> Rule:
        return self.add("reset", **kw)  # type: ignore[arg-type]

    def stall(self, seconds: float, **kw: object) -> Rule:
        return self.add("stall", seconds=seconds, **kw)  # type: ignore[arg-type]

    def cut_short(self, **kw: object) -> Rule:
        return self.add("cut_short", **kw)  # type: ignore[arg-type]

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.delay = 0.0

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()

    # -- serving -----------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _pick(self, req: Request) -> Rule | None:
        with self._lock:
            self.counts[req.method] += 1
            for rule in self.rules:
                if rule.matches(req.method, req.target):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return rule
        return None

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        try:
            while not self._closed:
                req = _read_request(conn, buf)
                if req is None:
                    return
                if self.delay:
                    time.sleep(self.delay)
                rule = self._pick(req)
                outcome = rule.action if rule else "forwarded"
                self.log.append((req.method, req.target, outcome))
                if rule is None:
                    if not self._forward(conn, req, cut=False):
                        return
                elif rule.action == "fail":
                    body = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>'
                        f'{"SlowDown" if rule.status == 503 else "InternalError"}</Code>'
                        f"<Message>injected fault</Message></Error>"
                    ).encode()
                    conn.sendall(  # an answer to HEAD has no body (it would poison the connection)
                        f"HTTP/1.1 {rule.status} Injected\r\nContent-Type: application/xml\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode() + (b"" if req.method == "HEAD" else body)
                    )
                elif rule.action == "reset":
                    _rst(conn)
                    return
                elif rule.action == "stall":
                    time.sleep(rule.seconds)
                    _rst(conn)
                    return
                elif rule.action == "cut_short":
                    self._forward(conn, req, cut=True)
                    return
                if not req.keep_alive:
                    return
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _forward(self, conn: socket.socket, req: Request, *, cut: bool) -> bool:
        """Send the request to the backend and relay its answer; False if the client must go."""
        head = _set_header(req.head, b"Connection", b"close")
        with socket.create_connection((HOST, self.backend_port), timeout=60) as back:
            back.sendall(head + req.body)
            data = bytearray()
            while True:
                chunk = back.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        header_end = data.find(b"\r\n\r\n")
        if header_end < 0:
            _rst(conn)
            return False
        headers = bytes(data[:header_end]).lower()
        body = bytes(data[header_end + 4:])
        framed = b"content-length:" in headers
        if cut:
            conn.sendall(bytes(data[:header_end + 4]) + body[: len(body) // 2])
            return False
        if not framed:  # length given by closing the connection: keep that framing
            conn.sendall(bytes(data[:header_end]) + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            return True
        conn.sendall(bytes(data))
        return True


def _rst(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        conn.close()


def _set_header(head: bytes, name: bytes, value: bytes | None) -> bytes:
    """Replace (or with ``value`` None, drop) one header of a request head."""
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    lines = [l for l in lines if not l.lower().startswith(name.lower() + b":")]
    if value is not None:
        lines.append(name + b": " + value)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _read_request(conn: socket.socket, buf: bytearray) -> Request | None:
    """One request (head and Content-Length body) from the client, or None at EOF."""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end])
    del buf[:end]
    first, *header_lines = head.decode("latin-1").split("\r\n")
    method, target, _ = first.split(" ", 2)
    length = 0
    keep_alive = True
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
        if name.strip().lower() == "connection" and value.strip().lower() == "close":
            keep_alive = False
        if name.strip().lower() == "expect" and "100-continue" in value.lower():
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    while len(buf) < length:
        chunk = conn.recv(1 << 20)
        if not chunk:
            return None
        buf += chunk
    body = bytes(buf[:length])
    del buf[:length]
    head = _set_header(head, b"Expect", None)  # already answered with 100 Continue
    return Request(method, target, head, body, keep_alive)
