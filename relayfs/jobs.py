"""Background jobs: the workers that carry commits, deletes and namespace changes to L3.

The journal is the ``jobs`` table of the catalog, so a job exists as soon as the
transaction that made it commits, and a restart finds it again. ``JobRunner.run`` is one
trio task that starts a worker task per runnable job, at most ``upload_concurrency`` at
once. Jobs of one file run one at a time, in the order they were made (a delete never
overtakes the upload of the same version); namespace events form one such chain of their
own, put in batches (the head of the chain takes the events queued behind it along), and a
file's upload or delete queues its "version"/"drop" event on that chain once its record or
tombstone has landed. An upload whose version number another machine took first gets the
next free number (``_renumber``) and goes again. Blob uploads and blob deletes of one SHA-256
hold that SHA's lock, so a delete cannot remove bytes another file's upload relies on.
An upload job that ran before (it may have died with a ``kill -9``'ed daemon) first aborts
the multipart uploads still open for its blob key, so a crash leaves no orphaned parts.

Progress counters are the only state written from worker threads (boto3's callbacks); each
job's counter has its own ``threading.Lock``. Everything else is touched on the trio loop.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import trio

from .catalog import Catalog, Job
from .errors import IntegrityError, NoSpace
from .store import layout
from .store.l1 import ChunkCache
from .store.l2 import DiskCache, hash_fd
from .store.l3 import ObjectMissing, ObjectStore

log = logging.getLogger(__name__)


class PermanentJobError(Exception):
    """A job that retrying cannot fix (its local bytes are gone or wrong, a clash)."""


class NumberTaken(Exception):
    """Another machine's record holds this version's number."""

    def __init__(self, theirs: layout.VersionRecord) -> None:
        super().__init__(f"v{theirs.num} is taken by another workstation")
        self.theirs = theirs


@dataclass
class Progress:
    """Bytes sent by one running job; written from transfer threads."""

    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n


class JobRunner:
    """Runs queued jobs against L3 with bounded concurrency and exponential backoff."""

    def __init__(
        self,
        catalog: Catalog,
        store: ObjectStore,
        l2: DiskCache,
        l1: ChunkCache,
        *,
        concurrency: int,
        retry_base: float,
        retry_max: float,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.l2 = l2
        self.l1 = l1
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.slots = trio.CapacityLimiter(concurrency)
        self.io = trio.CapacityLimiter(concurrency * 2)  # threads blocked on L3
        self.progress: dict[int, Progress] = {}
        self._running: set[int] = set()
        self._blob_locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)
        self.l3_ok: bool | None = None
        self.l3_error = ""
        self.stopped: dict[str, str] = {}  # sha -> why its uploads must fail (fsck: its only copy is bad)
        self._last_stamp = 0  # ms of the last event put: stamps only grow, as seq does
        self.invalidate: Callable[[int, str], None] = lambda parent, name: None  # set by the engine

    # -- dispatch ----------------------------------------------------------------------
    def runnable(self, now: float, limit: int) -> tuple[list[Job], float | None]:
        """Up to ``limit`` jobs to start now, and when the next backed-off job becomes due.

        Only the head of each chain is read, lazily, and the scan stops at ``limit``: with
        thousands of jobs queued, each wake-up costs what it starts, not the whole backlog
        (``next_due`` is then unknown, but a finishing job wakes the loop anyway).
        """
        ready: list[Job] = []
        next_due: float | None = None
        if limit <= 0:
            return ready, next_due
        # one chain per file (a delete never overtakes its upload), and one for namespace
        # events (put in order, so a poller sees one writer's events in order): only heads run
        for job in self.catalog.chain_heads():
            if job.id in self._running:
                continue
            if job.not_before > now:
                next_due = job.not_before if next_due is None else min(next_due, job.not_before)
                continue
            ready.append(job)
            if len(ready) >= limit:
                break
        return ready, next_due

    async def run(self) -> None:
        """Forever: start what is runnable, then sleep until something changes."""
        async with trio.open_nursery() as nursery:
            while True:
                changed = self.catalog.changed
                ready, next_due = self.runnable(time.time(), int(self.slots.available_tokens))
                for job in ready:
                    self._running.add(job.id)
                    await self.slots.acquire_on_behalf_of(job.id)
                    nursery.start_soon(self._work, job)
                timeout = 30.0 if next_due is None else max(0.05, next_due - time.time())
                with trio.move_on_after(timeout):
                    await changed.wait()

    # -- one job -----------------------------------------------------------------------
    async def _work(self, job: Job) -> None:
        try:
            await self._attempt(job)
        except NoSpace as e:  # the journal itself could not be written: try again later
            log.warning("job %d (%s %s): cannot record its state: %s", job.id, job.kind, job.path, e)
            await trio.sleep(min(self.retry_max, 30.0))  # it is still in the journal: runs again
        finally:
            self._running.discard(job.id)
            self.slots.release_on_behalf_of(job.id)
            self.catalog._notify()

    async def _attempt(self, job: Job) -> None:
        attempts = job.attempts + 1
        self.progress[job.id] = Progress()
        await self.catalog.job_state(job.id, "running", attempts=attempts)
        then: layout.NsEvent | None = None
        try:
            if job.kind == "upload":
                await self._upload(job)
                then = self._landed("version", job)
            elif job.kind == "ns":
                await self._put_event(job)
            elif job.kind == "delete":
                await self._delete(job)
                then = self._landed("drop", job)
            else:
                raise PermanentJobError(f"unknown job kind {job.kind!r}")
        except NumberTaken as e:  # not a failure: the version moves to the next free number
            await self._renumber(job, e)
            await self.catalog.job_state(job.id, "queued", error="")
        except (PermanentJobError, IntegrityError) as e:
            log.error("job %d (%s %s) failed: %s", job.id, job.kind, job.path, e)
            await self.catalog.job_state(job.id, "failed", error=str(e))
        except Exception as e:  # L3 trouble of any kind: retry with backoff
            if job.kind == "upload" and job.sha256 in self.stopped:  # retrying cannot help now
                log.error("job %d (%s %s) failed: %s", job.id, job.kind, job.path, self.stopped[job.sha256])
                await self.catalog.job_state(job.id, "failed", error=self.stopped[job.sha256])
                return
            delay = min(self.retry_max, self.retry_base * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.l3_ok, self.l3_error = False, reason
            log.warning("job %d (%s %s) attempt %d: %s; retrying in %.1fs", job.id, job.kind, job.path, attempts, reason, delay)
            await self.catalog.job_state(job.id, "retrying", error=reason, not_before=time.time() + delay)
        else:
            self.l3_ok, self.l3_error = True, ""
            await self.catalog.job_state(job.id, "done", error="", then=then)
        finally:
            self.progress.pop(job.id, None)

    @staticmethod
    def _landed(op: str, job: Job) -> layout.NsEvent:
        """The change-feed event telling other machines a record or tombstone is in L3."""
        assert job.file_id and job.num
        return layout.NsEvent(op, job.path.strip("/").rpartition("/")[0], file_id=job.file_id, num=job.num)

    async def _renumber(self, job: Job, taken: "NumberTaken") -> None:
        """Another machine landed this version's number first: take the next free one and
        pick up theirs, so that neither version is lost and no number means two contents."""
        assert job.file_id
        prefix = f"records/{job.file_id}/"
        keys = await trio.to_thread.run_sync(lambda: list(self.store.list(prefix)), limiter=self.io)
        used = [0]
        for key in keys:
            try:
                used.append(layout.parse_record_key(key)[1])
            except layout.BadRecord:
                continue
        vfile, old, new = await self.catalog.renumber(job.id, max(used) + 1)
        log.warning("%s: %s was committed by another workstation first; this version is now %s",
                    job.path.rpartition("/")[0], old, new)
        await self.catalog.merge_remote([], [taken.theirs], set(), {job.file_id: max(used)}, seen=[])
        if vfile:
            self.invalidate(vfile, old)
            self.invalidate(vfile, new)

    async def _l3(self, fn: Callable[..., object], *args: object, **kwargs: object) -> object:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self.io)

    async def _upload(self, job: Job) -> None:
        assert job.sha256 and job.key and job.body is not None
        sha = job.sha256
        if sha in self.stopped:
            raise PermanentJobError(self.stopped[sha])
        blob = self.catalog.blob(sha)
        async with self._blob_locks[sha]:
            if job.attempts:  # tried before, maybe by a daemon killed mid-upload
                await self._abort_leftovers(layout.blob_key(sha))
            if not self.catalog.blob(sha).durable:
                size = await self._l3(self.store.head, layout.blob_key(sha))
                if size != blob.size:
                    path = self.l2.blob_path(sha)
                    if not path.exists():
                        raise PermanentJobError(f"bytes of {job.path} are missing from the cache")
                    await trio.to_thread.run_sync(self._check_local, path, sha)
                    prog = self.progress[job.id]
                    await self._l3(self.store.put_file, layout.blob_key(sha), str(path), progress=prog.add)
                else:
                    self.progress[job.id].add(blob.size)
                await self.catalog.blob_durable(sha, True)
            else:
                self.progress[job.id].add(blob.size)
        created = await self._l3(self.store.put_bytes, job.key, job.body, if_absent=True)
        if not created:
            existing = await self._l3(self.store.get_bytes, job.key)
            assert isinstance(existing, bytes)
            try:
                theirs = layout.VersionRecord.from_json(existing)
            except layout.BadRecord as e:
                raise PermanentJobError(f"{job.key} already holds something else: {e}") from None
            if theirs.sha256 != sha or layout.record_key(theirs.file_id, theirs.num) != job.key:
                raise NumberTaken(theirs)

    async def _abort_leftovers(self, key: str) -> None:
        """Abort multipart uploads of ``key`` that an earlier attempt left open.

        Called under the blob's lock, so no upload of this daemon is in flight for the key:
        what is listed was left by a daemon that died mid-upload (``kill -9``, power loss),
        whose parts would otherwise stay in the bucket, billed and invisible, for ever.
        """
        uploads = await trio.to_thread.run_sync(self.store.multipart_uploads, key, limiter=self.io)
        for found, upload_id in uploads:
            if found == key:
                await self._l3(self.store.abort_multipart, key, upload_id)
                log.info("aborted multipart upload %s of %s left by an interrupted attempt", upload_id, key)

    async def stop_uploads(self, sha: str, reason: str) -> int:
        """Fail the unfinished uploads of a blob whose only copy is bad (``relayfs fsck``):
        retrying cannot help, and ``relayfs wait`` and ``.jobs/`` should say so at once. An
        attempt running now fails when it ends, whatever L3 answered. Returns how many."""
        self.stopped[sha] = reason
        jobs = [j for j in self.catalog.unfinished_jobs() if j.kind == "upload" and j.sha256 == sha]
        for job in jobs:
            if job.id not in self._running:
                await self.catalog.job_state(job.id, "failed", error=reason)
        return len(jobs)

    @staticmethod
    def _check_local(path: object, sha: str) -> None:
        import os

        fd = os.open(str(path), os.O_RDONLY)
        try:
            if hash_fd(fd).sha256 != sha:
                raise IntegrityError(f"cached bytes of blob {sha[:12]} are corrupt; not uploading them")
        finally:
            os.close(fd)

    async def _put_event(self, job: Job) -> None:
        """Put one event, and with it the events queued behind it (one object, one round
        trip), stamped now: a poller lists only recent stamps, so an event that waited out
        an outage must not carry the time it was queued."""
        assert job.key and job.body is not None
        batch = [job, *self.catalog.ns_followers(job.id, layout.NS_BATCH_MAX - 1)]
        body = job.body if len(batch) == 1 else layout.ns_batch([(int(j.key[-13:-5]), j.body) for j in batch])  # type: ignore[index,misc]
        stamp = max(int(time.time() * 1000), self._last_stamp + 1)
        self._last_stamp = stamp
        await self._l3(self.store.put_bytes, layout.ns_restamp(job.key, stamp), body, if_absent=True)
        self.progress[job.id].add(len(job.body))
        if len(batch) > 1:
            await self.catalog.jobs_done([j.id for j in batch[1:]])

    async def _delete(self, job: Job) -> None:
        assert job.key and job.sha256
        await self._l3(self.store.put_bytes, job.key, b"{}", if_absent=True)
        sha = job.sha256
        async with self._blob_locks[sha]:
            if self.catalog.blob_refs(sha) == 0:
                try:
                    await self._l3(self.store.delete, layout.blob_key(sha))
                except ObjectMissing:
                    pass
                await trio.to_thread.run_sync(self.l2.remove_blob, sha)
                self.l1.drop_blob(sha)
                await self.catalog.forget_blob(sha)

    # -- views -------------------------------------------------------------------------
    def bytes_done(self, job: Job) -> int:
        if job.state == "done":
            return job.bytes_total
        p = self.progress.get(job.id)
        if p is not None:
            return min(p.done, job.bytes_total) if job.bytes_total else p.done
        return 0

    def describe(self, job: Job) -> dict[str, object]:
        done = self.bytes_done(job)
        total = job.bytes_total
        pct = 100.0 if job.state == "done" else (round(100.0 * done / total, 1) if total else 0.0)
        return {
            "id": job.id,
            "kind": job.kind,
            "path": job.path,
            "version": job.num if job.num is not None else "",
            "state": job.state,
            "bytes_done": done,
            "bytes_total": total,
            "percent": pct,
            "attempts": job.attempts,
            "last_error": job.last_error,
            "note": job.note,
            "created": _iso(job.created),
            "updated": _iso(job.updated),
        }

    def render(self, job: Job) -> bytes:
        """The text of ``.jobs/ID``: one ``key: value`` line per field."""
        return "".join(f"{k}: {v}\n" for k, v in self.describe(job).items()).encode()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")
