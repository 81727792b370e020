"""``relayfs fsck``: check what the cache holds against what the catalog recorded, and repair
from L3 what L3 can repair.

For every blob used by a version under the checked path:

* in L2: its size, every chunk's SHA-256 and the whole file's SHA-256 are checked (in worker
  threads under a small limiter, never on the trio loop). A corrupt blob that L3 holds is
  repaired: the bad file and its L1 chunks are dropped and the blob is thawed again, which
  checks every chunk and the whole file before it lands in L2. A corrupt blob L3 does not
  hold is reported with the versions using it, and its upload jobs are marked failed, so the
  bad bytes are never uploaded (the job runner also re-hashes a blob before it uploads it);
  the bad file stays where it is, as the only trace of that data.
* not in L2: L3 must hold it (a HEAD with the recorded size); otherwise it is reported.

The answer lists what was repaired and what is left; the CLI prints and chooses the exit code.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from .catalog import Blob, Catalog, Node
from .errors import NotFound
from .jobs import JobRunner
from .store import layout
from .store.l1 import ChunkCache
from .store.l2 import DiskCache, hash_fd
from .store.l3 import ObjectStore, StoreError
from .store.thaw import Thawer

log = logging.getLogger(__name__)

FSCK_THREADS = 2  # hashing threads: enough to keep a disk busy, few enough not to starve reads
FSCK_HEADS = 8  # HEAD requests to L3 at once: each mostly waits on the network


@dataclass
class Finding:
    """One blob that was not fine: ``kind`` is repaired, corrupt, missing or unchecked."""

    kind: str
    sha: str
    reason: str
    versions: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "sha256": self.sha, "reason": self.reason, "versions": self.versions}


@dataclass
class Report:
    path: str
    versions: int = 0
    blobs: int = 0
    in_l2: int = 0
    only_l3: int = 0
    findings: list[Finding] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "versions": self.versions, "blobs": self.blobs, "in_l2": self.in_l2,
            "only_l3": self.only_l3,
            "repaired": [f.as_dict() for f in self.findings if f.kind == "repaired"],
            "problems": [f.as_dict() for f in self.findings if f.kind != "repaired"],
        }


def verify_blob(path: Path, blob: Blob) -> str | None:
    """Why the L2 file of a blob is wrong, or None when it matches (blocks: worker thread).

    Raises FileNotFoundError when L2 does not hold it.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size != blob.size:
            return f"it holds {size} bytes, not the recorded {blob.size}"
        info = hash_fd(fd, blob.chunk_size)
    finally:
        os.close(fd)
    for index, (got, want) in enumerate(zip(info.chunks, blob.chunks)):
        if got != want:
            return f"chunk {index} does not match its recorded SHA-256"
    if info.sha256 != blob.sha256:
        return "it does not match its recorded SHA-256"
    return None


class Fsck:
    """One run of the check over the versions under one path."""

    def __init__(
        self, catalog: Catalog, l1: ChunkCache, l2: DiskCache, thawer: Thawer, store: ObjectStore, runner: JobRunner
    ) -> None:
        self.catalog = catalog
        self.runner = runner
        self.l1 = l1
        self.l2 = l2
        self.thawer = thawer
        self.store = store
        self.limiter = trio.CapacityLimiter(FSCK_THREADS)
        self.heads = trio.CapacityLimiter(FSCK_HEADS)

    def versions_under(self, path: str) -> list[Node]:
        """Every version at or below a mount-relative path (a version's own path gives it)."""
        start = self.catalog.resolve(path)
        out: list[Node] = []
        todo = [start]
        while todo:
            node = todo.pop()
            if node.kind == "version":
                out.append(node)
            elif node.is_folder:
                todo.extend(self.catalog.children(node.ino))
        return out

    async def run(self, path: str) -> Report:
        try:
            nodes = self.versions_under(path)
        except NotFound:
            raise NotFound(f"/{path}: no such file or folder") from None
        users: dict[str, list[str]] = {}
        for node in nodes:
            assert node.sha256 is not None
            try:
                users.setdefault(node.sha256, []).append("/" + self.catalog.path_of(node.ino))
            except NotFound:  # removed since the walk
                continue
        report = Report("/" + path.strip("/"), versions=sum(len(v) for v in users.values()), blobs=len(users))
        async with trio.open_nursery() as nursery:
            for sha, paths in users.items():
                nursery.start_soon(self._check, sha, sorted(paths), report)
        report.findings.sort(key=lambda f: (f.kind, f.versions))
        left = sum(1 for f in report.findings if f.kind != "repaired")
        log.info(
            "fsck %s: %d versions, %d blobs (%d in L2, %d only in L3): %d repaired, %d problems left",
            report.path, report.versions, report.blobs, report.in_l2, report.only_l3,
            len(report.findings) - left, left,
        )
        return report

    async def _check(self, sha: str, paths: list[str], report: Report) -> None:
        try:
            blob = self.catalog.blob(sha)
        except NotFound:  # its versions were removed meanwhile
            return
        try:
            bad = await trio.to_thread.run_sync(verify_blob, self.l2.blob_path(sha), blob, limiter=self.limiter)
        except FileNotFoundError:
            await self._check_cold(blob, paths, report)
            return
        if bad is None:
            report.in_l2 += 1
            return
        reason = f"the L2 copy is corrupt: {bad}"
        in_l3, why_not = await self._in_l3(blob)
        if not in_l3:
            stopped = await self.runner.stop_uploads(sha, f"cached bytes of blob {sha[:12]} are corrupt (found by fsck); not uploading them")
            text = f"{reason}; no copy in L3 to repair it from ({why_not})" + ("; upload stopped" if stopped else "")
            log.error("fsck: blob %s: %s; used by %s", sha[:12], text, ", ".join(paths))
            report.findings.append(Finding("corrupt", sha, text, paths))
            return
        error = await self._refetch(blob)
        if error is not None:
            log.error("fsck: blob %s: %s, and fetching it again from L3 failed: %s", sha[:12], reason, error)
            report.findings.append(Finding("corrupt", sha, f"{reason}, and fetching it again from L3 failed: {error}", paths))
            return
        log.warning("fsck: blob %s: %s; fetched again from L3 (%s)", sha[:12], reason, ", ".join(paths))
        report.in_l2 += 1
        report.findings.append(Finding("repaired", sha, f"{reason}; fetched again from L3", paths))

    async def _check_cold(self, blob: Blob, paths: list[str], report: Report) -> None:
        """A blob L2 does not hold: L3 must."""
        if blob.sha256 in self.thawer.active:  # on its way from L3 right now
            report.only_l3 += 1
            return
        in_l3, why_not = await self._in_l3(blob)
        if in_l3:
            report.only_l3 += 1
        elif blob.durable and why_not.startswith("cannot reach L3"):
            log.warning("fsck: blob %s is only in L3, which could not be checked: %s", blob.sha256[:12], why_not)
            report.findings.append(Finding("unchecked", blob.sha256, f"it is only in L3, and {why_not}", paths))
        else:
            stopped = await self.runner.stop_uploads(blob.sha256, f"bytes of blob {blob.sha256[:12]} are missing from the cache (found by fsck)")
            text = f"it is in neither L2 nor L3 ({why_not})" + ("; upload stopped" if stopped else "")
            log.error("fsck: blob %s: %s; used by %s", blob.sha256[:12], text, ", ".join(paths))
            report.findings.append(Finding("missing", blob.sha256, text, paths))

    async def _in_l3(self, blob: Blob) -> tuple[bool, str]:
        """Whether L3 holds the blob with its recorded size; if not, why not (one phrase)."""
        try:
            size = await trio.to_thread.run_sync(self.store.head, layout.blob_key(blob.sha256), limiter=self.heads)
        except StoreError as e:
            return False, f"cannot reach L3: {e}"
        if size is None:
            return False, "never uploaded" if not blob.durable else "recorded as uploaded, but gone from L3"
        if size != blob.size:
            return False, f"L3 holds {size} bytes, not {blob.size}"
        return True, ""

    async def _refetch(self, blob: Blob) -> str | None:
        """Replace a corrupt L2 copy by a thaw from L3 (which verifies every byte); the error
        text if that failed. The bad copy waits aside meanwhile and comes back if the thaw
        fails, so the next fsck finds (and reports) it again instead of trusting L3's copy
        that just failed. Readers that still hold the bad file keep getting EIO; new ones
        wait for the thaw."""
        sha = blob.sha256
        aside = self.l2.thaw / f"{sha}.corrupt"
        self.l1.drop_blob(sha)
        await trio.to_thread.run_sync(os.replace, self.l2.blob_path(sha), aside, limiter=self.limiter)
        try:
            thaw = self.thawer.start(sha, blob.size, blob.chunk_size, blob.chunks)
        except OSError as e:  # the thaw file cannot even be made (a full cache disk)
            error: str | None = f"cannot start the thaw: {e.strerror}"
        else:
            await thaw.finished.wait()
            error = None if thaw.error is None else str(thaw.error)
        await trio.to_thread.run_sync(self._put_back, aside, sha, error is not None, limiter=self.limiter)
        return error

    def _put_back(self, aside: Path, sha: str, failed: bool) -> None:
        """After a repair: drop the bad copy, or put it back where it was if the repair failed
        and nothing else filled the place meanwhile (blocks: worker thread)."""
        target = self.l2.blob_path(sha)
        if failed and not target.exists():
            os.rename(aside, target)
        else:
            aside.unlink(missing_ok=True)

