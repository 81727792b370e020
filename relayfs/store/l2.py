"""L2: the cache directory on local disk, the persistent buffer every write lands in first.

Layout under the cache dir::

    catalog.db            the catalog and job journal (SQLite, see catalog.py)
    blobs/<sha[:2]>/<sha> version contents, content-addressed, immutable once there
    work/<id>             bytes being written: new files, drafts of ``latest``, scratch files
    thaw/<sha>.part       a blob being brought back from L3 (sparse until complete)

A blob enters ``blobs/`` only by ``rename`` of a file already fsync'ed, followed by an fsync
of the directory: after a crash a blob is either whole or absent. Every method here blocks:
callers run them through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import IntegrityError, NoSpace
from .layout import CHUNK_SIZE

log = logging.getLogger(__name__)

_READ_BUF = 4 * CHUNK_SIZE


@dataclass(frozen=True)
class BlobInfo:
    """What hashing a file yields: its name in the content-addressed store and its chunks."""

    sha256: str
    size: int
    chunk_size: int
    chunks: tuple[str, ...]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_fd(fd: int, chunk_size: int = CHUNK_SIZE) -> BlobInfo:
    """SHA-256 of the whole file and of each chunk, in one pass over it."""
    whole = hashlib.sha256()
    chunks: list[str] = []
    size = 0
    while True:
        data = os.pread(fd, chunk_size, size)
        if not data:
            break
        whole.update(data)
        chunks.append(hashlib.sha256(data).hexdigest())
        size += len(data)
        if len(data) < chunk_size:
            break
    if not chunks:
        chunks.append(hashlib.sha256(b"").hexdigest())
    return BlobInfo(whole.hexdigest(), size, chunk_size, tuple(chunks))


def _nospace(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


class DiskCache:
    """Paths and blocking file work inside the cache directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.work = root / "work"
        self.thaw = root / "thaw"
        for d in (root, self.blobs, self.work, self.thaw):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)

    # -- names -------------------------------------------------------------------------
    def blob_path(self, sha: str) -> Path:
        return self.blobs / sha[:2] / sha

    def thaw_path(self, sha: str) -> Path:
        return self.thaw / f"{sha}.part"

    def work_path(self, name: str) -> Path:
        return self.work / name

    def has_blob(self, sha: str) -> bool:
        return self.blob_path(sha).exists()

    # -- writing -----------------------------------------------------------------------
    def new_work_file(self, from_sha: str | None = None) -> str:
        """Create an empty work file (or a copy of a blob, for appends); return its name."""
        name = uuid.uuid4().hex
        path = self.work_path(name)
        try:
            if from_sha is None:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                os.close(fd)
            else:
                shutil.copyfile(self.blob_path(from_sha), path)
        except OSError as e:
            path.unlink(missing_ok=True)
            if _nospace(e):
                raise NoSpace("cache disk full") from None
            raise
        return name

    def seal(self, name: str) -> BlobInfo:
        """Make a work file a blob: fsync, hash, move into ``blobs/`` (or drop a duplicate).

        The work file is gone afterwards. Returns the blob's info; the blob is durable on L2.
        """
        path = self.work_path(name)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                info = hash_fd(fd)
            finally:
                os.close(fd)
            self.adopt(path, info.sha256)
        except OSError as e:
            if _nospace(e):
                raise NoSpace("cache disk full") from None
            raise
        return info

    def snapshot(self, name: str) -> BlobInfo:
        """Like ``seal`` but keeps the work file (it is still open for writing somewhere)."""
        copy = self.work_path(uuid.uuid4().hex)
        try:
            shutil.copyfile(self.work_path(name), copy)
        except OSError as e:
            copy.unlink(missing_ok=True)
            if _nospace(e):
                raise NoSpace("cache disk full") from None
            raise
        return self.seal(copy.name)

    def adopt(self, path: Path, sha: str) -> None:
        """Move an fsync'ed file whose SHA-256 is known into ``blobs/`` atomically.

        A blob already there is replaced, not kept: the new file was hashed just now, the
        old one may have rotted on disk since (readers holding it open keep their bytes).
        """
        target = self.blob_path(sha)
        target.parent.mkdir(mode=0o700, exist_ok=True)
        os.rename(path, target)
        fsync_dir(target.parent)  # the new name is what must last; a work file left behind by
        # a power cut (its removal not yet durable) is an orphan that recovery removes

    def unseal(self, sha: str, name: str | None, in_use: bool) -> None:
        """Undo ``seal``/``snapshot`` after the commit failed.

        ``name``: the work file ``seal`` consumed, given its bytes back (the blob is moved
        back when nothing else uses it, else copied). The blob itself leaves ``blobs/``
        unless ``in_use`` (a version, or another commit in flight, has the same bytes).
        """
        blob = self.blob_path(sha)
        if name is not None and not self.work_path(name).exists():
            if in_use:
                shutil.copyfile(blob, self.work_path(name))
            else:
                os.rename(blob, self.work_path(name))
                fsync_dir(self.work)
                return
        if not in_use:
            blob.unlink(missing_ok=True)

    def remove_work(self, name: str) -> None:
        self.work_path(name).unlink(missing_ok=True)

    def remove_blob(self, sha: str) -> int:
        """Delete a blob from L2; returns the bytes freed."""
        path = self.blob_path(sha)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    # -- reading -----------------------------------------------------------------------
    def read_chunk(self, sha: str, index: int, chunk_size: int, expect: str) -> bytes:
        """One chunk of an L2 blob, checked against its recorded hash."""
        with open(self.blob_path(sha), "rb", buffering=0) as f:
            data = os.pread(f.fileno(), chunk_size, index * chunk_size)
        if hashlib.sha256(data).hexdigest() != expect:
            raise IntegrityError(f"chunk {index} of blob {sha[:12]} in L2 does not match its hash")
        return data

    def usage(self) -> int:
        """Bytes held by blobs (the part of L2 that the budget bounds)."""
        total = 0
        for sub in self.blobs.iterdir():
            for f in sub.iterdir():
                try:
                    total += f.stat().st_blocks * 512
                except FileNotFoundError:
                    pass
        return total

    def blob_names(self) -> set[str]:
        return {f.name for sub in self.blobs.iterdir() for f in sub.iterdir()}

    def work_names(self) -> set[str]:
        """Every work file, named or not (after a crash: drafts nobody will close)."""
        return {f.name for f in self.work.iterdir()}

    def clear_thaw(self) -> None:
        """Partial thaws do not survive a restart: they are fetched again when needed."""
        for f in self.thaw.iterdir():
            f.unlink(missing_ok=True)
