"""Reading RelayFS's namespace back from L3 (see ``store/layout.py`` for the layout).

A fresh machine with an empty cache calls ``rebuild``: it lists the bucket, fetches every
event and live record with bounded parallel GETs, skips anything it did not write or that
would escape the mount (with a WARNING naming the key), and loads the result into the
catalog in one transaction.
"""

from __future__ import annotations

import logging

import trio

from .catalog import Catalog
from .store import layout
from .store.l3 import ObjectMissing, ObjectStore

log = logging.getLogger(__name__)

PARALLEL_GETS = 16


async def fetch_all(store: ObjectStore, keys: list[str]) -> dict[str, bytes]:
    limiter = trio.CapacityLimiter(PARALLEL_GETS)
    out: dict[str, bytes] = {}

    async def one(key: str) -> None:
        try:
            out[key] = await trio.to_thread.run_sync(store.get_bytes, key, limiter=limiter)
        except ObjectMissing:
            log.warning("skipping %r: it vanished while being read", key)

    async with trio.open_nursery() as n:
        for key in keys:
            n.start_soon(one, key)
    return out


def feed_events(
    keys: list[str], bodies: dict[str, bytes], skip: set[str] | None = None, own: str = ""
) -> list[tuple[str, layout.NsEvent]]:
    """The events of the feed objects ``keys``, in feed order, each once: an event put again
    (a retry after a lost answer, maybe in another batch) keeps its first copy. ``skip``:
    identities applied before; ``own``: our origin, whose events are already ours."""
    out: list[tuple[str, layout.NsEvent]] = []
    taken = set(skip or ())
    for key in sorted(keys):
        if key not in bodies:
            continue
        try:
            items = layout.ns_events(key, bodies[key])
        except layout.BadRecord as e:
            log.warning("skipping namespace event %r: %s", key, e)
            continue
        for label, ev in items:
            ident = layout.event_identity(label)
            if ident in taken or (own and ident.startswith(own + "-")):
                continue
            taken.add(ident)
            out.append((label, ev))
    return out


async def rebuild(catalog: Catalog, store: ObjectStore) -> dict[str, int]:
    """Fill an empty catalog from the bucket alone.

    One listing of the whole bucket sorts every key into events, version records and blobs;
    anything else is foreign and skipped with a WARNING. Keys and names from the bucket are
    logged with ``%r``, so a hostile key cannot forge or garble log lines.
    """
    keys = await trio.to_thread.run_sync(lambda: list(store.list("")))
    good_ns: list[str] = []
    blobs: set[str] = set()
    used: dict[str, int] = {}
    live: dict[tuple[str, int], str] = {}
    dead: set[tuple[str, int]] = set()
    for key in keys:
        if key.startswith("ns/") and layout.is_ns_key(key):
            good_ns.append(key)
        elif key.startswith("blobs/") and layout.is_blob_key(key):
            blobs.add(key.rsplit("/", 1)[1])
        elif key.startswith("records/"):
            try:
                fid, num, tomb = layout.parse_record_key(key)
            except layout.BadRecord:
                log.warning("skipping foreign key %r: not a version record key", key)
                continue
            used[fid] = max(used.get(fid, 0), num)
            (dead.add((fid, num)) if tomb else live.__setitem__((fid, num), key))
        else:
            log.warning("skipping foreign key %r: RelayFS did not write it", key)
    wanted = [k for fn, k in live.items() if fn not in dead]
    bodies = await fetch_all(store, good_ns + wanted)
    events = feed_events(good_ns, bodies)
    records: dict[str, list[layout.VersionRecord]] = {}
    for (fid, num), key in sorted(live.items()):
        if (fid, num) in dead or key not in bodies:
            continue
        try:
            rec = layout.VersionRecord.from_json(bodies[key])
        except layout.BadRecord as e:
            log.warning("skipping version record %r: %s", key, e)
            continue
        if (rec.file_id, rec.num) != (fid, num):
            log.warning("skipping version record %r: it names another version", key)
            continue
        if rec.sha256 not in blobs:
            log.warning("skipping version record %r: its blob %s is missing from the bucket", key, rec.sha256[:12])
            continue
        records.setdefault(fid, []).append(rec)
    counts = await catalog.load_snapshot(events, records, used, seen=good_ns)
    log.info(
        "rebuilt catalog from L3: %d folders, %d files, %d versions (%d events skipped)",
        counts["folders"], counts["files"], counts["versions"], counts["skipped_events"],
    )
    return counts
