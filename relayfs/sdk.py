"""The Python API: RelayFS's versioned store without a mount.

    import relayfs

    with relayfs.open(l3="storj://my-bucket") as fs:
        put = fs.put("reports/q3.txt", b"numbers")      # returns at once: put.version, put.job
        with fs.get("reports/q3.txt") as f:             # streaming, read-only file object
            print(f.read())
        for v in fs.versions("reports/q3.txt"):
            print(v.version, v.size, v.state, v.tier)
        fs.rollback("reports/q3.txt", 1)
        fs.wait()                                        # until every upload is in L3

A client is an ``Engine`` (engine.py: catalog, L1/L2/L3, job runner, poller) running on a
trio loop in a background thread; each method hands its call to that loop and blocks for
the answer, so a client may be used from several threads. It keeps its own cache
directory (by default the mount's, with ``-sdk`` appended), so it can run next to a mount of
the same bucket; both see each other's versions once uploaded and picked up by a refresh
(every ``poll_seconds``, or ``refresh()`` now).
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, TypeVar

import trio

from .config import Config, load_config
from .engine import Engine
from .errors import NotFound, RelayError
from .store.tiers import BlobReader

T = TypeVar("T")

__all__ = ["Client", "Put", "Version", "Job", "JobsFailed", "open"]


class JobsFailed(RelayError):
    """``wait`` found jobs that failed for good (their ``last_error`` says why)."""

    def __init__(self, jobs: list["Job"]) -> None:
        self.jobs = jobs
        first = jobs[0]
        super().__init__(f"{len(jobs)} job(s) failed; job {first.id} ({first.path}): {first.last_error}")


@dataclass(frozen=True)
class Put:
    """What ``put`` and ``rollback`` committed: the version (``new`` is False when the bytes
    equalled the newest version, so nothing was committed) and its upload job."""

    path: str
    version: int
    job: int | None
    new: bool


@dataclass(frozen=True)
class Version:
    version: int
    size: int
    mtime: datetime
    sha256: str
    state: str  # pending, uploading or durable
    tier: str  # where the bytes are now: e.g. "L2,L3"


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    path: str
    state: str  # queued, running, retrying, failed or done
    bytes_done: int
    bytes_total: int
    attempts: int
    last_error: str


def open(config: str | os.PathLike[str] | None = None, **settings: Any) -> "Client":  # noqa: A001
    """Open the store a configuration names, as the CLI reads it: defaults, then the TOML
    file (``config``, else ``$RELAYFS_CONFIG`` or ``~/.config/relayfs/config.toml``), then
    ``RELAYFS_*`` variables, then ``settings`` (any configuration key, e.g. ``l3=``,
    ``s3_endpoint=``, ``cache_dir=``). Unless ``cache_dir`` is given here, the client's
    cache is the mount's cache dir plus ``-sdk``: a running mount holds its own."""
    cfg = load_config(str(config) if config is not None else None, settings)
    if settings.get("cache_dir") is None:
        cfg.cache_dir = Path(f"{cfg.cache}-sdk")
    return Client(cfg)


class Client:
    """A RelayFS store opened from Python; see the module docstring. Close it (or use
    ``with``) to stop its background thread; uploads not finished by then stay queued in
    its cache directory and resume at the next open (call ``wait()`` first to be sure)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        config.cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._engine = Engine(config)
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="relayfs-sdk", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            self._thread.join()
            self._engine.close()
            raise self._failure

    # -- the loop thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as e:  # reported to whoever waits on _ready
            self._failure = e
        finally:
            self._ready.set()

    async def _main(self) -> None:
        await self._engine.prepare()
        async with trio.open_nursery() as nursery:
            self._engine.start(nursery)
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    @property
    def is_open(self) -> bool:
        return self._token is not None and self._thread.is_alive()

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if not self.is_open:
            raise RelayError("this RelayFS client is closed")
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def _sync(self, fn: Callable[..., T], *args: Any) -> T:
        if not self.is_open:
            raise RelayError("this RelayFS client is closed")
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def close(self) -> None:
        """Stop the background thread and release the cache directory."""
        if self._token is None:
            return
        if self._thread.is_alive():
            assert self._stop is not None
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._thread.join()
        self._token = None
        self._engine.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the API ------------------------------------------------------------------------
    def put(self, path: str, data: bytes | BinaryIO | str | os.PathLike[str]) -> Put:
        """Commit ``data`` (bytes, a readable binary file object, or a local file's path
        as ``str``/``Path``) as the next version of ``path``; folders are made as needed.
        Returns once the bytes are safe in the local cache; the upload runs in the
        background as job ``Put.job``."""
        if isinstance(data, str):
            data = Path(data)
        node, new = self._call(self._engine.put, path, data)
        return Put("/" + path.strip("/"), node.num, node.job_id if new else None, new)

    def get(self, path: str, version: int | str | None = None) -> "VersionFile":
        """A read-only binary file object over one version (default: the newest), streamed
        from whichever tier holds it; cold bytes are thawed from L3 chunk by chunk."""
        node = self._sync(self._engine.version, path, version)
        reader = self._sync(self._engine.open_version, node)
        return VersionFile(self, reader, f"/{path.strip('/')}/v{node.num}")

    def read(self, path: str, version: int | str | None = None) -> bytes:
        """A whole version's bytes (``get`` streams; this is for small files)."""
        with self.get(path, version) as f:
            return f.read()

    def versions(self, path: str) -> list[Version]:
        """The versions of ``path``, oldest first."""
        rows = self._sync(self._engine.versions, path)["versions"]
        return [
            Version(r["version"], r["size"], datetime.fromtimestamp(r["mtime_ns"] / 1e9, timezone.utc),
                    r["sha256"], r["state"], r["tier"])
            for r in rows
        ]

    def listdir(self, path: str = "") -> list[str]:
        """Names in a folder (versioned files and folders), sorted."""

        def names() -> list[str]:
            node = self._engine.catalog.resolve(path.strip("/"))
            if node.kind != "dir":
                raise NotFound(f"/{path.strip('/')} is not a folder")
            return sorted(c.name for c in self._engine.catalog.children(node.ino) if c.kind in ("dir", "vfile"))

        return self._sync(names)

    def rollback(self, path: str, version: int | str) -> Put:
        """Commit a new version equal to ``version``; no bytes are uploaded again."""
        node = self._call(self._engine.rollback, path, version)
        return Put("/" + path.strip("/"), node.num, node.job_id, True)

    def delete(self, path: str, version: int | str | None = None) -> list[int]:
        """Remove one version, or every version and the file itself (``version=None``).
        Returns the version numbers removed; their numbers are never used again."""
        return [n.num for n in self._call(self._engine.delete, path, version)]

    def jobs(self) -> list[Job]:
        """Unfinished jobs and those finished within ``jobs_keep_seconds``, oldest first."""

        def rows() -> list[dict[str, Any]]:
            return [self._engine.runner.describe(j) for j in self._engine.catalog.jobs(0.0)]

        return [
            Job(int(r["id"]), str(r["kind"]), str(r["path"]), str(r["state"]), int(r["bytes_done"]),
                int(r["bytes_total"]), int(r["attempts"]), str(r["last_error"]))
            for r in self._sync(rows)
        ]

    def wait(self, timeout: float | None = None) -> None:
        """Block until no job is queued, running or retrying. Raises ``JobsFailed`` if some
        failed for good, ``TimeoutError`` after ``timeout`` seconds."""
        self._call(self._wait, timeout)
        failed = [j for j in self.jobs() if j.state == "failed"]
        if failed:
            raise JobsFailed(failed)

    async def _wait(self, timeout: float | None) -> None:
        with trio.move_on_after(timeout if timeout is not None else float("inf")) as scope:
            while self._engine.catalog.has_unfinished_jobs():
                changed = self._engine.catalog.changed
                with trio.move_on_after(1.0):  # progress also arrives without a catalog change
                    await changed.wait()
        if scope.cancelled_caught:
            raise TimeoutError(f"jobs still pending after {timeout} seconds")

    def refresh(self) -> dict[str, int]:
        """Pick up what other clients (a mount, another script) wrote to the bucket now."""
        return self._call(self._engine.refresh)

    def status(self) -> dict[str, Any]:
        """Tier usage, pending jobs and L3 reachability, as ``relayfs status --json``."""
        return self._call(self._engine.status)


class VersionFile(io.RawIOBase):
    """A version's bytes as a read-only, seekable binary file (see ``Client.get``)."""

    def __init__(self, client: Client, reader: BlobReader, name: str) -> None:
        super().__init__()
        self._client = client
        self._reader = reader
        self.name = name
        self._pos = 0

    @property
    def size(self) -> int:
        return self._reader.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._reader.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self._reader.size - self._pos))
        if want == 0:
            return 0
        data = self._client._call(self._reader.read, self._pos, want)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(4 * 1024 * 1024):
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed and self._client.is_open:  # a closed client took the reader with it
            self._client._sync(self._reader.close)
        super().close()
