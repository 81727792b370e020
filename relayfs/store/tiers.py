"""The read path through the tiers: L1 (RAM) -> L2 (disk) -> L3 (thaw), and L2's budget.

``Tiers.open`` gives a ``BlobReader`` for one version's blob; its ``read`` serves any byte
range chunk by chunk: from L1 if there, else from L2 (checked against the chunk hash on
the way into L1), else from the blob's thaw once that chunk has arrived. A reader pins the
file it started on (an open fd), so a blob deleted or evicted meanwhile still reads.
Runs on the trio loop; disk reads go to threads under ``disk`` (a bounded limiter).
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Awaitable, Callable

import trio

from ..errors import IntegrityError
from .l1 import ChunkCache
from .l2 import DiskCache
from .thaw import Thaw, Thawer

log = logging.getLogger(__name__)


class BlobReader:
    """An open version's bytes, wherever they are."""

    def __init__(self, tiers: "Tiers", sha: str, size: int, chunk_size: int, chunks: tuple[str, ...]) -> None:
        self.tiers = tiers
        self.sha = sha
        self.size = size
        self.chunk_size = chunk_size
        self.hashes = chunks
        self.fd: int | None = None
        self.thaw: Thaw | None = None

    def _attach(self) -> None:
        """Pin the L2 file, or join (or start) its thaw."""
        try:
            self.fd = os.open(self.tiers.l2.blob_path(self.sha), os.O_RDONLY)
            return
        except FileNotFoundError:
            pass
        self.thaw = self.tiers.thawer.start(self.sha, self.size, self.chunk_size, self.hashes)
        self.thaw.readers += 1

    async def _chunk(self, index: int) -> bytes:
        key = (self.sha, index)
        data = self.tiers.l1.get(key)
        if data is not None:
            return data
        if self.fd is not None:
            fd, expect = self.fd, self.hashes[index]
            data = await trio.to_thread.run_sync(self._read_checked, fd, index, expect, limiter=self.tiers.disk)
        else:
            assert self.thaw is not None
            await self.thaw.wait(index)
            data = await trio.to_thread.run_sync(
                os.pread, self.thaw.fd, self.chunk_size, index * self.chunk_size, limiter=self.tiers.disk
            )
        self.tiers.l1.put(key, data)
        return data

    def _read_checked(self, fd: int, index: int, expect: str) -> bytes:
        import hashlib

        data = os.pread(fd, self.chunk_size, index * self.chunk_size)
        if hashlib.sha256(data).hexdigest() != expect:
            log.error("integrity: blob %s chunk %d in L2 does not match its recorded hash", self.sha, index)
            raise IntegrityError(f"blob {self.sha[:12]} chunk {index} in L2 is corrupt")
        return data

    async def read(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        if self.fd is None and self.thaw is None:
            self._attach()
        first, last = offset // self.chunk_size, (end - 1) // self.chunk_size
        if self.thaw is not None:
            for i in range(first, last + 1):
                self.thaw.want(i)
        parts = [await self._chunk(i) for i in range(first, last + 1)]
        buf = parts[0] if len(parts) == 1 else b"".join(parts)
        start = offset - first * self.chunk_size
        return buf[start:start + (end - offset)]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.thaw is not None:
            self.thaw.release()
            self.thaw = None


class Tiers:
    """L1, L2 and the thawer, with L2's byte budget."""

    def __init__(self, l1: ChunkCache, l2: DiskCache, thawer: Thawer, *, l2_budget: int, disk_threads: int = 4) -> None:
        self.l1 = l1
        self.l2 = l2
        self.thawer = thawer
        self.l2_budget = l2_budget
        self.disk = trio.CapacityLimiter(disk_threads)

    def open(self, sha: str, size: int, chunk_size: int, chunks: tuple[str, ...]) -> BlobReader:
        reader = BlobReader(self, sha, size, chunk_size, chunks)
        if size:
            reader._attach()
        return reader

    def where(self, sha: str) -> list[str]:
        """Tiers holding a blob's bytes now, hottest first (L3 is added by the caller)."""
        out = []
        if self.l1.holds_blob(sha):
            out.append("L1")
        if self.l2.has_blob(sha):
            out.append("L2")
        return out

    async def make_room(self, evictable: Callable[[], list[tuple[str, int]]], on_evict: Callable[[str], Awaitable[None]]) -> int:
        """Evict blobs durable in L3, least recently used first, until L2 is within budget."""
        used = await trio.to_thread.run_sync(self.l2.usage, limiter=self.disk)
        freed = 0
        if used <= self.l2_budget:
            return 0
        for sha, _size in evictable():
            if used - freed <= self.l2_budget:
                break
            if sha in self.thawer.active:
                continue
            got = await trio.to_thread.run_sync(self.l2.remove_blob, sha, limiter=self.disk)
            if got:
                freed += got
                await on_evict(sha)
                log.info("evicted blob %s from L2 (%d bytes)", sha[:12], got)
        return freed


def is_nospace(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)
