"""Thaw: bringing a cold blob from L3 back into L2 while readers wait per chunk.

A ``Thaw`` fetches a blob with ranged GETs into ``thaw/<sha>.part`` (a sparse file of the
full size). Each chunk is checked against the chunk hash in its version record before it
is written, and a reader waits only for the chunks it asks for (they jump the queue), so
the first byte never waits for the whole file. When every chunk is in, the whole file's
SHA-256 is checked and the file is renamed into ``blobs/``.

Faults: a GET that fails or comes back short (a connection cut mid-answer) is retried
(``ATTEMPTS`` times); a chunk is written only after its hash matched, and written whole
(a nearly full disk may take part of a write), so a cut-short answer can cost a retry or
an EIO, never wrong bytes. When the cache disk is full, the thaw asks the tiers to evict
durable blobs (``make_room``) and writes once more; if there is still no room, readers get
``NoSpace``.

Concurrency: a Thaw's sets and events are touched only on the trio loop; the threads do
the GETs, the writes and the hashing and hand back plain bytes. Each chunk has one
``trio.Event``, set when the chunk is in or the thaw has failed (readers then see the
error, never wrong bytes).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from typing import Awaitable, Callable

import trio

from ..errors import IntegrityError, NoSpace, Unavailable
from . import layout
from .l2 import DiskCache, hash_fd
from .l3 import ObjectMissing, ObjectStore, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

RANGE_CHUNKS = 4  # chunks fetched by one GET
ATTEMPTS = 3


class Thaw:
    """One blob on its way from L3 to L2."""

    def __init__(self, sha: str, size: int, chunk_size: int, chunks: tuple[str, ...], fd: int) -> None:
        self.sha = sha
        self.size = size
        self.chunk_size = chunk_size
        self.hashes = chunks
        self.fd = fd
        self.pending: list[int] = list(range(len(chunks)))  # not yet asked for
        self.urgent: list[int] = []
        self.arrived = [trio.Event() for _ in chunks]
        self.error: Exception | None = None
        self.finished = trio.Event()
        self.readers = 0
        self._closed = False

    def release(self) -> None:
        """A reader is done with the fd; close it once the thaw and every reader are."""
        self.readers -= 1
        self.close_if_idle()

    def close_if_idle(self) -> None:
        if self.readers <= 0 and self.finished.is_set() and not self._closed:
            self._closed = True
            os.close(self.fd)

    def want(self, index: int) -> None:
        if not self.arrived[index].is_set() and index in self.pending:
            self.urgent.append(index)

    def next_range(self) -> list[int]:
        """The next run of chunks to fetch: asked-for chunks first, then in order."""
        limit = RANGE_CHUNKS
        while self.urgent:
            first = self.urgent.pop(0)
            if first in self.pending:
                # a reader is waiting on this one: fetch it alone, so its GET is as short
                # as it can be while the other fetchers share the link
                limit = 1
                break
        else:
            if not self.pending:
                return []
            first = self.pending[0]
            if first == 0:
                limit = 1  # readers start at the front: the first byte should not wait for more
        run = [first]
        while len(run) < limit and run[-1] + 1 in self.pending:
            run.append(run[-1] + 1)
        for i in run:
            self.pending.remove(i)
        return run

    async def wait(self, index: int) -> None:
        self.want(index)
        await self.arrived[index].wait()
        if self.error is not None:
            raise self.error

    def fail(self, error: Exception) -> None:
        """Wake every reader with ``error``. ``finished`` is left to ``Thawer._run``: other
        fetchers may still be writing, and the fd must stay open until they stop."""
        self.error = error
        for ev in self.arrived:
            ev.set()


class Thawer:
    """Starts and tracks thaws; at most one per blob."""

    def __init__(
        self,
        l2: DiskCache,
        store: ObjectStore,
        nursery: trio.Nursery,
        *,
        parallel: int,
        on_done: Callable[[str], Awaitable[None]],
    ) -> None:
        self.l2 = l2
        self.store = store
        self.nursery = nursery
        self.parallel = parallel
        self.limiter = trio.CapacityLimiter(parallel)
        self.on_done = on_done
        self.active: dict[str, Thaw] = {}
        # set by Tiers: evict durable blobs until N bytes are free on the cache disk
        self.make_room: Callable[[int], Awaitable[int]] | None = None

    def start(self, sha: str, size: int, chunk_size: int, chunks: tuple[str, ...]) -> Thaw:
        thaw = self.active.get(sha)
        if thaw is not None:
            return thaw
        path = self.l2.thaw_path(sha)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, size)
        thaw = Thaw(sha, size, chunk_size, chunks, fd)
        self.active[sha] = thaw
        self.nursery.start_soon(self._run, thaw)
        return thaw

    async def _run(self, thaw: Thaw) -> None:
        try:
            async with trio.open_nursery() as n:
                for _ in range(min(self.parallel, len(thaw.hashes))):
                    n.start_soon(self._fetcher, thaw)
            if thaw.error is None:
                await trio.to_thread.run_sync(self._finish, thaw)
                try:
                    await self.on_done(thaw.sha)
                except NoSpace as e:  # bookkeeping only: the blob is whole in L2 already
                    log.warning("after the thaw of blob %s: %s", thaw.sha[:12], e)
        except Exception as e:  # the error reaches every waiting reader as EIO
            if not isinstance(e, (IntegrityError, Unavailable, NoSpace)):
                log.exception("thaw of blob %s failed", thaw.sha[:12])
                e = Unavailable(f"thaw of blob {thaw.sha[:12]} failed: {e}")  # readers see EIO
            thaw.fail(e)
        finally:
            self.active.pop(thaw.sha, None)
            thaw.finished.set()
            if thaw.error is not None:
                self.l2.thaw_path(thaw.sha).unlink(missing_ok=True)
            thaw.close_if_idle()

    async def _fetcher(self, thaw: Thaw) -> None:
        while thaw.error is None:
            run = thaw.next_range()
            if not run:
                return
            start = run[0] * thaw.chunk_size
            length = min(thaw.size - start, len(run) * thaw.chunk_size)
            data = await self._get(thaw, start, length)
            if thaw.error is not None:
                return
            try:
                await self._store(thaw, run, data)
            except (IntegrityError, NoSpace) as e:
                thaw.fail(e)  # on the loop: trio events cannot be set from a worker thread
                return
            for i in run:
                thaw.arrived[i].set()

    async def _store(self, thaw: Thaw, run: list[int], data: bytes) -> None:
        """Write checked chunks; on a full disk make room once and write again."""
        try:
            await trio.to_thread.run_sync(self._store_chunks, thaw, run, data, limiter=self.limiter)
            return
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
        # room for every chunk still to come: the other fetchers of this thaw are writing too
        missing = sum(1 for ev in thaw.arrived if not ev.is_set()) * thaw.chunk_size
        freed = await self.make_room(min(thaw.size, missing)) if self.make_room is not None else 0
        log.info("thaw of blob %s: cache disk full, freed %d bytes; writing again", thaw.sha[:12], freed)
        try:
            await trio.to_thread.run_sync(self._store_chunks, thaw, run, data, limiter=self.limiter)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.warning("thaw of blob %s: the cache disk is full", thaw.sha[:12])
            raise NoSpace(f"no room in the cache to thaw blob {thaw.sha[:12]}") from None

    async def _get(self, thaw: Thaw, start: int, length: int) -> bytes:
        key = layout.blob_key(thaw.sha)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                if length == 0:
                    return b""
                data = await trio.to_thread.run_sync(self.store.get_range, key, start, length, limiter=self.limiter)
                if len(data) != length and attempt < ATTEMPTS:
                    # an answer cut short is retried; the same short answer every time is
                    # what the object holds, and the chunk hashes then refuse it
                    raise StoreUnavailable(f"got {len(data)} of {length} bytes of {key} at {start}")
                return data
            except ObjectMissing:
                thaw.fail(IntegrityError(f"blob {thaw.sha[:12]} is missing from L3"))
                log.error("thaw: blob %s is missing from L3", thaw.sha)
                return b""
            except StoreError as e:
                if attempt == ATTEMPTS:
                    thaw.fail(Unavailable(f"L3 unreachable while thawing {thaw.sha[:12]}: {e}"))
                    log.error("thaw of blob %s: L3 unreachable: %s", thaw.sha[:12], e)
                    return b""
                await trio.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    @staticmethod
    def _store_chunks(thaw: Thaw, run: list[int], data: bytes) -> None:
        """Check each chunk against its recorded hash and write it (in a worker thread)."""
        for n, index in enumerate(run):
            piece = data[n * thaw.chunk_size:(n + 1) * thaw.chunk_size]
            if hashlib.sha256(piece).hexdigest() != thaw.hashes[index]:
                err = IntegrityError(f"blob {thaw.sha[:12]} chunk {index} from L3 does not match its recorded hash")
                log.error("integrity: %s", err)
                raise err
            # a nearly full disk takes part of a write without an error: write the rest (the
            # next try raises ENOSPC), or a reader would see the sparse file's zeros
            view, off = memoryview(piece), index * thaw.chunk_size
            while view:
                done = os.pwrite(thaw.fd, view, off)
                view, off = view[done:], off + done

    def _finish(self, thaw: Thaw) -> None:
        os.fsync(thaw.fd)
        if hash_fd(thaw.fd).sha256 != thaw.sha:
            log.error("integrity: thawed blob %s does not match its SHA-256", thaw.sha)
            raise IntegrityError(f"thawed blob {thaw.sha[:12]} does not match its SHA-256")
        self.l2.adopt(self.l2.thaw_path(thaw.sha), thaw.sha)
