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
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from . import control
from .config import Config
from .engine import Engine, StartError
from .errors import RelayError
from .fs import Operations
from .fsck import Fsck
from .store.l3 import StoreError

log = logging.getLogger(__name__)

class MountError(StartError):
    """The mount cannot start; str() is the one-line reason shown to the user."""


SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the GIL while another waits for it
READAHEAD_KIB = 1024  # one L1 chunk per FUSE read; the kernel's default for FUSE is 128 KiB


def set_readahead(dev: int, kib: int) -> None:
    """Let the kernel read ahead ``kib`` on this mount, so that a sequential reader sends
    1 MiB requests instead of 128 KiB ones (a quarter of the round trips through the
    daemon). Only root may; otherwise the kernel's default stays."""
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(f"{kib}\n")
    except OSError as e:
        log.debug("read-ahead stays at the kernel's default: %s: %s", path, e.strerror)


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


class Daemon(Engine):
    """An engine served through FUSE at a mount point, with its control socket."""

    def __init__(self, config: Config, mountpoint: Path) -> None:
        super().__init__(config)
        self.mountpoint = mountpoint
        self.control_path = str(config.cache / "control.sock")
        self.mounted = False
        self.fsck_lock = trio.Lock()  # one fsck at a time: two would repair the same blob twice

    def _invalidate(self, parent: int, name: str) -> None:
        pyfuse3.invalidate_entry_async(parent, name.encode(), ignore_enoent=True)

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self.start(nursery)
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
            self.invalidate = self._invalidate
            log.info("mounted %s at %s (cache %s)", self.store.description, self.mountpoint, self.config.cache)
            try:
                await nursery.start(self._control_server)
                nursery.start_soon(self._signals)
                nursery.start_soon(self._announce_ready)
                await pyfuse3.main()
            finally:
                sd_notify("STOPPING=1")
                nursery.cancel_scope.cancel()
        log.info("unmounted %s", self.mountpoint)

    async def _announce_ready(self) -> None:
        st = await trio.to_thread.run_sync(os.stat, self.mountpoint)
        set_readahead(st.st_dev, READAHEAD_KIB)
        tell_parent("ready")
        sd_notify("READY=1")

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("received %s: unmounting", signal.Signals(signum).name)
                pyfuse3.terminate()
                return

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
                if not isinstance(req, dict):
                    raise ValueError("a request is one JSON object")
                answer = {"ok": True, **await self.answer(req)}
            except (RelayError, StoreError, ValueError, KeyError) as e:  # StoreError: refresh with L3 away
                reason = e.args[0] if isinstance(e, KeyError) and e.args else str(e)  # KeyError quotes
                answer = {"ok": False, "error": str(reason) or type(e).__name__}
            except trio.TooSlowError:
                return
            except Exception as e:  # a bug in one request must not take the mount down
                log.exception("control request failed")
                answer = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
            try:
                await stream.send_all(json.dumps(answer).encode() + b"\n")
            except trio.BrokenResourceError:
                pass

    async def answer(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "status":  # "probe": false answers at once, without asking L3 (umount)
            return await self.status(probe=bool(req.get("probe", True)))
        if op == "jobs":
            prefix = "/" + str(req.get("path", "")).strip("/")
            since = time.time() - self.config.jobs_keep_seconds
            out = [self.runner.describe(j) for j in self.catalog.jobs(since=since)]
            if prefix != "/":
                out = [j for j in out if j["path"] == prefix or str(j["path"]).startswith(prefix + "/")]
            return {"jobs": out}
        if op == "pending":  # what `relayfs wait` polls: cheap however many jobs there are
            left, failed = self.catalog.pending("/" + str(req.get("path", "")).strip("/"))
            return {"unfinished": left, "failed": [self.runner.describe(j) for j in failed[:1]],
                    "failed_count": len(failed)}
        if op == "versions":
            return self.versions(str(req["path"]))
        if op == "refresh":
            return {"counts": await self.refresh()}
        if op == "fsck":
            async with self.fsck_lock:
                checker = Fsck(self.catalog, self.l1, self.l2, self.tiers.thawer, self.store, self.runner)
                report = await checker.run(str(req.get("path", "")).strip("/"))
            return report.as_dict()
        if op == "rollback":
            node = await self.rollback(str(req["path"]), str(req["version"]))
            return {"version": node.num, "job": node.job_id}
        if op == "prune":
            dry_run = bool(req.get("dry_run", False))
            removed = await self.prune(str(req.get("path", "")), req.get("keep"), req.get("older_than"), dry_run)
            return {"versions": removed, "dry_run": dry_run}
        raise KeyError(f"unknown request {op!r}")

    async def status(self, probe: bool = True) -> dict[str, Any]:
        return {**await super().status(probe), "mountpoint": str(self.mountpoint)}


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
        daemon = Daemon(config, mnt)
        # Upload and thaw threads run Python too (botocore); with the default 5 ms the loop
        # thread can wait that long for the GIL per request while they are busy.
        sys.setswitchinterval(SWITCH_INTERVAL)
        trio.run(_main, daemon)
    except StartError as e:
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
