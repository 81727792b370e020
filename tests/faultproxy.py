"""An HTTP fault proxy for tests: sits between RelayFS and the S3 server and misbehaves.

It understands just enough HTTP/1.1 (request line, headers, Content-Length bodies) to act on
whole requests. Faults are rules matched in order against each request:

* ``latency(s)``: delay every request by ``s`` seconds;
* ``fail(status)``: answer with an S3-style error (500, 503, ...) instead of forwarding;
* ``reset()``: drop the connection with a TCP reset, no answer;
* ``stall(s)``: hold the request ``s`` seconds without answering, then drop it;
* ``cut_short()``: forward, but send only half the answer's body and close;
* ``drop_answer()``: forward, then drop the connection with a TCP reset: the server acted on
  the request but the client never hears so, and retries it.

Each rule may be limited to a method, a key substring, and a number of hits. ``counts``
records the requests seen per method, for tests that check what was (not) uploaded.

``FaultProxy(..., mode="storj")`` also refuses, before forwarding, what Storj's S3 gateway
(https://gateway.storjshare.io) refuses, with the same S3 error answers:

* any ``x-amz-checksum-*``, ``x-amz-sdk-checksum-algorithm`` or ``x-amz-trailer`` header (the
  flexible checksums boto3 sends by default since 1.36): 400 ``ChecksumsUnsupported``;
* ``If-None-Match`` with anything but ``*``: 501 ``NotImplemented``;
* a CompleteMultipartUpload listing a part under 5 MiB that is not the last: 400
  ``EntityTooSmall`` (part sizes are tracked per upload id, as S3 checks them there);
* a second write to one object name (PutObject, CopyObject, CreateMultipartUpload,
  DeleteObject) within ``write_interval`` seconds of the last one it accepted: 503
  ``SlowDown``. Parts, completions and aborts of an upload are not writes of a name.

``refusals`` counts each refusal by its code; ``client_errors()`` leaves out ``SlowDown``,
which a correct client still meets and must survive by retrying. ``parts`` holds the size of
each part per upload id and ``completed`` the (key, part sizes) of each multipart upload.
Runs in threads of the test process; stops when ``close()`` is called.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from xml.sax.saxutils import escape

HOST = "127.0.0.1"
MODES = ("plain", "storj")
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's (and Storj's) smallest part that is not the last
CHECKSUM_HEADERS = ("x-amz-sdk-checksum-algorithm", "x-amz-trailer")


@dataclass
class Rule:
    action: str  # fail | reset | stall | cut_short | drop_answer
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
    mode: str = "plain"  # "storj": refuse what Storj's gateway refuses (see the module doc)
    write_interval: float = 1.0  # storj mode: seconds between accepted writes of one name
    refusals: Counter[str] = field(default_factory=Counter)  # S3 error code -> times answered
    parts: dict[str, dict[int, int]] = field(default_factory=dict)  # upload id -> part -> size
    completed: list[tuple[str, list[int]]] = field(default_factory=list)  # (key, part sizes)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown proxy mode {self.mode!r}; expected one of {MODES}")
        self._last_write: dict[str, float] = {}  # storj mode: object path -> monotonic time
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

    def drop_answer(self, **kw: object) -> Rule:
        return self.add("drop_answer", **kw)  # type: ignore[arg-type]

    def client_errors(self) -> Counter[str]:
        """Refusals a client that speaks the gateway's dialect never triggers (all but SlowDown)."""
        with self._lock:
            return Counter({code: n for code, n in self.refusals.items() if code != "SlowDown"})

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
                action = rule.action if rule else "forwarded"
                refusal = None
                if action in ("forwarded", "cut_short", "drop_answer") and self.mode == "storj":
                    refusal = self._gateway_refusal(req)
                if refusal is not None:
                    status, code, message = refusal
                    with self._lock:
                        self.refusals[code] += 1
                    self.log.append((req.method, req.target, f"refused {code}"))
                    _send_error(conn, req, status, code, message)
                    if not req.keep_alive:
                        return
                    continue
                self.log.append((req.method, req.target, action))
                if rule is None:
                    if not self._forward(conn, req, cut=False):
                        return
                elif rule.action == "fail":
                    code = "SlowDown" if rule.status == 503 else "InternalError"
                    _send_error(conn, req, rule.status, code, "injected fault")
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
                elif rule.action == "drop_answer":
                    self._forward(conn, req, cut=False, drop=True)
                    return
                if not req.keep_alive:
                    return
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _forward(self, conn: socket.socket, req: Request, *, cut: bool, drop: bool = False) -> bool:
        """Send the request to the backend and relay its answer; False if the client must go.

        ``cut`` relays half the answer's body, ``drop`` none of the answer (a TCP reset)."""
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
        if header_end < 0 or drop:
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


    def _gateway_refusal(self, req: Request) -> tuple[int, str, str] | None:
        """(status, S3 error code, message) if Storj's gateway would refuse ``req``, else None.

        Also the bookkeeping of the requests it lets through: part sizes per upload id,
        completed uploads, and the time of the last accepted write of each object name.
        """
        headers = _headers(req.head)
        for name in headers:
            if name.startswith("x-amz-checksum-") or name in CHECKSUM_HEADERS:
                return 400, "ChecksumsUnsupported", f"header {name} is not supported; send Content-MD5"
        if_none_match = headers.get("if-none-match")
        if if_none_match is not None and if_none_match.strip() != "*":
            return 501, "NotImplemented", "If-None-Match is only implemented for *"
        url = urllib.parse.urlsplit(req.target)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        path = urllib.parse.unquote(url.path)
        key = path.lstrip("/").partition("/")[2]  # path-style: /BUCKET/KEY
        if not key:
            return None  # a bucket request: ListObjects, HeadBucket, DeleteObjects, ...
        upload_id = query.get("uploadId", [None])[0]
        with self._lock:
            if req.method == "PUT" and upload_id is not None and "partNumber" in query:
                size = int(headers.get("x-amz-decoded-content-length", len(req.body)))
                self.parts.setdefault(upload_id, {})[int(query["partNumber"][0])] = size
                return None
            if req.method == "POST" and upload_id is not None:  # CompleteMultipartUpload
                numbers = [int(n) for n in re.findall(rb"<PartNumber>\s*(\d+)\s*</PartNumber>", req.body)]
                sizes = [self.parts.get(upload_id, {}).get(n, 0) for n in numbers]
                if any(size < MIN_PART_SIZE for size in sizes[:-1]):
                    return 400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed object size."
                self.completed.append((key, sizes))
                return None
            writes = req.method in ("PUT", "DELETE") or (req.method == "POST" and "uploads" in query)
            if upload_id is None and writes:
                now = time.monotonic()
                last = self._last_write.get(path)
                if last is not None and now - last < self.write_interval:
                    return 503, "SlowDown", "Please reduce your request rate."
                self._last_write[path] = now
        return None


def _send_error(conn: socket.socket, req: Request, status: int, code: str, message: str) -> None:
    """An S3-style XML error answer; an answer to HEAD has no body (it would poison the connection)."""
    resource = escape(urllib.parse.urlsplit(req.target).path)
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>{escape(message)}</Message><Resource>{resource}</Resource></Error>"
    ).encode()
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    conn.sendall(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + (b"" if req.method == "HEAD" else body)
    )


def _headers(head: bytes) -> dict[str, str]:
    """The headers of a request head, names lower-cased."""
    out: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


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
