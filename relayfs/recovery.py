"""Tidying a cache directory after a crash, before the mount serves again.

A ``kill -9`` (or a power cut) can stop the daemon between any two steps of a write. Every
version whose ``close()`` returned is already safe: its blob was fsync'ed into ``blobs/``
and its row and upload job were committed in one fsync'ed transaction, so the job journal
resumes its upload. What a crash can leave behind is everything that was not yet promised,
and ``recover`` decides about it at start, while no file is open:

* A work file that no draft or scratch node names: the private draft of a ``latest`` opened
  for writing (its writer's ``close()`` never returned), or the copy ``snapshot`` was
  sealing. Deleted: nobody can reach those bytes any more.
* A blob in ``blobs/`` that no catalog row knows: it was sealed, but the transaction that
  would have committed it never ran, so no ``close()`` returned for it. Deleted.
* A draft or scratch node whose work file is gone: its bytes had been sealed for a commit
  (a close, a rename onto ``latest``) that never happened. Removed, with a WARNING naming
  it; left alone it would read as an empty file that nobody wrote.
* A draft node whose work file is there: a file that was being created when the daemon
  died. It is not a version and never turns into one on its own: it stays a plain file with
  the bytes it had, listed in a WARNING, so no bytes are silently dropped. Writing it and
  closing it again commits it as usual; ``rm`` removes it. Scratch files stay as they were:
  they are local files by design.

Elsewhere: partial thaws are dropped at start (``DiskCache.clear_thaw``), and multipart
uploads the dead daemon left open in L3 are aborted by the upload job that tries again
(``JobRunner._abort_leftovers``), so a crash leaves no orphaned parts in the bucket.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from .catalog import Catalog
from .store.l2 import DiskCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovered:
    """What ``recover`` found and did, for the log and for tests."""

    drafts_kept: tuple[str, ...]
    nodes_dropped: tuple[str, ...]
    work_removed: int
    blobs_removed: int


def _listing(paths: tuple[str, ...], most: int = 20) -> str:
    shown = ", ".join(paths[:most])
    return shown if len(paths) <= most else f"{shown} and {len(paths) - most} more"


def _sweep(l2: DiskCache, keep_work: set[str], keep_blobs: set[str]) -> tuple[set[str], int, int]:
    """Blocking part: delete unnamed work files and unknown blobs; return the work files there."""
    present = l2.work_names()
    stale_work = present - keep_work
    for name in stale_work:
        l2.remove_work(name)
    stale_blobs = l2.blob_names() - keep_blobs
    for sha in stale_blobs:
        l2.remove_blob(sha)
    return present, len(stale_work), len(stale_blobs)


async def recover(catalog: Catalog, l2: DiskCache) -> Recovered:
    """Bring L2 and the catalog back in line after an unclean stop; see the module docstring."""
    local = catalog.local_files()
    named = {n.work for n in local if n.work}
    present, work_removed, blobs_removed = await trio.to_thread.run_sync(_sweep, l2, named, catalog.blob_shas())
    lost = [n for n in local if not n.work or n.work not in present]
    lost_paths = tuple("/" + catalog.path_of(n.ino) for n in lost)
    await catalog.drop_local([n.ino for n in lost])
    kept = tuple("/" + catalog.path_of(n.ino) for n in local if n.kind == "draft" and n not in lost)
    if lost_paths:
        log.warning(
            "%d files were being committed when the daemon stopped and never became a version;"
            " removed: %s", len(lost_paths), _listing(lost_paths),
        )
    if kept:
        log.warning(
            "%d new files hold bytes that were never committed (the daemon stopped while they were"
            " written); they stay plain files, not versions, until written and closed again: %s",
            len(kept), _listing(kept),
        )
    if work_removed or blobs_removed:
        log.info(
            "after an unclean stop: removed %d unnamed work files and %d uncommitted blobs from the cache",
            work_removed, blobs_removed,
        )
    return Recovered(kept, lost_paths, work_removed, blobs_removed)
