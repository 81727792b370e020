"""moto's standalone S3 server with the benchmark-only patches BENCHMARKS.md calls for.

Run as its own process (``python -m relaybench.motoserver --port P``), like
tests/s3server.py runs stock moto, so its GIL never competes with the measuring process.
Each patch can be turned off by a flag; the benchmark prints which ones were on.

* ``keepalive``: werkzeug's dev server speaks HTTP/1.0 and closes the connection after
  every answer, so every request pays a reconnect a real gateway does not charge. Serving
  HTTP/1.1 keeps connections alive (werkzeug then frames answers by length or chunks).
* ``range``: stock moto copies the whole object for every GET and slices the copy, about
  140 ms per ranged GET of a 256 MiB object, which would make parallel ranged reads look
  slow for moto's sake. The patch reads only the asked-for bytes from the object's buffer.
  A request carrying ``x-bench-stock-range: 1`` still takes the stock path, so the rig can
  report what the copy costs in the same run.
* ``nullversion``: moto answers 400 to ``HEAD key?versionId=null`` on an unversioned bucket
  (S3 answers as if no version were named), which makes rclone 1.60 upload every multipart
  file twice. The patch drops ``versionId=null`` on unversioned buckets, as S3 does.
* ``onecopy``: completing a multipart upload builds the object three times over (the parts,
  a bytearray, a second bytearray for the checksum, then ``bytes()`` of each), about 10 GiB
  of RAM for a 2 GiB file. The patch joins the parts once; the ETag and checksum are the same.

Objects stay in RAM (``MOTO_S3_DEFAULT_KEY_BUFFER_SIZE``), as in the rig that measured the
peer figures: a spill to /tmp would put moto's disk I/O beside the caches being measured.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import contextvars
import io
import os
import sys
from typing import Any, Iterator

os.environ.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(64 * 1024**3))

from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3 import models as s3_models  # noqa: E402
from moto.s3 import responses as s3_responses  # noqa: E402
from werkzeug.serving import run_simple  # noqa: E402

_STOCK = contextvars.ContextVar("stock_get", default=False)  # per request thread
_LAZY: contextvars.ContextVar[Any] = contextvars.ContextVar("lazy_key", default=None)


class LazyObject:
    """An object's bytes that ``_handle_range_header`` can measure and slice without a copy."""

    def __init__(self, key: Any) -> None:
        self.key = key

    def __len__(self) -> int:
        return int(self.key.size)

    def __bool__(self) -> bool:
        return self.key.size > 0

    def __getitem__(self, item: slice) -> bytes:
        start, stop, step = item.indices(len(self))
        assert step == 1
        with self.key.lock:
            buf = self.key._value_buffer
            buf.seek(start)
            return buf.read(max(0, stop - start))

    def stream(self) -> Iterator[bytes]:
        size = len(self)
        for start in range(0, size, 1024 * 1024):
            yield self[start:min(size, start + 1024 * 1024)]


def patch_range() -> None:
    stock_get = s3_responses.S3Response.get_object
    stock_key_response = s3_responses.S3Response.key_response
    stock_value = s3_models.FakeKey.value

    def value(key: Any) -> Any:
        # only the request thread that asked for a lazy view of this very key gets one
        return LazyObject(key) if _LAZY.get() is key else stock_value.fget(key)

    s3_models.FakeKey.value = property(value, stock_value.fset)  # type: ignore[method-assign]

    def get_object(self: Any) -> Any:
        if _STOCK.get() or self._get_int_param("partNumber"):
            return stock_get(self)
        key, _ = self._get_key()
        token = _LAZY.set(key)
        try:
            return stock_get(self)
        finally:
            _LAZY.reset(token)

    def key_response(self: Any, request: Any, full_url: str, headers: Any) -> Any:
        token = _STOCK.set(bool(request.headers.get("x-bench-stock-range")))
        try:
            status, out_headers, body = stock_key_response(self, request, full_url, headers)
        finally:
            _STOCK.reset(token)
        if isinstance(body, LazyObject):  # a whole-object GET: stream it, 1 MiB at a time
            body = body.stream()
        return status, out_headers, body

    s3_responses.S3Response.get_object = get_object  # type: ignore[method-assign]
    s3_responses.S3Response.key_response = key_response  # type: ignore[method-assign]


def patch_null_version() -> None:
    stock_head = s3_responses.S3Response.head_object

    def head_object(self: Any, bucket_name: str, query: dict[str, Any], key_name: str, headers: Any) -> Any:
        if query.get("versionId") == ["null"] and not self.backend.get_bucket(bucket_name).is_versioned:
            query = {k: v for k, v in query.items() if k != "versionId"}
        return stock_head(self, bucket_name, query, key_name, headers)

    s3_responses.S3Response.head_object = head_object  # type: ignore[method-assign]


def patch_one_copy() -> None:
    from moto.s3.exceptions import EntityTooSmall, InvalidPart, MalformedXML
    from moto.s3.utils import compute_checksum
    from moto.settings import S3_UPLOAD_PART_MIN_SIZE
    from moto.utilities.utils import md5_hash

    def complete(self: Any, body: Any) -> Any:
        algo = self.metadata.get("x-amz-checksum-algorithm") or "CRC64NVME"
        kind = self.metadata.get("x-amz-checksum-type") or ("FULL_OBJECT" if algo == "CRC64NVME" else "COMPOSITE")
        decode_hex = codecs.getdecoder("hex_codec")
        md5s = bytearray()
        parts = []
        last = None
        for pn, etag in body:
            part = self.parts.get(pn)
            if part is None or part.etag.replace('"', "") != etag.replace('"', ""):
                raise InvalidPart()
            if last is not None and last.contentsize < S3_UPLOAD_PART_MIN_SIZE:
                raise EntityTooSmall()
            md5s.extend(decode_hex(part.etag.replace('"', ""))[0])
            parts.append(part)
            last = part
        if not parts:
            raise MalformedXML
        total = b"".join(p.value for p in parts)
        if kind == "COMPOSITE":
            sums = b"".join(compute_checksum(p.value, algo, encode_base64=False) for p in parts)
            checksum = (kind, compute_checksum(sums, algo).decode(), len(parts))
        else:
            checksum = (kind, compute_checksum(total, algo).decode(), 1)
        full_etag = md5_hash()
        full_etag.update(bytes(md5s))
        return total, f"{full_etag.hexdigest()}-{len(parts)}", checksum

    s3_models.FakeMultipart.complete = complete  # type: ignore[method-assign]


class _Body(io.RawIOBase):
    """The request body as the app sees it: at most Content-Length bytes of the socket.

    Whatever the app leaves unread is drained after the answer, so the next request on the
    kept-alive connection starts where it should (werkzeug's own server cannot know where
    a body ends, which is why it closes every connection).
    """

    def __init__(self, raw: Any, length: int) -> None:
        super().__init__()
        self.raw = raw
        self.left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.left <= 0 or not len(view):
            return 0
        n = self.raw.readinto(view[: min(len(view), self.left)])
        self.left -= n or 0
        if not n:
            self.left = 0
        return n or 0

    def readline(self, size: int | None = -1) -> bytes:
        limit = self.left if size is None or size < 0 else min(size, self.left)
        if limit <= 0:
            return b""
        line = self.raw.readline(limit)
        self.left -= len(line)
        return line

    def drain(self) -> None:
        while self.left > 0:
            data = self.raw.read(min(self.left, 1024 * 1024))
            if not data:
                self.left = 0
                break
            self.left -= len(data)


class KeepAliveHandler(MotoRequestHandler):
    """werkzeug's request handler, speaking HTTP/1.1 with keep-alive.

    ``run_wsgi`` follows werkzeug 3.1's (answers framed by Content-Length, else chunked)
    but does not send ``Connection: close``, drains the unread body exactly instead of
    waiting 10 ms for stray bytes, and leaves the 100-continue answer to http.server
    (which sends it itself under HTTP/1.1). A chunked request body, or any failure,
    closes the connection as before.
    """

    protocol_version = "HTTP/1.1"

    def make_environ(self) -> dict[str, Any]:
        environ = super().make_environ()
        self._body: _Body | None = None
        if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = -1
            if length >= 0:
                self._body = _Body(self.rfile, length)
                environ["wsgi.input"] = self._body
        return environ

    def run_wsgi(self) -> None:
        environ = self.make_environ()
        keep = self._body is not None and not self.close_connection
        state: dict[str, Any] = {"status": None, "headers": None, "sent": False, "chunked": False}

        def write(data: bytes) -> None:
            if not state["sent"]:
                state["sent"] = True
                code_str, _, msg = state["status"].partition(" ")
                code = int(code_str)
                self.send_response(code, msg)
                names = set()
                for name, value in state["headers"]:
                    self.send_header(name, value)
                    names.add(name.lower())
                if not ("content-length" in names or environ["REQUEST_METHOD"] == "HEAD"
                        or 100 <= code < 200 or code in (204, 304)):
                    state["chunked"] = True
                    self.send_header("Transfer-Encoding", "chunked")
                if not keep:
                    self.send_header("Connection", "close")
                self.end_headers()
            if data:
                if state["chunked"]:
                    self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
                else:
                    self.wfile.write(data)

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if exc_info and state["sent"]:
                raise exc_info[1].with_traceback(exc_info[2])
            state["status"], state["headers"] = status, headers
            return write

        try:
            app_iter = self.server.app(environ, start_response)
            try:
                for data in app_iter:
                    write(data)
                if not state["sent"]:
                    write(b"")
                if state["chunked"]:
                    self.wfile.write(b"0\r\n\r\n")
            finally:
                if hasattr(app_iter, "close"):
                    app_iter.close()
            if self._body is not None:
                self._body.drain()
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True
            return
        except Exception as e:
            self.close_connection = True
            if not state["sent"]:
                with contextlib.suppress(Exception):
                    body = b"internal error in moto"
                    self.send_response(500)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body)
            self.log_error("error on request: %r", e)
            return
        if not keep:
            self.close_connection = True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--no-keepalive", action="store_true")
    p.add_argument("--no-range", action="store_true")
    p.add_argument("--no-nullversion", action="store_true")
    p.add_argument("--no-onecopy", action="store_true")
    args = p.parse_args(argv)
    if not args.no_range:
        patch_range()
    if not args.no_nullversion:
        patch_null_version()
    if not args.no_onecopy:
        patch_one_copy()

    handler = MotoRequestHandler if args.no_keepalive else KeepAliveHandler
    handler.log_request = lambda *a, **k: None  # type: ignore[method-assign]  # a line per request is noise

    app = DomainDispatcherApplication(create_backend_app)
    os.environ.setdefault("MOTO_PORT", str(args.port))
    sys.stdout.flush()
    run_simple(args.host, args.port, app, threaded=True, request_handler=handler)


if __name__ == "__main__":
    main()
