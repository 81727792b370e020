"""The read path through the tiers: L1 (RAM) -> L2 (disk) -> L3 (thaw), and L2's budget.

``Tiers.open`` gives a ``BlobReader`` for one version's blob; its ``read`` serves any byte
range chunk by chunk: from L1 if there, else from L2 (checked against the chunk hash on
the way into L1), else from the blob's thaw once that chunk has arrived. A reader pins the
file it started on (an open fd), so a blob deleted or evicted meanwhile still reads.
Runs on the trio loop; disk reads go to threads under ``disk`` (a bounded limiter).

L2's space has two limits. The byte budget (``make_room``, run after thaws and by
housekeeping) evicts least recently used blobs that are durable in L3. The filesystem
under the cache dir may fill up before the budget does: then ``with_room`` (every L2 write
that allocates space goes through it) asks ``free_space`` to evict durable blobs, whatever
the budget, until ``statvfs`` shows the bytes needed, and tries the write once more; only
if that fails too does the caller get ``NoSpace`` (ENOSPC). Neither path ever removes a
blob that is not durable in L3, one being thawed, or one open for reading (unlinking it
would free nothing until it is closed).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any, Callable, TypeVar

import outcome
import trio

from ..errors import IntegrityError, NoSpace
from .l1 import ChunkCache
from .l2 import DiskCache
from .thaw import Thaw, Thawer

log = logging.getLogger(__name__)

T = TypeVar("T")
ROOM_MARGIN = 1024 * 1024  # free_space leaves this much on top of what was asked for
Evictable = Callable[[], list[tuple[str, int]]]


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
        self._next = 0  # the chunk a sequential reader asks for next

    def _attach(self) -> None:
        """Pin the L2 file, or join (or start) its thaw."""
        try:
            self.fd = os.open(self.tiers.l2.blob_path(self.sha), os.O_RDONLY)
        except FileNotFoundError:
            self.thaw = self.tiers.thawer.start(self.sha, self.size, self.chunk_size, self.hashes)
            self.thaw.readers += 1
        self.tiers.pinned[self.sha] += 1  # evicting it would free nothing until we close

    async def _chunk(self, index: int) -> bytes:
        key = (self.sha, index)
        data = self.tiers.l1.get(key)
        if data is not None:
            return data
        if self.fd is not None:
            data = await self._from_l2(index)
        else:
            assert self.thaw is not None
            await self.thaw.wait(index)
            data = await trio.to_thread.run_sync(
                os.pread, self.thaw.fd, self.chunk_size, index * self.chunk_size, limiter=self.tiers.disk
            )
        self.tiers.l1.put(key, data)
        return data

    async def _from_l2(self, index: int) -> bytes:
        """Read and check one chunk from L2; a sequential reader gets the next chunk read and
        checked into L1 at the same time, in a second thread (hashing is most of the cost,
        and there is a second core for it)."""
        assert self.fd is not None
        fd = self.fd
        ahead = index + 1
        sequential = index == self._next and ahead < len(self.hashes)
        self._next = ahead
        if not sequential or self.tiers.l1.get((self.sha, ahead)) is not None:
            return await trio.to_thread.run_sync(self._read_checked, fd, index, self.hashes[index], limiter=self.tiers.disk)

        async def read_ahead() -> None:
            with contextlib.suppress(IntegrityError, OSError):  # the reader meets it when it gets there
                data = await trio.to_thread.run_sync(self._read_checked, fd, ahead, self.hashes[ahead], limiter=self.tiers.disk)
                self.tiers.l1.put((self.sha, ahead), data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_ahead)
            # the caller's own chunk: its error (a corrupt chunk is EIO) must leave as itself,
            # not wrapped in the nursery's exception group
            result = await outcome.acapture(
                trio.to_thread.run_sync, self._read_checked, fd, index, self.hashes[index], limiter=self.tiers.disk
            )
        return result.unwrap()

    def _read_checked(self, fd: int, index: int, expect: str) -> bytes:
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
            self.tiers.unpin(self.sha)
        if self.thaw is not None:
            self.thaw.release()
            self.thaw = None
            self.tiers.unpin(self.sha)


class Tiers:
    """L1, L2 and the thawer, with L2's byte budget."""

    def __init__(
        self, l1: ChunkCache, l2: DiskCache, thawer: Thawer, *, l2_budget: int, disk_threads: int = 4,
        evictable: Evictable | None = None,
    ) -> None:
        """``evictable`` lists the blobs durable in L3, least recently used first (the
        catalog's ``evictable_blobs``); without it a full disk can only be reported."""
        self.l1 = l1
        self.l2 = l2
        self.thawer = thawer
        self.l2_budget = l2_budget
        self.disk = trio.CapacityLimiter(disk_threads)
        self.evictable = evictable
        self.pinned: Counter[str] = Counter()  # blob -> readers and copies using it: not evicted
        self._freeing = trio.Lock()  # one eviction pass at a time: no over-eviction
        thawer.make_room = self.free_space

    def unpin(self, sha: str) -> None:
        self.pinned[sha] -= 1
        if self.pinned[sha] <= 0:
            del self.pinned[sha]

    @contextlib.contextmanager
    def pin(self, sha: str) -> Iterator[None]:
        """Keep a blob from eviction while it is being copied (the start of a draft)."""
        self.pinned[sha] += 1
        try:
            yield
        finally:
            self.unpin(sha)

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

    async def make_room(self) -> int:
        """Evict blobs durable in L3, least recently used first, until L2 is within budget."""
        used = await trio.to_thread.run_sync(self.l2.usage, limiter=self.disk)
        freed = 0
        if used <= self.l2_budget:
            return 0
        for sha, _size in (self.evictable() if self.evictable is not None else []):
            if used - freed <= self.l2_budget:
                break
            freed += await self._evict(sha, "over budget")
        return freed

    async def _evict(self, sha: str, why: str) -> int:
        """Drop one durable blob from L2 unless it is being thawed or read; bytes freed."""
        if sha in self.thawer.active or self.pinned.get(sha):
            return 0
        got = await trio.to_thread.run_sync(self.l2.remove_blob, sha, limiter=self.disk)
        if got:
            self.l1.drop_blob(sha)
            log.info("evicted blob %s from L2, %s (%d bytes)", sha[:12], why, got)
        return got

    def _has_room(self, need: int) -> bool:
        st = os.statvfs(self.l2.root)
        return st.f_bavail * st.f_frsize >= need + ROOM_MARGIN

    async def free_space(self, need: int) -> int:
        """Evict durable blobs, least recently used first and regardless of the budget,
        until the cache filesystem has ``need`` bytes (plus a margin) free; returns the
        bytes freed. Skips blobs being thawed or open for reading (see the module doc)."""
        freed = 0
        async with self._freeing:
            if self.evictable is None:
                return 0
            for sha, _size in self.evictable():
                if await trio.to_thread.run_sync(self._has_room, need, limiter=self.disk):
                    break
                freed += await self._evict(sha, "to make room on a full disk")
        return freed

    async def with_room(self, need: int, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking L2 work that allocates about ``need`` bytes, in a worker thread.

        On a full disk (``ENOSPC``/``EDQUOT`` or ``NoSpace`` from L2) make room by evicting
        durable blobs, then try exactly once more; a second failure is ``NoSpace``. ``fn``
        must leave nothing behind when it fails (L2's methods do; ``pwrite`` at an offset
        and ``ftruncate`` can simply be repeated).
        """
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.disk)
        except OSError as e:
            if not is_nospace(e):
                raise
        except NoSpace:
            pass
        freed = await self.free_space(need)
        log.debug("full disk: freed %d bytes for %d more; trying once more", freed, need)
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.disk)
        except OSError as e:
            if is_nospace(e):
                raise NoSpace(f"the cache disk under {self.l2.root} is full") from None
            raise


def is_nospace(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)
