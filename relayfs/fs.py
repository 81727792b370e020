"""The FUSE operations: translate the kernel's requests into catalog and tier calls.

Handlers stay thin. The one place inner errors become errnos is ``ERRNO_OF`` (applied by
the ``fuse_errors`` decorator on every operation).

Open files are ``Handle`` objects in ``self.handles``:

* ``VersionHandle`` reads one version's bytes (``vK``, or ``latest`` as it was at open);
* ``FileHandle`` reads and writes a work file in L2: a draft (a new file, or ``NAME/NAME``),
  a scratch file, or a private draft of ``latest`` opened for writing;
* ``TextHandle`` serves a ``.jobs/ID`` snapshot rendered at open.

A writable draft commits at ``flush`` (the kernel sends it from ``close(2)`` and waits for
it) once bytes were written through it, so ``close()`` returns once the version is durable
on L2. A shell's ``>`` opens, ``dup2``s and closes the first descriptor before writing: that
first flush finds nothing written and commits nothing. A draft that was only created or
truncated (``touch new``, ``: > NAME/latest``) commits at ``release``. Each FileHandle has a
lock held across a write and across a commit, so a commit never seals bytes mid-write.

A full cache disk: every L2 write that needs space (``write``, a truncate, the copy of
``latest`` a draft starts from, sealing) goes through ``Tiers.with_room``, which evicts
versions already durable in L3 and tries once more before giving ``ENOSPC``; the catalog
does the same for its transactions (``Catalog.make_room``). A write, truncate or commit that still fails marks its handle ``failed``:
from then on it commits nothing, its later writes and its ``close()`` fail with the same
error, and when its last user lets go a new file (a draft) goes too, with its partial bytes,
so a failed ``cp`` leaves neither a partial version nor a partial file behind.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

import pyfuse3
import trio

from . import errors
from .catalog import JOBS_DIR_INO, LATEST_BASE, ROOT_INO, Catalog, Node
from .jobs import JobRunner
from .store import layout
from .store.l2 import BlobInfo, DiskCache
from .store.tiers import BlobReader, Tiers

log = logging.getLogger(__name__)

ERRNO_OF: dict[type[Exception], int] = {
    errors.NotFound: errno.ENOENT,
    errors.AlreadyExists: errno.EEXIST,
    errors.NotEmpty: errno.ENOTEMPTY,
    errors.ReadOnly: errno.EROFS,
    errors.InvalidName: errno.EINVAL,
    errors.NameTooLong: errno.ENAMETOOLONG,
    errors.IsADirectory: errno.EISDIR,
    errors.NotADirectory: errno.ENOTDIR,
    errors.NotPermitted: errno.EPERM,
    errors.NoSpace: errno.ENOSPC,
    errors.IntegrityError: errno.EIO,
    errors.Unavailable: errno.EIO,
}

XATTRS = (b"user.relayfs.sha256", b"user.relayfs.job", b"user.relayfs.state", b"user.relayfs.tier")
CONTROL_XATTR = b"user.relayfs.control"
VERSION_TIMEOUT = 60.0  # versions never change; deletes come through the kernel itself
# Folders and versioned files: the kernel sees our own changes as they pass through it, and
# changes it does not see (commits, other workstations) are invalidated by hand; the timeout
# bounds what a missed invalidation could cost, and spares `ls -l` one request per entry.
FOLDER_TIMEOUT = 1.0

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
T = TypeVar("T")


def fuse_errors(fn: F) -> F:
    """Turn RelayFS's typed errors (and OSErrors of L2) into FUSEError, in one place."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except errors.RelayError as e:
            code = ERRNO_OF.get(type(e), errno.EIO)
            log.debug("%s: %s (%s)", fn.__name__, e, errno.errorcode[code])
            raise pyfuse3.FUSEError(code) from None
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise pyfuse3.FUSEError(errno.ENOSPC) from None
            log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


@dataclass
class VersionHandle:
    node: Node
    reader: BlobReader


@dataclass
class FileHandle:
    """A work file open for reading and writing.

    ``ino`` is the node's inode (draft or scratch) or, for a draft of ``latest``, the
    vfile's. ``commits`` says whether flushing makes a version.
    """

    ino: int
    work: str | None
    fd: int | None
    commits: bool
    vfile: int | None = None  # for drafts of latest: the vfile they commit to
    base_sha: str | None = None  # what the draft started from (no change, no version)
    written: bool = False  # bytes or size changed through this handle since its last commit
    pending: bool = False  # created or truncated at open: commits at release at the latest
    failed: Exception | None = None  # a write, truncate or commit failed: commits nothing more
    lock: trio.Lock = field(default_factory=trio.Lock)

    def failure(self) -> Exception:
        """A fresh copy of the error that failed this handle, to report again."""
        e = self.failed
        if isinstance(e, OSError):
            return OSError(e.errno, e.strerror)
        return type(e)(str(e)) if e is not None else errors.NoSpace("failed")


@dataclass
class TextHandle:
    data: bytes


Handle = VersionHandle | FileHandle | TextHandle


class Operations(pyfuse3.Operations):
    """RelayFS as the kernel sees it."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, catalog: Catalog, tiers: Tiers, l2: DiskCache, jobs: JobRunner, *, control_path: str, jobs_keep: float) -> None:
        super().__init__()
        self.catalog = catalog
        self.tiers = tiers
        self.l2 = l2
        self.jobs = jobs
        self.control_path = control_path
        self.jobs_keep = jobs_keep
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1
        self.work_users: dict[str, int] = {}  # work file -> open FileHandles on it
        # `rm NAME/latest` hides the name (no data goes) until the next version is committed,
        # so `mv`, `install` and `cp --remove-destination` can unlink it and create it again.
        self.hidden_latest: dict[int, int | None] = {}  # vfile ino -> head num when hidden
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.disk = tiers.disk
        self.sealing: Counter[str] = Counter()  # blobs sealed whose commit is in flight

    # -- attributes --------------------------------------------------------------------
    def _attr(self, ino: int, mode: int, size: int, mtime_ns: int, timeout: float) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode = mode
        a.st_nlink = 2 if stat.S_ISDIR(mode) else 1
        a.st_size = size
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = mtime_ns
        a.st_blksize = 128 * 1024
        a.st_blocks = (size + 511) // 512
        a.entry_timeout = timeout
        a.attr_timeout = timeout
        return a

    def _node_attr(self, node: Node) -> pyfuse3.EntryAttributes:
        if node.kind == "version":
            return self._attr(node.ino, node.mode, node.size, node.mtime_ns, VERSION_TIMEOUT)
        if node.kind in ("draft", "scratch"):
            assert node.work is not None
            try:
                st = os.stat(self.l2.work_path(node.work))
                size, mtime = st.st_size, st.st_mtime_ns
            except FileNotFoundError:
                size, mtime = 0, node.mtime_ns
            return self._attr(node.ino, node.mode, size, mtime, 0.0)
        return self._attr(node.ino, node.mode, 0, node.mtime_ns, FOLDER_TIMEOUT)

    def _latest_attr(self, vfile: Node) -> pyfuse3.EntryAttributes:
        head = self.catalog.head(vfile.ino)
        if head is None:
            raise errors.NotFound("no versions")
        return self._attr(LATEST_BASE + vfile.ino, 0o100644, head.size, head.mtime_ns, 0.0)

    def _latest_shown(self, vfile: Node) -> bool:
        """Whether ``NAME/latest`` is in the namespace: a head exists and it was not unlinked."""
        head = self.catalog.head(vfile.ino)
        if head is None:
            return False
        if vfile.ino in self.hidden_latest:
            if self.hidden_latest[vfile.ino] == head.num:
                return False
            del self.hidden_latest[vfile.ino]  # a newer version was committed since
        return True

    def _jobs_attr(self) -> pyfuse3.EntryAttributes:
        return self._attr(JOBS_DIR_INO, 0o040555, 0, time.time_ns(), 0.0)

    def _job_attr(self, job_id: int) -> pyfuse3.EntryAttributes:
        job = self.catalog.job(job_id)
        size = len(self.jobs.render(job))
        return self._attr(JOBS_DIR_INO + job_id, 0o100444, size, int(job.updated * 1e9), 0.0)

    def _visible_jobs(self) -> list[int]:
        return [j.id for j in self.catalog.jobs(since=time.time() - self.jobs_keep)]

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        if inode == JOBS_DIR_INO:
            return self._jobs_attr()
        if inode > JOBS_DIR_INO:
            return self._job_attr(inode - JOBS_DIR_INO)
        try:
            if inode >= LATEST_BASE:
                return self._latest_attr(self.catalog.get(inode - LATEST_BASE))
            return self._node_attr(self.catalog.get(inode))
        except errors.NotFound:
            for h in self.handles.values():  # open but no longer in the namespace
                if isinstance(h, FileHandle) and h.ino == inode and h.fd is not None:
                    st = os.fstat(h.fd)
                    return self._attr(inode, 0o100644, st.st_size, st.st_mtime_ns, 0.0)
            raise

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        if parent_inode == JOBS_DIR_INO:
            try:
                job_id = int(name)
            except ValueError:
                raise errors.NotFound(name) from None
            return self._job_attr(job_id)
        if parent_inode == ROOT_INO and name == b".jobs":
            return self._jobs_attr()
        text = layout.check_name(name)
        parent = self.catalog.get(parent_inode)
        if parent.kind == "vfile" and text == "latest":
            if not self._latest_shown(parent):
                raise errors.NotFound("latest")
            return self._latest_attr(parent)
        return self._node_attr(self.catalog.lookup(parent_inode, text))

    # -- directories -------------------------------------------------------------------
    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != JOBS_DIR_INO and not self.catalog.get(inode).is_folder:
            raise errors.NotADirectory("not a folder")
        return inode

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if fh == JOBS_DIR_INO:
            for job_id in self._visible_jobs():
                if job_id <= start_id:
                    continue
                if not pyfuse3.readdir_reply(token, str(job_id).encode(), self._job_attr(job_id), job_id):
                    return
            return
        node = self.catalog.get(fh)
        # id 1 is the first virtual entry (.jobs or latest); real entries use their inode
        if start_id < 1:
            if fh == ROOT_INO:
                if not pyfuse3.readdir_reply(token, b".jobs", self._jobs_attr(), 1):
                    return
            elif node.kind == "vfile" and self._latest_shown(node):
                if not pyfuse3.readdir_reply(token, b"latest", self._latest_attr(node), 1):
                    return
        for child in self.catalog.children(fh, after_ino=max(start_id, 1)):
            if not pyfuse3.readdir_reply(token, child.name.encode(), self._node_attr(child), child.ino):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_writable_parent(parent_inode)
        node = await self.catalog.mkdir(parent_inode, layout.check_name(name), mode)
        return self._node_attr(node)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_writable_parent(parent_inode, name)
        await self.catalog.remove(parent_inode, layout.check_name(name), folder=True)

    def _check_writable_parent(self, parent_inode: int, name: bytes | None = None) -> None:
        """Nothing in ``.jobs`` changes, nor does ``.jobs`` itself (``name``: an entry that
        is removed or moved away; without this it would be ENOENT, as it has no row)."""
        if parent_inode == JOBS_DIR_INO or parent_inode > JOBS_DIR_INO:
            raise errors.ReadOnly(".jobs is read-only")
        if parent_inode == ROOT_INO and name == b".jobs":
            raise errors.ReadOnly(".jobs is virtual and read-only")

    # -- removing and renaming ---------------------------------------------------------
    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_writable_parent(parent_inode, name)
        text = layout.check_name(name)
        parent = self.catalog.get(parent_inode)
        if parent.kind == "vfile" and text == "latest":
            # `latest` is only a name for the newest version: unlinking it removes no data
            # (remove a version by its vK name); the name is hidden until the next commit.
            if not self._latest_shown(parent):
                raise errors.NotFound("latest")
            head = self.catalog.head(parent.ino)
            self.hidden_latest[parent.ino] = head.num if head else None
            return
        node = await self.catalog.remove(parent_inode, text, folder=False)
        if node.work and not self.work_users.get(node.work):
            await trio.to_thread.run_sync(self.l2.remove_work, node.work, limiter=self.disk)

    @fuse_errors
    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int, ctx: pyfuse3.RequestContext
    ) -> None:
        self._check_writable_parent(parent_inode_old, name_old)
        self._check_writable_parent(parent_inode_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise errors.InvalidName("exchanging names is not supported")
        old, new = layout.check_name(name_old), layout.check_name(name_new)
        src_parent = self.catalog.get(parent_inode_old)
        dst_parent = self.catalog.get(parent_inode_new)
        if src_parent.kind == "vfile" and old == "latest":
            raise errors.ReadOnly("latest cannot be renamed; copy it instead")
        if dst_parent.kind == "vfile" and new == "latest":
            src = self.catalog.lookup(parent_inode_old, old)
            if src.kind not in ("draft", "scratch"):
                raise (errors.ReadOnly if src.kind == "version" else errors.IsADirectory)("only a file can become a version")
            assert src.work is not None
            shared = bool(self.work_users.get(src.work))
            await self._commit_work(dst_parent.ino, src.work, keep=shared, consume=src.ino)
            return
        node = await self.catalog.rename(
            parent_inode_old, old, parent_inode_new, new, noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE)
        )
        if node.kind == "draft" and node.work and not self.work_users.get(node.work):
            await self._commit_work(node.ino, node.work, keep=False)

    async def _commit_work(self, target: int, work: str, *, keep: bool, consume: int | None = None, base_sha: str | None = None) -> Node | None:
        """Seal a work file into L2 and commit it as the next version of ``target``.

        ``keep``: the work file stays (other handles still use it), so a copy is sealed.
        Nothing is committed when the bytes equal ``target``'s newest version (or
        ``base_sha``): opening for write and closing with no change commits nothing.
        """
        info = await self._seal(work, keep)
        self.sealing[info.sha256] += 1
        try:
            return await self._commit_sealed(target, info, consume, base_sha)
        except Exception:
            await self._unseal(info.sha256, None if keep else work)
            raise
        finally:
            self.sealing[info.sha256] -= 1
            if self.sealing[info.sha256] <= 0:
                del self.sealing[info.sha256]

    async def _seal(self, work: str, keep: bool) -> BlobInfo:
        """Seal (or with ``keep``, snapshot) a work file into L2, making room on a full disk."""
        if not keep:
            return await self.tiers.with_room(0, self.l2.seal, work)
        size = await trio.to_thread.run_sync(os.path.getsize, self.l2.work_path(work), limiter=self.disk)
        return await self.tiers.with_room(size, self.l2.snapshot, work)

    async def _unseal(self, sha: str, work: str | None) -> None:
        """Undo the seal of a commit that failed: the work file (when sealing moved it) gets
        its bytes back, and a blob no version or other commit uses leaves L2, so a full disk
        does not fill up with orphans."""
        in_use = self.sealing[sha] > 1
        if not in_use:
            try:
                self.catalog.blob(sha)
                in_use = True
            except errors.NotFound:
                pass
        try:
            await trio.to_thread.run_sync(self.l2.unseal, sha, work, in_use, limiter=self.disk)
        except OSError as e:
            log.warning("after a failed commit, could not restore work file %s: %s", work, e)

    async def _commit_sealed(self, target: int, info: BlobInfo, consume: int | None, base_sha: str | None) -> Node | None:
        t = self.catalog.get(target)
        owner = t if t.kind == "vfile" else self.catalog.get(t.parent)  # NAME/NAME: its vfile
        head = self.catalog.head(owner.ino) if owner.kind == "vfile" else None
        unchanged = base_sha if base_sha is not None else (head.sha256 if head else None)
        if owner.kind == "vfile" and info.sha256 == unchanged:
            drop = consume if consume is not None else (t.ino if t.kind == "draft" else None)
            if drop is not None:  # the renamed file or NAME/NAME goes, as a commit would take it
                gone = self.catalog.get(drop)
                await self.catalog.remove(gone.parent, gone.name, folder=False)
                pyfuse3.invalidate_entry_async(gone.parent, gone.name.encode(), ignore_enoent=True)
            log.debug("no change to %s; nothing committed", owner.name)
            return None
        node = await self.catalog.commit(target, info, consume=consume)
        vfile = self.catalog.get(node.parent)
        pyfuse3.invalidate_entry_async(vfile.parent, vfile.name.encode(), ignore_enoent=True)
        if t.kind == "draft" and t.parent != vfile.ino:
            pass  # a new file: the parent's entry for its name now points at the vfile
        elif t.kind == "draft":
            pyfuse3.invalidate_entry_async(vfile.ino, t.name.encode(), ignore_enoent=True)
        log.info("committed /%s/v%s (%d bytes, sha256 %s)", self.catalog.path_of(vfile.ino), node.num, node.size, info.sha256[:12])
        return node

    # -- links: refused by design -------------------------------------------------------
    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise errors.NotPermitted("symbolic links are not supported")

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise errors.NotPermitted("hard links are not supported")

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise errors.NotPermitted("only regular files and folders can be created")

    # -- opening -----------------------------------------------------------------------
    def _new_fh(self, handle: Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = handle
        if isinstance(handle, FileHandle) and handle.work:
            self.work_users[handle.work] = self.work_users.get(handle.work, 0) + 1
        return fh

    def _open_version(self, node: Node) -> VersionHandle:
        assert node.sha256 is not None
        blob = self.catalog.blob(node.sha256)
        return VersionHandle(node, self.tiers.open(blob.sha256, blob.size, blob.chunk_size, blob.chunks))

    async def _open_work_fd(self, work: str, truncate: bool) -> int:
        flags = os.O_RDWR | (os.O_TRUNC if truncate else 0)
        return await trio.to_thread.run_sync(os.open, self.l2.work_path(work), flags, limiter=self.disk)

    async def _latest_draft(self, vfile: Node, truncate: bool) -> FileHandle:
        head = self.catalog.head(vfile.ino)
        base = head.sha256 if head else None
        copy_from = None if truncate or head is None or head.size == 0 else base
        if copy_from is None:
            work = await self.tiers.with_room(0, self.l2.new_work_file, None)
        else:
            assert head is not None
            with self.tiers.pin(copy_from):  # making room for the copy must not evict its source
                if not self.l2.has_blob(copy_from):
                    await self._thaw_whole(head)
                work = await self.tiers.with_room(head.size, self.l2.new_work_file, copy_from)
        fd = await self._open_work_fd(work, False)
        return FileHandle(LATEST_BASE + vfile.ino, work, fd, commits=True, vfile=vfile.ino, base_sha=base or "", pending=truncate)

    async def _thaw_whole(self, node: Node) -> None:
        """Bring a cold version into L2 completely (the start of a copy-on-write draft)."""
        h = self._open_version(node)
        try:
            off = 0
            while off < node.size:
                off += len(await h.reader.read(off, 8 * layout.CHUNK_SIZE)) or node.size
            if h.reader.thaw is not None:
                await h.reader.thaw.finished.wait()
                if h.reader.thaw.error:
                    raise h.reader.thaw.error
        except errors.IntegrityError as e:
            self._integrity_failed(node, e)
            raise
        finally:
            h.reader.close()

    def _integrity_failed(self, node: Node, e: errors.IntegrityError) -> None:
        """Name the version whose bytes were refused: the tiers only know the blob, and a user
        (or ``relayfs fsck``) needs the path to act on."""
        try:
            where = f"/{self.catalog.path_of(node.ino)}"
        except errors.NotFound:  # removed while open
            where = f"v{node.num} of a removed file"
        log.error("integrity: %s: %s; not served (EIO)", where, e)

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        writing = flags & (os.O_WRONLY | os.O_RDWR) or flags & os.O_TRUNC
        fi = pyfuse3.FileInfo()
        if inode > JOBS_DIR_INO:
            if writing:
                raise errors.ReadOnly(".jobs is read-only")
            job = self.catalog.job(inode - JOBS_DIR_INO)
            fi.fh = self._new_fh(TextHandle(self.jobs.render(job)))
            fi.direct_io = True
            return fi
        if inode >= LATEST_BASE:
            vfile = self.catalog.get(inode - LATEST_BASE)
            if writing:
                handle: Handle = await self._latest_draft(vfile, truncate=bool(flags & os.O_TRUNC))
            else:
                head = self.catalog.head(vfile.ino)
                if head is None:
                    raise errors.NotFound("no versions")
                handle = self._open_version(head)
            fi.fh = self._new_fh(handle)
            fi.direct_io = True  # latest changes meaning; never serve it from stale pages
            return fi
        node = self.catalog.get(inode)
        if node.kind == "version":
            if writing:
                raise errors.ReadOnly("versions are immutable")
            fi.fh = self._new_fh(self._open_version(node))
            fi.keep_cache = True
            return fi
        if node.kind in ("draft", "scratch"):
            assert node.work is not None
            fd = await self._open_work_fd(node.work, bool(flags & os.O_TRUNC))
            fi.fh = self._new_fh(FileHandle(node.ino, node.work, fd, commits=node.kind == "draft" and bool(writing), pending=bool(writing)))
            return fi
        raise errors.IsADirectory(f"{node.name} is a folder")

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._check_writable_parent(parent_inode)
        text = layout.check_name(name)
        parent = self.catalog.get(parent_inode)
        fi = pyfuse3.FileInfo()
        if parent.kind == "vfile" and text == "latest":  # no versions left, or latest unlinked
            handle = await self._latest_draft(parent, truncate=True)
            fi.fh = self._new_fh(handle)
            fi.direct_io = True
            return fi, self._attr(LATEST_BASE + parent.ino, 0o100644, 0, time.time_ns(), 0.0)
        if parent.kind not in ("dir", "vfile"):
            raise errors.NotADirectory("not a folder")
        work = await self.tiers.with_room(0, self.l2.new_work_file, None)
        try:
            node = await self.catalog.create(parent_inode, text, mode, work)
        except BaseException:
            await trio.to_thread.run_sync(self.l2.remove_work, work, limiter=self.disk)
            raise
        fd = await self._open_work_fd(work, False)
        fi.fh = self._new_fh(FileHandle(node.ino, work, fd, commits=node.kind == "draft", pending=True))
        return fi, self._node_attr(node)

    # -- reading and writing -----------------------------------------------------------
    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self.handles[fh]
        if isinstance(h, VersionHandle):
            try:
                return await h.reader.read(off, size)
            except errors.IntegrityError as e:
                self._integrity_failed(h.node, e)
                raise
        if isinstance(h, TextHandle):
            return h.data[off:off + size]
        async with h.lock:
            if h.fd is None:
                await self._reopen(h)
            assert h.fd is not None
            return await trio.to_thread.run_sync(os.pread, h.fd, size, off, limiter=self.disk)

    async def _reopen(self, h: FileHandle) -> None:
        """A handle whose bytes were committed goes on as a draft of the file's latest."""
        assert h.vfile is not None
        vfile = self.catalog.get(h.vfile)
        fresh = await self._latest_draft(vfile, truncate=False)
        h.work, h.fd, h.base_sha, h.ino = fresh.work, fresh.fd, fresh.base_sha, fresh.ino
        self.work_users[h.work] = self.work_users.get(h.work, 0) + 1  # type: ignore[index]

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handles[fh]
        if not isinstance(h, FileHandle):
            raise errors.ReadOnly("not open for writing")
        async with h.lock:
            n = await self._change_draft(h, len(buf), os.pwrite, buf, off)
            h.written = True
            return n

    async def _change_draft(self, h: FileHandle, need: int, fn: Callable[..., T], *args: Any) -> T:
        """Apply ``fn(fd, *args)`` (a write or truncate) to a handle's draft, making room on a
        full disk. A failure poisons the handle: the draft misses bytes, so it must never
        commit. The caller holds ``h.lock``."""
        if h.failed is not None:
            raise h.failure()
        try:
            if h.fd is None:
                await self._reopen(h)
            assert h.fd is not None
            return await self.tiers.with_room(need, fn, h.fd, *args)
        except (errors.RelayError, OSError) as e:
            h.failed = e
            raise

    @fuse_errors
    async def flush(self, fh: int) -> None:
        h = self.handles.get(fh)
        if not isinstance(h, FileHandle):
            return
        async with h.lock:
            if h.failed is None and h.commits and h.written:
                try:
                    await self._commit_handle(h)
                except (errors.RelayError, OSError) as e:
                    h.failed = e  # close() says it failed: release must not commit it after all
            if h.failed is None:
                return
            # close() reports the failed write and commits nothing; a new file goes at once
            # (release comes later, asynchronously) unless other handles still write it
            if h.work is not None and self.work_users.get(h.work, 0) <= 1:
                named = [n for n in self._node_or_none(h.ino) if n.work == h.work and n.kind == "draft"]
                if named:
                    await self._drop_failed_draft(named[0])
            raise h.failure()

    async def _commit_handle(self, h: FileHandle) -> None:
        """Commit what a writable draft holds; the handle may go on writing a new draft."""
        if h.fd is None or h.work is None or not (h.written or h.pending):
            return
        shared = self.work_users.get(h.work, 0) > 1
        target = h.vfile if h.vfile is not None else h.ino
        nodes = self._node_or_none(target)
        if not nodes or nodes[0].kind not in ("draft", "vfile"):  # removed while open, as on any
            h.written = h.pending = False  # filesystem: the bytes vanish with the last close
            return
        if not shared:
            os.close(h.fd)
            h.fd = None
            self._drop_work_user(h.work)
        try:
            node = await self._commit_work(target, h.work, keep=shared, base_sha=h.base_sha if h.vfile else None)
        except BaseException:
            if not shared:  # release still holds the work file: it drops this user again
                self.work_users[h.work] = self.work_users.get(h.work, 0) + 1
            raise
        h.written = h.pending = False
        if node is not None:
            h.vfile = node.parent
            h.base_sha = node.sha256
        elif nodes[0].kind == "draft":  # NAME/NAME equal to the newest version: goes on as latest
            h.vfile = nodes[0].parent
        if not shared:
            h.work = None

    def _drop_work_user(self, work: str) -> int:
        left = self.work_users.get(work, 1) - 1
        if left <= 0:
            self.work_users.pop(work, None)
        else:
            self.work_users[work] = left
        return left

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self.handles.get(fh)
        if isinstance(h, FileHandle) and h.failed is not None:
            raise h.failure()  # fsync must not report durable what a failed write lost
        if isinstance(h, FileHandle) and h.fd is not None:
            await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, h.fd, limiter=self.disk)

    @fuse_errors
    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh)
        if isinstance(h, VersionHandle):
            h.reader.close()
            return
        if not isinstance(h, FileHandle):
            return
        async with h.lock:
            if h.failed is None and h.commits and (h.written or h.pending):  # created or truncated only, or no flush came
                try:
                    await self._commit_handle(h)
                except errors.NoSpace as e:
                    log.warning("commit at release: %s; nothing committed", e)
                    h.failed = e
                except errors.RelayError as e:
                    log.error("commit at release failed: %s", e)
            if h.fd is not None:
                os.close(h.fd)
            if h.work is not None and self._drop_work_user(h.work) == 0:
                named = [n for n in self._node_or_none(h.ino) if n.work == h.work]
                if named and h.failed is not None and named[0].kind == "draft":
                    named = await self._drop_failed_draft(named[0])
                if not named:
                    await trio.to_thread.run_sync(self.l2.remove_work, h.work, limiter=self.disk)

    async def _drop_failed_draft(self, node: Node) -> list[Node]:
        """A new file whose write or commit failed goes, partial bytes and all: it never
        became a version, and on a full disk its space is what is needed back (freed first:
        the catalog needs a little of it to record the removal)."""
        assert node.work is not None
        try:
            await trio.to_thread.run_sync(os.truncate, self.l2.work_path(node.work), 0, limiter=self.disk)
        except FileNotFoundError:
            pass
        try:
            await self.catalog.remove(node.parent, node.name, folder=False)
        except errors.RelayError as e:
            log.warning("could not remove %s after its write failed: %s", node.name, e)
            return [node]
        pyfuse3.invalidate_entry_async(node.parent, node.name.encode(), ignore_enoent=True)
        log.info("removed the new file %s: its write failed, nothing was committed", node.name)
        return []

    def _node_or_none(self, ino: int) -> list[Node]:
        if ino >= LATEST_BASE:
            return []
        try:
            return [self.catalog.get(ino)]
        except errors.NotFound:
            return []

    # -- attributes changes ------------------------------------------------------------
    @fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode >= JOBS_DIR_INO or inode == ROOT_INO and (fields.update_size):
            raise errors.ReadOnly("read-only")
        if inode >= LATEST_BASE:
            return await self._setattr_latest(inode, attr, fields, fh)
        node = self.catalog.get(inode)
        if node.kind == "version":
            raise errors.ReadOnly("versions are immutable")
        if fields.update_uid and attr.st_uid != self.uid or fields.update_gid and attr.st_gid != self.gid:
            raise errors.NotPermitted("files belong to the mounting user")
        if node.kind in ("draft", "scratch"):
            assert node.work is not None
            path = self.l2.work_path(node.work)
            if fields.update_size:
                h = self.handles.get(fh) if fh is not None else None
                try:
                    await self.tiers.with_room(0, os.truncate, path, attr.st_size)
                except (errors.RelayError, OSError) as e:
                    if isinstance(h, FileHandle):
                        h.failed = e
                    raise
                self._mark_written(node.work)
            if fields.update_mtime or fields.update_atime:
                st = os.stat(path)
                times = (attr.st_atime_ns if fields.update_atime else st.st_atime_ns, attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns)
                os.utime(path, ns=times)
        elif fields.update_size:
            raise errors.IsADirectory("a folder has no size")
        node = await self.catalog.set_attrs(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime and node.is_folder else None,
        )
        return self._node_attr(node)

    def _mark_written(self, work: str) -> None:
        for h in self.handles.values():
            if isinstance(h, FileHandle) and h.work == work:
                h.written = True

    async def _setattr_latest(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None) -> pyfuse3.EntryAttributes:
        vfile = self.catalog.get(inode - LATEST_BASE)
        if (  # setting what latest already shows changes nothing (vim, `cp -p` do it): allowed
            fields.update_mode and stat.S_IMODE(attr.st_mode) != 0o644
            or fields.update_uid and attr.st_uid != self.uid
            or fields.update_gid and attr.st_gid != self.gid
        ):
            raise errors.ReadOnly("a version's mode cannot change")
        if fields.update_size:
            h = self.handles.get(fh) if fh is not None else None
            if isinstance(h, FileHandle):
                async with h.lock:
                    await self._change_draft(h, 0, os.ftruncate, attr.st_size)
                    h.written = True
                st = os.fstat(h.fd)  # type: ignore[arg-type]
                return self._attr(inode, 0o100644, st.st_size, st.st_mtime_ns, 0.0)
            # truncate(2) with no open file: a new version at once
            draft = await self._latest_draft(vfile, truncate=attr.st_size == 0)
            assert draft.fd is not None and draft.work is not None
            try:
                await self.tiers.with_room(0, os.ftruncate, draft.fd, attr.st_size)
            finally:
                os.close(draft.fd)
            try:
                await self._commit_work(vfile.ino, draft.work, keep=False)
            finally:  # gone if sealed; if the truncate or the seal failed, nothing is left
                await trio.to_thread.run_sync(self.l2.remove_work, draft.work, limiter=self.disk)
        # times of a version are its commit time: nothing else to change
        return self._latest_attr(vfile)

    # -- extended attributes -----------------------------------------------------------
    def _version_of(self, inode: int) -> Node | None:
        if JOBS_DIR_INO > inode >= LATEST_BASE:
            return self.catalog.head(inode - LATEST_BASE)
        if inode < LATEST_BASE:
            node = self.catalog.get(inode)
            if node.kind == "version":
                return node
        return None

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if inode == ROOT_INO and name == CONTROL_XATTR:
            return self.control_path.encode()
        if name not in XATTRS:  # `ls -l` asks for security.selinux and ACLs of every entry
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        node = self._version_of(inode)
        if node is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        assert node.sha256 is not None
        if name == b"user.relayfs.sha256":
            return node.sha256.encode()
        if name == b"user.relayfs.job":
            return str(node.job_id or "").encode()
        if name == b"user.relayfs.state":
            return self.catalog.version_state(node).encode()
        tiers = self.tiers.where(node.sha256)
        if self.catalog.blob(node.sha256).durable:
            tiers.append("L3")
        return ",".join(tiers).encode()

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return list(XATTRS) if self._version_of(inode) is not None else []

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        if name.startswith(b"system."):  # no ACLs anywhere: `cp -p` then falls back to chmod
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        if self._version_of(inode) is not None:
            raise errors.ReadOnly("versions are immutable")
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if self._version_of(inode) is not None:
            raise errors.ReadOnly("versions are immutable")
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    # -- the file system ---------------------------------------------------------------
    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.l2.root)
        out = pyfuse3.StatvfsData()
        for attr in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
            setattr(out, attr, getattr(st, attr))
        out.f_namemax = layout.NAME_MAX
        return out
