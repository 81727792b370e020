"""The mount's lifecycle: open the cache and L3, mount, serve, unmount.

One trio nursery holds everything that runs while mounted: pyfuse3's request loop, the job
runner, thaws, the control socket, housekeeping and the signal watcher. SIGTERM or SIGINT
(or ``relayfs umount``) ends pyfuse3's loop; the nursery is then cancelled, unfinished jobs
stay in the journal and resume at the next mount.

Readiness is told, once the mount answers a ``stat``, to whoever asked: the parent
``relayfs mount`` through the pipe named by ``RELAYFS_READY_FD``, and systemd through
``$NOTIFY_SOCKET`` (``READY=1``; ``STOPPING=1`` on the way out).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from . import bucket, control, recovery
from .fsck import Fsck
from .catalog import Catalog
from .config import Config
from .errors import NoSpace, NotFound, RelayError
from .fs import Operations
from .jobs import JobRunner
from .store.l1 import ChunkCache
from .store.l2 import BlobInfo, DiskCache
from .store.l3 import ObjectStore, StoreError, make_store
from .store.thaw import Thawer
from .store.tiers import Tiers

log = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 30.0


class MountError(Exception):
    """The mount cannot start; str() is the one-line reason shown to the user."""


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError as e:
        log.warning("could not notify systemd: %s", e)


def tell_parent(message: str) -> None:
    """Report readiness (``ready``) or the reason for failing to ``relayfs mount``."""
    fd = os.environ.pop("RELAYFS_READY_FD", None)
    if fd is None:
        return
    try:
        os.write(int(fd), message.encode() + b"\n")
        os.close(int(fd))
    except OSError:
        pass


def check_mountpoint(mountpoint: Path) -> None:
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(f"mount point {mountpoint} does not exist") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise MountError(
                f"mount point {mountpoint} is a dead mount (transport endpoint is not connected); "
                f"run: relayfs umount {mountpoint}"
            ) from None
        raise MountError(f"mount point {mountpoint}: {e.strerror}") from None
    if not os.path.isdir(mountpoint):
        raise MountError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"mount point {mountpoint} is busy: something is already mounted there")
    del st


def cache_in_use(cache: Path) -> str | None:
    """The pid holding a cache dir's lock, or None when it is free (checked, not taken)."""
    try:
        fd = os.open(cache / "lock", os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)
    return None


def lock_cache(cache: Path) -> int:
    """Hold an exclusive lock on the cache dir for the daemon's lifetime."""
    fd = os.open(cache / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        raise MountError(f"cache dir {cache} is in use by another RelayFS mount (pid {other or '?'})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Daemon:
    """Everything one mount owns."""

    def __init__(self, config: Config, mountpoint: Path) -> None:
        self.config = config
        self.mountpoint = mountpoint
        self.started = time.time()
        self.l2 = DiskCache(config.cache)
        self.lock_fd = lock_cache(config.cache)
        self.catalog = Catalog(config.cache / "catalog.db")
        self.l1 = ChunkCache(config.l1_bytes)
        self.store: ObjectStore = make_store(
            config.l3, endpoint_url=config.s3_endpoint, region=config.s3_region,
            part_size=config.part_size, threads=config.transfer_threads,
            read_timeout=config.s3_read_timeout,
            access_key_id=config.s3_access_key_id, secret_access_key=config.s3_secret_access_key,
        )
        self.control_path = str(config.cache / "control.sock")
        self.mounted = False
        self.fsck_lock = trio.Lock()  # one fsck at a time: two would repair the same blob twice
        self.runner = JobRunner(
            self.catalog, self.store, self.l2, self.l1, concurrency=config.upload_concurrency,
            retry_base=config.retry_base_seconds, retry_max=config.retry_max_seconds,
        )

    async def prepare(self) -> None:
        """Reach L3, rebuild an empty catalog from it, tidy what a crash left (recovery.py),
        requeue interrupted jobs."""
        try:
            await trio.to_thread.run_sync(self.store.check)
        except StoreError as e:
            raise MountError(str(e)) from None
        if self.catalog.is_empty():
            await bucket.rebuild(self.catalog, self.store)
        await recovery.recover(self.catalog, self.l2)
        n = await self.catalog.requeue_interrupted()
        if n:
            log.info("%d unfinished jobs queued again", n)
        await trio.to_thread.run_sync(self.l2.clear_thaw)

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            thawer = Thawer(self.l2, self.store, nursery, parallel=self.config.transfer_threads, on_done=self._thawed)
            self.tiers = Tiers(
                self.l1, self.l2, thawer, l2_budget=self.config.l2_bytes, evictable=self.catalog.evictable_blobs
            )
            self.catalog.make_room = self.tiers.free_space  # a full disk evicts before ENOSPC
            ops = Operations(
                self.catalog, self.tiers, self.l2, self.runner,
                control_path=self.control_path, jobs_keep=self.config.jobs_keep_seconds,
            )
            options = set(pyfuse3.default_options) | {"fsname=relayfs", "subtype=relayfs"}
            if self.config.allow_other:
                options.add("allow_other")
            try:
                pyfuse3.init(ops, str(self.mountpoint), options)
            except RuntimeError as e:
                raise MountError(f"cannot mount at {self.mountpoint}: {e}") from None
            self.mounted = True
            log.info("mounted %s at %s (cache %s)", self.store.description, self.mountpoint, self.config.cache)
            try:
                nursery.start_soon(self.runner.run)
                await nursery.start(self._control_server)
                nursery.start_soon(self._housekeeping)
                nursery.start_soon(self._signals)
                nursery.start_soon(self._announce_ready)
                await pyfuse3.main()
            finally:
                sd_notify("STOPPING=1")
                nursery.cancel_scope.cancel()
        log.info("unmounted %s", self.mountpoint)

    async def _thawed(self, sha: str) -> None:
        await self.catalog.touch_blobs([sha])
        await self._make_room()

    async def _make_room(self) -> None:
        await self.tiers.make_room()

    async def _announce_ready(self) -> None:
        await trio.to_thread.run_sync(os.stat, self.mountpoint)
        tell_parent("ready")
        sd_notify("READY=1")

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("received %s: unmounting", signal.Signals(signum).name)
                pyfuse3.terminate()
                return

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(HOUSEKEEPING_SECONDS)
            try:
                await self.catalog.prune_jobs(time.time() - self.config.jobs_keep_seconds)
            except NoSpace as e:  # a full cache disk: pruning waits for the next round
                log.warning("housekeeping: %s", e)
            await self._make_room()

    # -- control socket ----------------------------------------------------------------
    async def _control_server(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        path = self.control_path
        if os.path.exists(path):
            os.unlink(path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with control.address(path) as addr:
            await sock.bind(addr)
        os.chmod(path, 0o600)
        sock.listen(16)
        task_status.started()
        await trio.serve_listeners(self._handle_control, [trio.SocketListener(sock)])

    async def _handle_control(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            try:
                with trio.fail_after(10):
                    while not data.endswith(b"\n"):
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            break
                        data += chunk
                req = json.loads(data)
                answer = {"ok": True, **await self.answer(req)}
            except (RelayError, ValueError, KeyError) as e:
                reason = e.args[0] if isinstance(e, KeyError) and e.args else str(e)  # KeyError quotes
                answer = {"ok": False, "error": str(reason) or type(e).__name__}
            except trio.TooSlowError:
                return
            try:
                await stream.send_all(json.dumps(answer).encode() + b"\n")
            except trio.BrokenResourceError:
                pass

    async def answer(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "status":
            return await self.status()
        if op == "jobs":
            prefix = "/" + str(req.get("path", "")).strip("/")
            since = time.time() - self.config.jobs_keep_seconds
            out = [self.runner.describe(j) for j in self.catalog.jobs(since=since)]
            if prefix != "/":
                out = [j for j in out if j["path"] == prefix or str(j["path"]).startswith(prefix + "/")]
            return {"jobs": out}
        if op == "versions":
            vfile = self._vfile(str(req["path"]))
            rows = []
            for v in self.catalog.versions(vfile.ino):
                assert v.sha256 is not None
                tiers = self.tiers.where(v.sha256) + (["L3"] if self.catalog.blob(v.sha256).durable else [])
                rows.append({
                    "version": v.num, "size": v.size, "mtime_ns": v.mtime_ns, "sha256": v.sha256,
                    "state": self.catalog.version_state(v), "tier": ",".join(tiers), "job": v.job_id,
                })
            return {"path": self.catalog.path_of(vfile.ino), "versions": rows}
        if op == "fsck":
            async with self.fsck_lock:
                checker = Fsck(self.catalog, self.l1, self.l2, self.tiers.thawer, self.store, self.runner)
                report = await checker.run(str(req.get("path", "")).strip("/"))
            return report.as_dict()
        if op == "rollback":
            vfile = self._vfile(str(req["path"]))
            name = str(req["version"])
            if not name.startswith("v"):
                name = f"v{name}"
            try:
                src = self.catalog.lookup(vfile.ino, name)
            except NotFound:
                raise NotFound(f"/{self.catalog.path_of(vfile.ino)} has no version {name}") from None
            if src.kind != "version" or src.sha256 is None:
                raise KeyError(f"{name} is not a version")
            blob = self.catalog.blob(src.sha256)
            info = BlobInfo(blob.sha256, blob.size, blob.chunk_size, blob.chunks)
            node = await self.catalog.commit(vfile.ino, info)
            pyfuse3.invalidate_entry_async(vfile.parent, vfile.name.encode(), ignore_enoent=True)
            log.info("rolled back /%s to %s as v%s", self.catalog.path_of(vfile.ino), name, node.num)
            return {"version": node.num, "job": node.job_id}
        raise KeyError(f"unknown request {op!r}")

    def _vfile(self, path: str):  # type: ignore[no-untyped-def]
        try:
            node = self.catalog.resolve(path)
        except NotFound:
            raise NotFound(f"/{path}: no such file or folder") from None
        if node.kind == "version":
            node = self.catalog.get(node.parent)
        if node.kind != "vfile":
            raise KeyError(f"{path or '/'} is not a versioned file")
        return node

    async def status(self) -> dict[str, Any]:
        counts = self.catalog.counts()
        l2_used = await trio.to_thread.run_sync(self.l2.usage, limiter=self.tiers.disk)
        return {
            "pid": os.getpid(),
            "mountpoint": str(self.mountpoint),
            "l3": self.store.description,
            "l3_reachable": self.runner.l3_ok,
            "l3_error": self.runner.l3_error,
            "cache_dir": str(self.config.cache),
            "l1_used": self.l1.used,
            "l1_budget": self.l1.budget,
            "l2_used": l2_used,
            "l2_budget": self.config.l2_bytes,
            "folders": counts.get("dir", 1) - 1,
            "files": counts.get("vfile", 0),
            "versions": counts.get("version", 0),
            "jobs_queued": counts.get("jobs_queued", 0),
            "jobs_running": counts.get("jobs_running", 0),
            "jobs_retrying": counts.get("jobs_retrying", 0),
            "jobs_failed": counts.get("jobs_failed", 0),
            "pending_bytes": counts.get("pending_bytes", 0),
            "uptime_seconds": round(time.time() - self.started, 1),
        }

    def close(self) -> None:
        self.catalog.close()
        os.close(self.lock_fd)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(config: Config, mountpoint: str) -> int:
    """Mount and serve in the foreground until unmounted; returns the exit status."""
    mnt = Path(os.path.abspath(mountpoint))
    daemon: Daemon | None = None
    try:
        check_mountpoint(mnt)
        try:
            daemon = Daemon(config, mnt)
        except ValueError as e:
            raise MountError(str(e)) from None
        trio.run(_main, daemon)
    except MountError as e:
        log.error("%s", e)
        tell_parent(f"error: {e}")
        return 1
    finally:
        if daemon is not None:
            if daemon.mounted:
                pyfuse3.close(unmount=True)
            daemon.close()
    return 0


async def _main(daemon: Daemon) -> None:
    await daemon.prepare()
    await daemon.serve()
