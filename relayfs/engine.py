"""One cache directory's RelayFS, without FUSE: what a mount and the Python SDK share.

An ``Engine`` owns the catalog, the three tiers and the job runner of one cache directory
(whose lock it holds). ``start`` runs its background tasks in the caller's nursery: the job
runner, housekeeping (job pruning, the L2 budget) and the poller that picks up versions
other clients wrote (``sync.py``). The operations here (put, versions, rollback, prune,
delete, refresh, status) take mount-relative paths; the FUSE layer and the control socket
(``daemon.py``) and the SDK (``sdk.py``) only translate to and from them.

Concurrency: everything here runs on the engine's trio loop; catalog changes are catalog
transactions (see its locking rule) and blocking work goes to threads under the tiers'
``disk`` limiter. ``invalidate`` is called with (parent ino, name) of entries that changed
under the kernel's feet; the daemon points it at pyfuse3, the SDK leaves it a no-op.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

import trio

from . import bucket, recovery, sync
from .catalog import Catalog, Node
from .config import Config
from .errors import InvalidName, IsADirectory, NoSpace, NotADirectory, NotFound, RelayError
from .jobs import JobRunner
from .store import layout
from .store.l1 import ChunkCache
from .store.l2 import BlobInfo, DiskCache
from .store.l3 import ObjectStore, StoreError, StoreUnavailable, make_store
from .store.thaw import Thawer
from .store.tiers import BlobReader, Tiers

log = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 30.0
COPY_BUFFER = 1024 * 1024
PROBE_TIMEOUT = 5.0  # seconds ``status`` waits for L3 to answer before calling it unreachable
PROBE_KEY = layout.blob_key("0" * 64)  # never written: a HEAD of it is L3's cheapest round trip


class StartError(RelayError):
    """The cache or L3 cannot be opened; str() is the one-line reason shown to the user."""


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
    """Hold an exclusive lock on the cache dir for the engine's lifetime."""
    fd = os.open(cache / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        raise StartError(f"cache dir {cache} is in use by another RelayFS mount or script (pid {other or '?'})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Engine:
    """Catalog, tiers and jobs of one cache directory."""

    tiers: Tiers

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = time.time()
        try:
            self.l2 = DiskCache(config.cache)
            self.lock_fd = lock_cache(config.cache)
            self.store: ObjectStore = make_store(
                config.l3, endpoint_url=config.s3_endpoint, region=config.s3_region,
                part_size=config.part_size, threads=config.transfer_threads,
                read_timeout=config.s3_read_timeout,
                access_key_id=config.s3_access_key_id, secret_access_key=config.s3_secret_access_key,
            )
        except ValueError as e:
            raise StartError(str(e)) from None
        self.catalog = Catalog(config.cache / "catalog.db")
        self.l1 = ChunkCache(config.l1_bytes)
        self.runner = JobRunner(
            self.catalog, self.store, self.l2, self.l1, concurrency=config.upload_concurrency,
            retry_base=config.retry_base_seconds, retry_max=config.retry_max_seconds,
        )
        self.invalidate: Callable[[int, str], None] = lambda parent, name: None
        self.runner.invalidate = lambda parent, name: self.invalidate(parent, name)
        self._refreshing = trio.Lock()  # one refresh at a time: two would fetch the same records
        self.poller = sync.Poller(self.catalog, self.store)

    async def prepare(self) -> None:
        """Reach L3, rebuild an empty catalog from it, tidy what a crash left (recovery.py),
        requeue interrupted jobs."""
        try:
            await trio.to_thread.run_sync(self.store.check)
        except StoreError as e:
            # nothing to work from (the namespace is in L3), or L3 answered but refused us
            if self.catalog.is_empty() or not isinstance(e, StoreUnavailable):
                raise StartError(str(e)) from None
            log.warning("L3 is unreachable (%s): working from the cache; changes go up and other "
                        "machines' changes come in once it is back", e)
        else:
            if self.catalog.is_empty():
                await bucket.rebuild(self.catalog, self.store)
        await recovery.recover(self.catalog, self.l2)
        n = await self.catalog.requeue_interrupted()
        if n:
            log.info("%d unfinished jobs queued again", n)
        await trio.to_thread.run_sync(self.l2.clear_thaw)

    def start(self, nursery: trio.Nursery) -> None:
        """Build the tiers and start the background tasks in ``nursery``."""
        thawer = Thawer(self.l2, self.store, nursery, parallel=self.config.transfer_threads, on_done=self._thawed)
        self.tiers = Tiers(
            self.l1, self.l2, thawer, l2_budget=self.config.l2_bytes, evictable=self.catalog.evictable_blobs
        )
        self.catalog.make_room = self.tiers.free_space  # a full disk evicts before ENOSPC
        nursery.start_soon(self.runner.run)
        nursery.start_soon(self._housekeeping)
        if self.config.poll_seconds > 0:
            nursery.start_soon(self._poll)

    def close(self) -> None:
        self.catalog.close()
        os.close(self.lock_fd)

    async def _thawed(self, sha: str) -> None:
        await self.catalog.touch_blobs([sha])
        await self.tiers.make_room()

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(HOUSEKEEPING_SECONDS)
            try:
                await self.catalog.prune_jobs(time.time() - self.config.jobs_keep_seconds)
            except NoSpace as e:  # a full cache disk: pruning waits for the next round
                log.warning("housekeeping: %s", e)
            await self.tiers.make_room()

    async def _poll(self) -> None:
        while True:
            await trio.sleep(self.config.poll_seconds)
            try:
                await self.refresh()
            except (StoreError, NoSpace) as e:  # offline or full: the next round tries again
                log.debug("poll of L3 failed: %s", e)
            except Exception:  # a bug here must not take the mount down with it
                log.exception("poll of L3 failed")

    # -- operations ---------------------------------------------------------------------
    async def refresh(self, full: bool | None = None) -> dict[str, int]:
        """Pick up versions, files and folders other clients wrote to L3 (sync.py): with
        ``full`` everything they ever wrote that is missing here, else only the change feed
        since the last poll; by default the first poll is full and later ones are not."""
        async with self._refreshing:
            counts, changed = await self.poller.poll(full=self.poller.polls == 0 if full is None else full)
        for parent, name in changed:
            self.invalidate(parent, name)
        return counts

    def _entry(self, path: str) -> Node:
        """The node at a mount-relative path; a version's path names its versioned file."""
        try:
            node = self.catalog.resolve(path)
        except NotFound:
            raise NotFound(f"/{path}: no such file or folder") from None
        return self.catalog.get(node.parent) if node.kind == "version" else node

    def vfile(self, path: str) -> Node:
        """The versioned file at a mount-relative path (a version's path names its file)."""
        path = path.strip("/")
        node = self._entry(path)
        if node.kind != "vfile":
            raise IsADirectory(f"/{path} is not a versioned file")
        return node

    def version(self, path: str, version: int | str | None = None) -> Node:
        """One version of the file at ``path``: ``None``/"latest" is the newest."""
        vfile = self.vfile(path)
        if version is None or version == "latest":
            head = self.catalog.head(vfile.ino)
            if head is None:
                raise NotFound(f"/{self.catalog.path_of(vfile.ino)} has no versions")
            return head
        name = str(version)
        if not name.startswith("v"):
            name = f"v{name}"
        try:
            node = self.catalog.lookup(vfile.ino, name)
        except NotFound:
            node = None
        if node is None or node.kind != "version":
            raise NotFound(f"/{self.catalog.path_of(vfile.ino)} has no version {name}")
        return node

    def describe_version(self, v: Node) -> dict[str, Any]:
        assert v.sha256 is not None
        tiers = self.tiers.where(v.sha256) + (["L3"] if self.catalog.blob(v.sha256).durable else [])
        return {
            "version": v.num, "size": v.size, "mtime_ns": v.mtime_ns, "sha256": v.sha256,
            "state": self.catalog.version_state(v), "tier": ",".join(tiers), "job": v.job_id,
        }

    def versions(self, path: str) -> dict[str, Any]:
        vfile = self.vfile(path)
        rows = [self.describe_version(v) for v in self.catalog.versions(vfile.ino)]
        return {"path": self.catalog.path_of(vfile.ino), "versions": rows}

    async def rollback(self, path: str, version: int | str) -> Node:
        """Commit a new version equal to an old one; its bytes are already in L3."""
        src = self.version(path, version)
        vfile = self.catalog.get(src.parent)
        assert src.sha256 is not None
        blob = self.catalog.blob(src.sha256)
        node = await self.catalog.commit(vfile.ino, BlobInfo(blob.sha256, blob.size, blob.chunk_size, blob.chunks))
        self.invalidate(vfile.parent, vfile.name)
        log.info("rolled back /%s to v%s as v%s", self.catalog.path_of(vfile.ino), src.num, node.num)
        return node

    async def _folder(self, path: str) -> Node:
        """The folder at ``path``, made (with its parents) when missing, like ``mkdir -p``."""
        node = self.catalog.get(1)
        for part in [p for p in path.split("/") if p]:
            try:
                node = self.catalog.lookup(node.ino, part)
            except NotFound:
                node = await self.catalog.mkdir(node.ino, part, 0o755)
            if node.kind != "dir":
                raise NotADirectory(f"{part} is not a folder")
        return node

    async def put(self, path: str, source: bytes | BinaryIO | str | os.PathLike[str]) -> tuple[Node, bool]:
        """Commit ``source`` (bytes, a binary file object or a local file's path) as the
        next version of ``path``, making missing folders. Returns the newest version and
        whether it is new: unchanged bytes commit nothing, as closing an unchanged file does.
        The upload runs in the background; the version's ``job_id`` names it."""
        parts = [layout.check_name(p.encode()) for p in path.split("/") if p]
        if not parts:
            raise InvalidName("a path to a file is needed")
        parent = await self._folder("/".join(parts[:-1]))
        name = parts[-1]
        try:
            target: Node | None = self.catalog.lookup(parent.ino, name)
        except NotFound:
            target = None
        if target is not None and target.kind != "vfile":
            raise IsADirectory(f"/{path.strip('/')} is a folder")
        work = await self.tiers.with_room(0, self.l2.new_work_file)
        try:
            await trio.to_thread.run_sync(_fill, self.l2.work_path(work), source, limiter=self.tiers.disk)
            info = await self.tiers.with_room(0, self.l2.seal, work)
        except BaseException:
            await trio.to_thread.run_sync(self.l2.remove_work, work)
            raise
        if target is not None:
            head = self.catalog.head(target.ino)
            if head is not None and head.sha256 == info.sha256:
                return head, False
        try:
            if target is None:
                draft = await self.catalog.create(parent.ino, name, 0o644, work)
                node = await self.catalog.commit(draft.ino, info)
            else:
                node = await self.catalog.commit(target.ino, info)
        except BaseException:
            in_use = self.catalog.blob_refs(info.sha256) > 0
            await trio.to_thread.run_sync(self.l2.unseal, info.sha256, None, in_use)
            raise
        vfile = self.catalog.get(node.parent)
        self.invalidate(vfile.parent, vfile.name)
        log.info("committed /%s/v%s (%d bytes, sha256 %s)", self.catalog.path_of(vfile.ino), node.num, node.size, info.sha256[:12])
        return node, True

    async def delete(self, path: str, version: int | str | None = None) -> list[Node]:
        """Remove one version, or with ``version=None`` the whole file (every version)."""
        vfile = self.vfile(path)
        victims = [self.version(path, version)] if version is not None else self.catalog.versions(vfile.ino)
        removed = []
        for v in victims:
            removed.append(await self.catalog.remove(vfile.ino, v.name, folder=False))
            self.invalidate(vfile.ino, v.name)
        if version is None:
            for child in self.catalog.children(vfile.ino):  # scratch files of the mount go too
                await self.catalog.remove(vfile.ino, child.name, folder=False)
                self.invalidate(vfile.ino, child.name)
            await self.catalog.remove(vfile.parent, vfile.name, folder=True)
            self.invalidate(vfile.parent, vfile.name)
        return removed

    def _vfiles_under(self, path: str) -> list[Node]:
        """The versioned file at ``path`` (or named by a version's path), or every one in
        the folder at ``path`` and its subfolders, in path order."""
        path = path.strip("/")
        node = self._entry(path)
        if node.kind == "vfile":
            return [node]
        if node.kind != "dir":
            raise NotADirectory(f"/{path} is not a versioned file or a folder")
        found: list[tuple[str, Node]] = []
        folders = [node]
        while folders:
            for child in self.catalog.children(folders.pop().ino):
                if child.kind == "dir":
                    folders.append(child)
                elif child.kind == "vfile":
                    found.append((self.catalog.path_of(child.ino), child))
        return [n for _, n in sorted(found, key=lambda pair: pair[0])]

    async def prune(
        self, path: str, keep: int | None, older_than: float | None, dry_run: bool
    ) -> list[dict[str, Any]]:
        """Remove old versions of the file at ``path``, or of every file under the folder at
        ``path``: the one bulk delete, and only when asked for by name (``relayfs prune``).

        A version goes only if every rule given lets it go: it is not among the ``keep``
        newest, and it was committed more than ``older_than`` seconds ago. The newest
        version is never removed, so ``latest`` never changes. Each removal is an ordinary
        version delete (a delete job writes its tombstone to L3). With ``dry_run`` nothing
        changes. Returns the versions removed (or that would be), per file oldest first.
        """
        if keep is None and older_than is None:
            raise ValueError("prune needs a rule: keep N newest versions, older than a duration, or both")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep must be a whole number of at least 1, not {keep!r}")
        if older_than is not None and (isinstance(older_than, bool) or not isinstance(older_than, (int, float)) or older_than < 0):
            raise ValueError(f"older_than must be a number of seconds of at least 0, not {older_than!r}")
        cutoff = None if older_than is None else time.time_ns() - int(older_than * 1_000_000_000)
        out: list[dict[str, Any]] = []
        for vfile in self._vfiles_under(path):
            versions = self.catalog.versions(vfile.ino)
            candidates = versions[:-1]  # never the newest
            if keep is not None:
                candidates = candidates[: max(0, len(versions) - keep)]
            if cutoff is not None:
                candidates = [v for v in candidates if v.mtime_ns < cutoff]
            where = self.catalog.path_of(vfile.ino)
            for v in candidates:
                if not dry_run:
                    head = self.catalog.head(vfile.ino)
                    if head is None or head.num == v.num:  # the newer ones went meanwhile
                        continue
                    try:
                        await self.catalog.remove(vfile.ino, v.name, folder=False)
                    except NotFound:  # removed meanwhile (rm, another prune)
                        continue
                    self.invalidate(vfile.ino, v.name)
                out.append({
                    "path": f"/{where}/{v.name}", "version": v.num, "size": v.size,
                    "mtime_ns": v.mtime_ns, "sha256": v.sha256,
                })
        if out and not dry_run:
            log.info("pruned %d versions under /%s (%d bytes)", len(out), path.strip("/"), sum(v["size"] for v in out))
        return out

    def open_version(self, v: Node) -> BlobReader:
        """A reader of one version's bytes through L1, L2 and a thaw from L3."""
        assert v.sha256 is not None
        blob = self.catalog.blob(v.sha256)
        return self.tiers.open(blob.sha256, blob.size, blob.chunk_size, blob.chunks)

    async def probe_l3(self, timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
        """Whether L3 answers now, and how fast: one HEAD of a key that never exists, timed.

        It runs in a thread outside the uploads' limiter (it must not queue behind them, or
        it would time the queue); after ``timeout`` the answer is "unreachable" and the
        thread is left to end on its own (botocore's timeouts bound it).
        """
        start = time.monotonic()
        try:
            with trio.fail_after(timeout):
                await trio.to_thread.run_sync(self.store.head, PROBE_KEY, abandon_on_cancel=True)
        except trio.TooSlowError:
            reason = f"no answer within {timeout:g} s"
        except StoreError as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            reason = reason.removeprefix(f"head {PROBE_KEY!r} in {self.store.description}: ")  # status names L3
        else:
            return {"l3_reachable": True, "l3_latency_ms": round((time.monotonic() - start) * 1000, 1), "l3_error": ""}
        log.debug("L3 probe failed: %s", reason)
        return {"l3_reachable": False, "l3_latency_ms": None, "l3_error": reason}

    async def status(self, probe: bool = True) -> dict[str, Any]:
        """Tiers against budgets, namespace and job counts, and L3's health: measured now
        with ``probe``, else what the last upload attempt found (None: no attempt yet)."""
        counts = self.catalog.counts()
        l2_used = await trio.to_thread.run_sync(self.l2.usage, limiter=self.tiers.disk)
        if probe:
            l3 = await self.probe_l3()
        else:
            l3 = {"l3_reachable": self.runner.l3_ok, "l3_latency_ms": None, "l3_error": self.runner.l3_error}
        return {
            "pid": os.getpid(),
            "l3": self.store.description,
            **l3,
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


def _fill(path: Path, source: bytes | BinaryIO | str | os.PathLike[str]) -> None:
    """Write ``source`` into a work file and fsync it (in a worker thread)."""
    with open(path, "wb") as out:
        if isinstance(source, (bytes, bytearray, memoryview)):
            out.write(source)
        elif isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                shutil.copyfileobj(f, out, COPY_BUFFER)
        else:
            shutil.copyfileobj(source, out, COPY_BUFFER)
        out.flush()
        os.fsync(out.fileno())
