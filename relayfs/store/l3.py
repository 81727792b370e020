"""L3: the object store that makes data durable (S3, Storj, or a local stand-in directory).

Every method here BLOCKS and is meant to run in a worker thread, never on the trio loop.
Both backends are safe to call from many threads at once. Failures come out as the typed
``StoreError`` family so callers can decide between "retry later" (``StoreUnavailable``),
"tell the user" (``StoreAuthError``, ``BucketMissing``) and "the object is not there"
(``ObjectMissing``); ``str(error)`` is always a one-line human reason.

Keys are relative, '/'-separated names (``blobs/ab/abcd...``). Both backends refuse the same
hostile keys with ``ValueError``, so a key that works in tests against ``DirStore`` also works
against S3 and can never escape a ``DirStore`` root.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import logging
import os
import stat
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, NoReturn, Protocol, runtime_checkable

import boto3
import botocore.config
import botocore.exceptions
import botocore.handlers

from . import providers

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_PART_SIZE = providers.S3.part_size
STORJ_PART_SIZE = providers.STORJ.part_size  # one Storj segment per part
STORJ_ENDPOINT = providers.STORJ.endpoint or ""
DEFAULT_THREADS = providers.S3.transfer_threads
DEFAULT_READ_TIMEOUT = 60.0  # seconds without a byte of an S3 answer before boto3 gives up
S3_MIN_PART_SIZE = 5 * MiB  # S3 rejects smaller non-final parts at CompleteMultipartUpload
S3_MAX_PARTS = 10_000
KEY_MAX_BYTES = 1024  # S3's limit on key length, applied to both backends for parity
DIR_COPY_CHUNK = 1 * MiB  # DirStore.put_file copies (and reports progress) in these steps
DIR_TMP = ".tmp"  # DirStore's temp area inside its root; never a key
DIR_TMP_MAX_AGE = 24 * 3600  # stale temp files (from crashes) older than this are removed

ProgressFn = Callable[[int], None]


class StoreError(Exception):
    """Base of every L3 failure; str(e) is a one-line human reason."""


class ObjectMissing(StoreError):
    """The key does not exist."""


class StoreUnavailable(StoreError):
    """Network trouble, 5xx, throttling or timeouts: worth retrying later."""


class StoreAuthError(StoreError):
    """Bad or missing credentials, or access denied (403)."""


class BucketMissing(StoreError):
    """The bucket (or the DirStore root directory) does not exist."""


@runtime_checkable
class ObjectStore(Protocol):
    """What the tiers above need from L3. All methods block; call them from worker threads."""

    description: str

    def check(self) -> None: ...

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> bool: ...

    def put_file(self, key: str, path: str, *, progress: ProgressFn | None = None) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def get_range(self, key: str, start: int, length: int) -> bytes: ...

    def head(self, key: str) -> int | None: ...

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]: ...

    def delete(self, key: str) -> None: ...

    def multipart_uploads(self, prefix: str) -> list[tuple[str, str]]: ...

    def abort_multipart(self, key: str, upload_id: str) -> None: ...


# --------------------------------------------------------------------------- key checks


def _check_text(what: str, text: str) -> None:
    """Refuse what no backend can store faithfully: NUL, backslash, non-UTF-8, overlong."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a str, not {type(text).__name__}")
    if "\x00" in text:
        raise ValueError(f"{what} {text!r} contains a NUL byte")
    if "\\" in text:
        raise ValueError(f"{what} {text!r} contains a backslash")
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {text!r} is not valid UTF-8") from None
    if len(encoded) > KEY_MAX_BYTES:
        raise ValueError(f"{what} is longer than {KEY_MAX_BYTES} bytes")


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a safe relative object key, else raise ValueError.

    Besides what the contract lists (empty, absolute, '..', NUL, backslash) this also refuses
    empty and '.' segments ('a//b', 'a/', 'a/./b'): a directory-backed store would fold them
    into another key, so S3 must refuse them too to keep both backends equivalent.
    """
    _check_text("key", key)
    if not key:
        raise ValueError("empty key")
    if key.startswith("/"):
        raise ValueError(f"key {key!r} is absolute")
    for segment in key.split("/"):
        if segment == "..":
            raise ValueError(f"key {key!r} contains a '..' segment")
        if segment in ("", "."):
            raise ValueError(f"key {key!r} contains an empty or '.' segment")
    return key


def validate_prefix(prefix: str) -> str:
    """Like validate_key, but '' and a trailing '/' or partial last segment are fine."""
    _check_text("prefix", prefix)
    if not prefix:
        return prefix
    if prefix.startswith("/"):
        raise ValueError(f"prefix {prefix!r} is absolute")
    segments = prefix.split("/")
    for index, segment in enumerate(segments):
        if segment == "..":
            raise ValueError(f"prefix {prefix!r} contains a '..' segment")
        last = index == len(segments) - 1
        if segment == "." or (segment == "" and not last):
            raise ValueError(f"prefix {prefix!r} contains an empty or '.' segment")
    return prefix


def _normalise_store_prefix(prefix: str) -> str:
    """'' -> '', 'a/b' / '/a/b/' / 'a//b' -> 'a/b/': one place to prepend, no double slashes."""
    _check_text("store prefix", prefix)
    segments = [s for s in prefix.split("/") if s]
    for segment in segments:
        if segment in (".", ".."):
            raise ValueError(f"store prefix {prefix!r} contains a '.' or '..' segment")
    return "".join(s + "/" for s in segments)


def _check_range(start: int, length: int) -> None:
    if start < 0 or length < 0:
        raise ValueError(f"invalid range start={start} length={length}")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _md5_b64(data: bytes) -> str:
    """Content-MD5 lets the server reject a corrupted body; boto3 no longer sends it itself."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def _public_endpoint(url: str) -> str:
    """The endpoint without any user:password@ part, safe to show in messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


# --------------------------------------------------------------------------- S3


_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AccountProblem",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
        "RequestTimeTooSkewed",
    }
)
_UNAVAILABLE_CODES = frozenset(
    {
        "InternalError",
        "RequestTimeout",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "BandwidthLimitExceeded",
    }
)
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_EXISTS_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_CREDENTIAL_ERRORS: tuple[type[Exception], ...] = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
    botocore.exceptions.ProfileNotFound,
)
_NETWORK_ERRORS: tuple[type[Exception], ...] = (
    botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, SSLError
    botocore.exceptions.HTTPClientError,  # ReadTimeoutError, ConnectionClosedError, streaming
    botocore.exceptions.IncompleteReadError,
)


def _network_reason(exc: Exception) -> str:
    """A short phrase for a transport failure (botocore's text repeats the whole URL)."""
    phrases: tuple[tuple[type[Exception], str], ...] = (
        (botocore.exceptions.ConnectTimeoutError, "connect timed out"),
        (botocore.exceptions.ReadTimeoutError, "read timed out"),
        (botocore.exceptions.SSLError, "TLS error"),
        (botocore.exceptions.ProxyConnectionError, "proxy connection failed"),
        (botocore.exceptions.EndpointConnectionError, "connection failed"),
        (botocore.exceptions.ConnectionClosedError, "connection closed by the server"),
        (botocore.exceptions.ResponseStreamingError, "connection dropped while receiving"),
        (botocore.exceptions.IncompleteReadError, "connection dropped while receiving"),
    )
    for cls, phrase in phrases:
        if isinstance(exc, cls):
            return phrase
    return type(exc).__name__


def _client_error_code(exc: botocore.exceptions.ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {}) or {}
    meta = exc.response.get("ResponseMetadata", {}) or {}
    code = str(error.get("Code", "") or "")
    status = int(meta.get("HTTPStatusCode", 0) or 0)
    if not status and code.isdigit():
        status = int(code)
    return code, status


class S3Store:
    """An S3 (or S3-compatible: Storj, MinIO, moto) bucket, optionally below a key prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        threads: int = DEFAULT_THREADS,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        """``access_key_id``/``secret_access_key`` go to boto3 as given; None: boto3's chain."""
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid bucket name {bucket!r}")
        if part_size < S3_MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {S3_MIN_PART_SIZE} bytes (S3 minimum)")
        if threads < 1:
            raise ValueError("threads must be at least 1")
        if read_timeout <= 0:
            raise ValueError("s3_read_timeout must be a positive number of seconds")
        self.bucket = bucket
        self.prefix = _normalise_store_prefix(prefix)
        self.part_size = part_size
        self.threads = threads
        config = botocore.config.Config(
            # Flexible checksums (CRC32 headers or aws-chunked trailers, boto3's default since
            # 1.36) are not understood by every S3-compatible gateway: Storj's answers 400
            # ChecksumsUnsupported. We send Content-MD5 ourselves instead.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=max(10, threads * 4),
            connect_timeout=5,
            # A server that stalls mid-answer holds a worker thread this long per try (boto3
            # retries, then the job backs off); the s3_read_timeout setting changes it.
            read_timeout=read_timeout,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        # A private session: the default boto3 session is not safe to share across threads.
        try:
            session = boto3.session.Session()
            self._client: Any = session.client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config,
                aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
            )
        except botocore.exceptions.ProfileNotFound as exc:
            raise StoreAuthError(f"AWS configuration: {_one_line(exc)}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise StoreError(f"cannot set up S3 client for bucket {bucket!r}: {_one_line(exc)}") from exc
        # botocore makes every PUT with a file body wait for "100 Continue": one round trip
        # more per part and per small object, for a rejection we would only retry anyway.
        self._client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
        self.endpoint = _public_endpoint(str(self._client.meta.endpoint_url))
        # Multipart uploads whose abort failed (typically during an outage); retried by later
        # check()/put_file() calls so they do not linger until a lifecycle rule removes them.
        self._pending_aborts: set[tuple[str, str]] = set()
        self._pending_lock = threading.Lock()
        self.description = f"s3://{bucket}/{self.prefix} at {self.endpoint}"

    def __repr__(self) -> str:
        return f"S3Store({self.description!r})"

    # -- helpers

    def _full(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _raise(self, exc: Exception, op: str, key: str | None) -> NoReturn:
        """Turn a botocore failure into the typed StoreError it means, with a one-line reason."""
        where = f"{op} {key!r} in {self.description}" if key is not None else f"{op} {self.description}"
        if isinstance(exc, botocore.exceptions.ClientError):
            code, status = _client_error_code(exc)
            message = _one_line(exc.response.get("Error", {}).get("Message", "") or code or status)
            if code == "NoSuchBucket":
                raise BucketMissing(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint}"
                ) from exc
            if code in _MISSING_KEY_CODES or (status == 404 and code != "NoSuchUpload"):
                raise ObjectMissing(f"{where}: no such object") from exc
            if code in _AUTH_CODES or status in (401, 403):
                raise StoreAuthError(
                    f"{where}: access denied ({code or status}: {message}); check credentials"
                ) from exc
            if code in _UNAVAILABLE_CODES or status >= 500 or status == 429:
                raise StoreUnavailable(f"{where}: server busy or failing ({code or status})") from exc
            raise StoreError(f"{where}: {code or status}: {message}") from exc
        if isinstance(exc, _CREDENTIAL_ERRORS):
            raise StoreAuthError(
                f"{where}: no usable credentials ({_one_line(exc)}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY or configure ~/.aws/credentials"
            ) from exc
        if isinstance(exc, _NETWORK_ERRORS):
            raise StoreUnavailable(f"{where}: cannot reach the endpoint ({_network_reason(exc)})") from exc
        raise StoreError(f"{where}: {_one_line(exc)}") from exc

    @contextlib.contextmanager
    def _errors(self, op: str, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            self._raise(exc, op, key)

    # -- protocol

    def check(self) -> None:
        """HEAD the bucket: proves the endpoint answers, credentials work and the bucket exists."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            code, status = _client_error_code(exc)
            if status == 404 or code in ("NoSuchBucket", "NotFound"):
                raise BucketMissing(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint}"
                ) from exc
            if status in (401, 403) or code in _AUTH_CODES:
                raise StoreAuthError(
                    f"access to bucket {self.bucket!r} at {self.endpoint} denied; check credentials"
                ) from exc
            self._raise(exc, "check", None)
        except botocore.exceptions.BotoCoreError as exc:
            self._raise(exc, "check", None)
        self._retry_aborts()

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        """Store ``data``; with ``if_absent`` an existing object wins and we return False."""
        full = self._full(key)
        extra: dict[str, str] = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=full, Body=bytes(data), ContentMD5=_md5_b64(data), **extra
            )
        except botocore.exceptions.ClientError as exc:
            code, status = _client_error_code(exc)
            if if_absent and (code in _EXISTS_CODES or status in (409, 412)):
                log.debug("put_if_absent %r: already exists (%s)", full, code or status)
                return False
            self._raise(exc, "put", key)
        except botocore.exceptions.BotoCoreError as exc:
            self._raise(exc, "put", key)
        return True

    def put_file(self, key: str, path: str, *, progress: ProgressFn | None = None) -> None:
        """Upload a local file: one PUT up to part_size, otherwise a parallel multipart upload.

        ``progress`` is called in the calling thread with the size of each part once the server
        has accepted it, so the calls always sum to the file size on success. Errors reading the
        local file propagate as ``OSError``; a started multipart upload is always aborted.
        """
        full = self._full(key)
        with open(path, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            if size <= self.part_size:
                data = src.read()
                if len(data) != size:
                    raise OSError(errno.EIO, f"{path} changed size while uploading")
                with self._errors("put", key):
                    self._client.put_object(
                        Bucket=self.bucket, Key=full, Body=data, ContentMD5=_md5_b64(data)
                    )
                if progress is not None and size:
                    progress(size)
                return
            self._put_multipart(key, full, src.fileno(), path, size, progress)

    def _put_multipart(
        self, key: str, full: str, fd: int, path: str, size: int, progress: ProgressFn | None
    ) -> None:
        part_size = self.part_size
        if -(-size // part_size) > S3_MAX_PARTS:
            smallest = -(-size // S3_MAX_PARTS)
            part_size = -(-smallest // MiB) * MiB
            log.info("%s: %d bytes need %d-byte parts to stay within %d parts",
                     full, size, part_size, S3_MAX_PARTS)
        count = -(-size // part_size)
        self._retry_aborts()
        with self._errors("start multipart upload of", key):
            upload_id: str = self._client.create_multipart_upload(Bucket=self.bucket, Key=full)[
                "UploadId"
            ]
        log.debug("multipart %s: %d parts of %d bytes, upload id %s", full, count, part_size, upload_id)

        def send(number: int) -> tuple[int, str, int]:
            offset = (number - 1) * part_size
            want = min(part_size, size - offset)
            data = os.pread(fd, want, offset)
            if len(data) != want:
                raise OSError(errno.EIO, f"{path} shrank while uploading (part {number})")
            with self._errors(f"upload part {number} of", key):
                response = self._client.upload_part(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                    ContentMD5=_md5_b64(data),
                )
            return number, str(response["ETag"]), want

        etags: dict[int, str] = {}
        try:
            # A sliding window of at most `threads` parts in flight bounds memory to
            # threads * part_size and lets a failure stop the upload early.
            with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="l3-part") as pool:
                pending: set[Future[tuple[int, str, int]]] = set()
                next_part = 1
                try:
                    while next_part <= count or pending:
                        while next_part <= count and len(pending) < self.threads:
                            pending.add(pool.submit(send, next_part))
                            next_part += 1
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            number, etag, sent = future.result()
                            etags[number] = etag
                            if progress is not None:
                                progress(sent)
                except BaseException:
                    for future in pending:
                        future.cancel()
                    raise
            parts = [{"ETag": etags[n], "PartNumber": n} for n in range(1, count + 1)]
            with self._errors("complete multipart upload of", key):
                self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            self._abort(full, upload_id)
            raise

    def _abort(self, full: str, upload_id: str) -> bool:
        """Abort a multipart upload; if that fails too, remember it for a later retry."""
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except botocore.exceptions.ClientError as exc:
            code, status = _client_error_code(exc)
            if code != "NoSuchUpload" and status != 404:
                return self._abort_failed(full, upload_id, exc)
        except botocore.exceptions.BotoCoreError as exc:
            return self._abort_failed(full, upload_id, exc)
        log.debug("aborted multipart upload %s of %s", upload_id, full)
        with self._pending_lock:
            self._pending_aborts.discard((full, upload_id))
        return True

    def _abort_failed(self, full: str, upload_id: str, exc: Exception) -> bool:
        with self._pending_lock:
            self._pending_aborts.add((full, upload_id))
        log.warning("could not abort multipart upload %s of %s in %s (%s); will retry",
                    upload_id, full, self.description, _one_line(exc))
        return False

    def _retry_aborts(self) -> None:
        """Abort uploads a previous failure left behind, now that the store may be back."""
        with self._pending_lock:
            pending = sorted(self._pending_aborts)
        for full, upload_id in pending:
            if not self._abort(full, upload_id):
                return  # still unreachable: try again next time

    def get_bytes(self, key: str) -> bytes:
        full = self._full(key)
        with self._errors("get", key):
            response = self._client.get_object(Bucket=self.bucket, Key=full)
            with contextlib.closing(response["Body"]) as body:
                return bytes(body.read())

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Bytes [start, start+length); fewer only at the end of the object, b'' past it."""
        full = self._full(key)
        _check_range(start, length)
        if length == 0:
            return b""
        try:
            response = self._client.get_object(
                Bucket=self.bucket, Key=full, Range=f"bytes={start}-{start + length - 1}"
            )
            with contextlib.closing(response["Body"]) as body:
                data = bytes(body.read())
        except botocore.exceptions.ClientError as exc:
            code, status = _client_error_code(exc)
            if code == "InvalidRange" or status == 416:
                return b""  # start is at or past the end of the object
            self._raise(exc, "get range of", key)
        except botocore.exceptions.BotoCoreError as exc:
            self._raise(exc, "get range of", key)
        if "ContentRange" not in response:
            # A server that ignored Range sent the whole object; cut it ourselves.
            data = data[start : start + length]
        return data[:length]

    def head(self, key: str) -> int | None:
        full = self._full(key)
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=full)
        except botocore.exceptions.ClientError as exc:
            code, status = _client_error_code(exc)
            if status == 404 or code in _MISSING_KEY_CODES:
                return None
            self._raise(exc, "head", key)
        except botocore.exceptions.BotoCoreError as exc:
            self._raise(exc, "head", key)
        return int(response["ContentLength"])

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        """Keys under ``prefix`` after ``start_after``, in S3's (UTF-8 byte) order, unprefixed."""
        validate_prefix(prefix)
        _check_text("start_after", start_after)
        kwargs: dict[str, str] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if start_after:
            kwargs["StartAfter"] = self.prefix + start_after
        return self._list(kwargs)

    def _list(self, kwargs: dict[str, str]) -> Iterator[str]:
        strip = len(self.prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        with self._errors("list", kwargs["Prefix"]):
            for page in paginator.paginate(**kwargs):
                for item in page.get("Contents", ()):
                    full = str(item["Key"])
                    if full.startswith(self.prefix):
                        yield full[strip:]

    def delete(self, key: str) -> None:
        """S3 DeleteObject already succeeds for missing keys, which makes this idempotent."""
        full = self._full(key)
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=full)

    def multipart_uploads(self, prefix: str) -> list[tuple[str, str]]:
        """(key, upload id) of every multipart upload in progress under ``prefix``.

        A daemon killed mid-upload leaves its upload open (its parts keep costing storage);
        the next attempt finds it here and aborts it.
        """
        validate_prefix(prefix)
        strip = len(self.prefix)
        out: list[tuple[str, str]] = []
        paginator = self._client.get_paginator("list_multipart_uploads")
        with self._errors("list multipart uploads of", prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Uploads", ()):
                    full = str(item["Key"])
                    if full.startswith(self.prefix + prefix):
                        out.append((full[strip:], str(item["UploadId"])))
        return out

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort one multipart upload; one already gone counts as aborted."""
        full = self._full(key)
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except botocore.exceptions.ClientError as exc:
            code, status = _client_error_code(exc)
            if code == "NoSuchUpload" or status == 404:
                return
            self._raise(exc, "abort multipart upload of", key)
        except botocore.exceptions.BotoCoreError as exc:
            self._raise(exc, "abort multipart upload of", key)
        with self._pending_lock:
            self._pending_aborts.discard((full, upload_id))
        log.debug("aborted multipart upload %s of %s", upload_id, full)


# --------------------------------------------------------------------------- directory


_UNAVAILABLE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ESTALE, errno.ENOTCONN, errno.ETIMEDOUT,
     errno.EROFS, errno.EAGAIN}
)
_MISSING_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR})


def _fsync_dir(path: str) -> None:
    """Make a rename or new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirStore:
    """A local directory standing in for a bucket: the embedded default with no account.

    Keys map to files below ``root`` ('/' becomes subdirectories). Every write lands in
    ``root/.tmp/`` first, is fsynced and then renamed (or hard-linked, for put-if-absent) into
    place, so a reader never sees a partial object and a crash never leaves one.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self._tmp = os.path.join(self.root, DIR_TMP)
        self.description = f"file://{self.root}"

    def __repr__(self) -> str:
        return f"DirStore({self.root!r})"

    # -- helpers

    def _path(self, key: str) -> str:
        validate_key(key)
        if key.split("/", 1)[0] == DIR_TMP:
            raise ValueError(f"key {key!r} uses the reserved directory {DIR_TMP!r}")
        return os.path.join(self.root, *key.split("/"))

    def _root_missing(self) -> bool:
        return not os.path.isdir(self.root)

    def _raise(self, exc: OSError, op: str, key: str | None) -> NoReturn:
        where = f"{op} {key!r} in {self.description}" if key is not None else f"{op} {self.description}"
        reason = exc.strerror or _one_line(exc)
        if exc.errno in _MISSING_ERRNOS and self._root_missing():
            # An unmounted drive must not look like "every object vanished".
            raise BucketMissing(f"store directory {self.root!r} does not exist") from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise StoreAuthError(f"{where}: permission denied") from exc
        if exc.errno in _UNAVAILABLE_ERRNOS:
            raise StoreUnavailable(f"{where}: {reason}") from exc
        if exc.errno in _MISSING_ERRNOS:
            raise ObjectMissing(f"{where}: no such object") from exc
        raise StoreError(f"{where}: {reason}") from exc

    @contextlib.contextmanager
    def _errors(self, op: str, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self._raise(exc, op, key)

    def _require_root(self) -> None:
        """Writes never create the root: that is check()'s job, so a vanished mount is noticed."""
        if self._root_missing():
            raise BucketMissing(f"store directory {self.root!r} does not exist")

    def _make_parents(self, path: str) -> None:
        """Create the directories between root and ``path``, fsyncing each new entry."""
        parent = os.path.dirname(path)
        missing: list[str] = []
        while parent != self.root and not os.path.isdir(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(missing):
            try:
                os.mkdir(directory)
            except FileExistsError:
                # One lstat, not isdir()+exists(): a concurrent delete may prune and another
                # writer recreate the directory between two separate checks.
                if stat.S_ISDIR(os.lstat(directory).st_mode):  # FileNotFoundError: start over
                    continue  # another writer made it
                raise NotADirectoryError(errno.ENOTDIR, "a key is in the way", directory) from None
            _fsync_dir(os.path.dirname(directory))

    def _new_temp(self) -> tuple[int, str]:
        os.makedirs(self._tmp, exist_ok=True)
        return tempfile.mkstemp(dir=self._tmp, prefix="put-")

    def _place(self, tmp: str, final: str, key: str, *, if_absent: bool) -> bool:
        """Move a finished temp file into place; False if if_absent and the key exists."""
        in_the_way = f"put {key!r} in {self.description}: another key is in the way"
        for _attempt in range(50):
            try:
                self._make_parents(final)
                if if_absent:
                    os.link(tmp, final)
                else:
                    os.replace(tmp, final)
            except FileExistsError:
                if os.path.isdir(final):
                    raise StoreError(in_the_way) from None
                return False
            except (IsADirectoryError, NotADirectoryError):
                raise StoreError(in_the_way) from None
            except FileNotFoundError:
                # A concurrent delete pruned a parent directory we had just made; redo it.
                self._require_root()
                continue
            with contextlib.suppress(FileNotFoundError):  # key deleted again meanwhile
                _fsync_dir(os.path.dirname(final))
            return True
        raise StoreUnavailable(f"put {key!r} in {self.description}: parent directory keeps vanishing")

    def _write(self, key: str, fill: Callable[[int], None], *, if_absent: bool) -> bool:
        final = self._path(key)
        self._require_root()
        with self._errors("put", key):
            fd, tmp = self._new_temp()
        try:
            try:
                fill(fd)
                with self._errors("put", key):
                    os.fsync(fd)
            finally:
                os.close(fd)
            with self._errors("put", key):
                return self._place(tmp, final, key, if_absent=if_absent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    # -- protocol

    def check(self) -> None:
        """Create the root if needed and make sure we can write there; tidy crash leftovers."""
        try:
            os.makedirs(self._tmp, exist_ok=True)
        except FileExistsError:
            raise StoreError(f"{self.root!r} is not a directory") from None
        except OSError as exc:
            self._raise(exc, "check", None)
        if not os.access(self.root, os.W_OK | os.X_OK) or not os.access(self._tmp, os.W_OK | os.X_OK):
            raise StoreAuthError(f"store directory {self.root!r} is not writable")
        cutoff = time.time() - DIR_TMP_MAX_AGE
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._tmp):
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        log.info("removed stale temp file %s", entry.path)

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        view = memoryview(data)

        def fill(fd: int) -> None:
            with self._errors("put", key):
                written = 0
                while written < len(view):
                    written += os.write(fd, view[written:])

        return self._write(key, fill, if_absent=if_absent)

    def put_file(self, key: str, path: str, *, progress: ProgressFn | None = None) -> None:
        """Copy a local file in 1 MiB steps; errors reading ``path`` propagate as OSError."""
        self._path(key)  # refuse a hostile key before touching the source
        with open(path, "rb") as src:

            def fill(fd: int) -> None:
                while True:
                    chunk = src.read(DIR_COPY_CHUNK)  # source errors stay plain OSError
                    if not chunk:
                        return
                    with self._errors("put", key):
                        view = memoryview(chunk)
                        written = 0
                        while written < len(view):
                            written += os.write(fd, view[written:])
                    if progress is not None:
                        progress(len(chunk))

            self._write(key, fill, if_absent=False)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        with self._errors("get", key):
            with open(path, "rb") as f:
                return f.read()

    def get_range(self, key: str, start: int, length: int) -> bytes:
        path = self._path(key)
        _check_range(start, length)
        with self._errors("get range of", key):
            fd = os.open(path, os.O_RDONLY)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise IsADirectoryError(errno.EISDIR, "not an object", path)
                chunks: list[bytes] = []
                got = 0
                while got < length:
                    chunk = os.pread(fd, length - got, start + got)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    got += len(chunk)
                return b"".join(chunks)
            finally:
                os.close(fd)

    def head(self, key: str) -> int | None:
        path = self._path(key)
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno in _MISSING_ERRNOS and not self._root_missing():
                return None
            self._raise(exc, "head", key)
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        """Walk only the directories that can hold matching keys, yielding in key order."""
        validate_prefix(prefix)
        _check_text("start_after", start_after)
        self._require_root()
        base = prefix.rpartition("/")[0]
        rel = base + "/" if base else ""
        top = os.path.join(self.root, *base.split("/")) if base else self.root
        return self._walk(top, rel, prefix, start_after)

    def _walk(self, directory: str, rel: str, prefix: str, start_after: str) -> Iterator[str]:
        # Sorting a directory's entries with directories keyed as "name/" gives global key
        # order, because no file name in the same directory can start with "name/".
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            if self._root_missing():
                raise BucketMissing(f"store directory {self.root!r} does not exist") from None
            return
        except OSError as exc:
            self._raise(exc, "list", prefix)
        items: list[tuple[str, bool, str]] = []
        for entry in entries:
            name = entry.name
            if not rel and name == DIR_TMP:
                continue
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                continue  # not a name we could have written
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            items.append((rel + name + ("/" if is_dir else ""), is_dir, entry.path))
        items.sort()
        for key, is_dir, path in items:
            if is_dir:
                if not (key.startswith(prefix) or prefix.startswith(key)):
                    continue
                if start_after >= key and not start_after.startswith(key):
                    continue  # every key in here sorts at or before start_after
                yield from self._walk(path, key, prefix, start_after)
            elif key.startswith(prefix) and key > start_after:
                yield key

    def delete(self, key: str) -> None:
        """Remove the file (missing is fine) and prune parent directories it left empty."""
        path = self._path(key)
        self._require_root()
        with self._errors("delete", key):
            try:
                os.unlink(path)
            except FileNotFoundError:
                return
            except IsADirectoryError:
                return  # a "directory" of other keys is not an object: nothing to delete
            with contextlib.suppress(FileNotFoundError):  # a concurrent delete pruned it
                _fsync_dir(os.path.dirname(path))
        parent = os.path.dirname(path)
        while parent != self.root:
            try:
                os.rmdir(parent)
            except OSError:
                break  # not empty (or already gone): stop pruning
            parent = os.path.dirname(parent)

    def multipart_uploads(self, prefix: str) -> list[tuple[str, str]]:
        """None ever: a put lands in one temp file, and ``check`` tidies temp files a crash left."""
        validate_prefix(prefix)
        return []

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Nothing to abort: a directory store has no multipart uploads."""
        self._path(key)


# --------------------------------------------------------------------------- factory


_URL_FORMS = "s3://BUCKET[/PREFIX], storj://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH"


def make_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    part_size: int | None = None,
    threads: int | None = None,
    read_timeout: float | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> ObjectStore:
    """Build the store a configuration URL names; part_size/threads None mean the defaults."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        raise ValueError(f"unsupported store URL {url!r}: expected {_URL_FORMS}")
    if scheme in ("s3", "storj"):
        bucket = parts.netloc
        if not bucket or "@" in bucket or ":" in bucket:
            raise ValueError(f"unsupported store URL {url!r}: expected {_URL_FORMS}")
        # storj:// is the Storj preset; an explicit endpoint (a self-hosted gateway) still wins.
        preset = providers.STORJ if scheme == "storj" else providers.S3
        endpoint_url = endpoint_url or preset.endpoint
        return S3Store(
            bucket,
            parts.path.lstrip("/"),
            endpoint_url=endpoint_url,
            region=region,
            part_size=part_size if part_size is not None else preset.part_size,
            threads=threads if threads is not None else preset.transfer_threads,
            read_timeout=read_timeout if read_timeout is not None else DEFAULT_READ_TIMEOUT,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
        )
    if scheme == "file":
        path = urllib.parse.unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise ValueError(f"unsupported store URL {url!r}: expected {_URL_FORMS}")
        return DirStore(path)
    raise ValueError(f"unsupported store URL {url!r}: expected {_URL_FORMS}")
