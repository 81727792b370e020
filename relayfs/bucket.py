"""Reading RelayFS's namespace back from L3 (see ``store/layout.py`` for the layout).

A fresh machine with an empty cache calls ``rebuild``: it lists ``ns/`` and ``records/``,
fetches every event and live record with bounded parallel GETs, skips anything it did not
write or that would escape the mount (with a log line), and loads the result into the
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


async def _fetch_all(store: ObjectStore, keys: list[str]) -> dict[str, bytes]:
    limiter = trio.CapacityLimiter(PARALLEL_GETS)
    out: dict[str, bytes] = {}

    async def one(key: str) -> None:
        try:
            out[key] = await trio.to_thread.run_sync(store.get_bytes, key, limiter=limiter)
        except ObjectMissing:
            log.warning("skipping %s: it vanished while being read", key)

    async with trio.open_nursery() as n:
        for key in keys:
            n.start_soon(one, key)
    return out


async def rebuild(catalog: Catalog, store: ObjectStore) -> dict[str, int]:
    """Fill an empty catalog from the bucket alone."""
    ns_keys = await trio.to_thread.run_sync(lambda: list(store.list("ns/")))
    rec_keys = await trio.to_thread.run_sync(lambda: list(store.list("records/")))
    good_ns = []
    for key in ns_keys:
        if layout.is_ns_key(key):
            good_ns.append(key)
        else:
            log.warning("skipping foreign key %s", key)
    used: dict[str, int] = {}
    live: dict[tuple[str, int], str] = {}
    dead: set[tuple[str, int]] = set()
    for key in rec_keys:
        try:
            fid, num, tomb = layout.parse_record_key(key)
        except layout.BadRecord as e:
            log.warning("skipping %s", e)
            continue
        used[fid] = max(used.get(fid, 0), num)
        (dead.add((fid, num)) if tomb else live.__setitem__((fid, num), key))
    wanted = [k for fn, k in live.items() if fn not in dead]
    bodies = await _fetch_all(store, good_ns + wanted)
    events: list[tuple[str, layout.NsEvent]] = []
    for key in good_ns:
        if key not in bodies:
            continue
        try:
            events.append((key, layout.NsEvent.from_json(bodies[key])))
        except layout.BadRecord as e:
            log.warning("skipping namespace event %s: %s", key, e)
    records: dict[str, list[layout.VersionRecord]] = {}
    for (fid, num), key in sorted(live.items()):
        if (fid, num) in dead or key not in bodies:
            continue
        try:
            rec = layout.VersionRecord.from_json(bodies[key])
        except layout.BadRecord as e:
            log.warning("skipping version record %s: %s", key, e)
            continue
        if (rec.file_id, rec.num) != (fid, num):
            log.warning("skipping version record %s: it names another version", key)
            continue
        records.setdefault(fid, []).append(rec)
    counts = await catalog.load_snapshot(events, records, used)
    log.info(
        "rebuilt catalog from L3: %d folders, %d files, %d versions (%d events skipped)",
        counts["folders"], counts["files"], counts["versions"], counts["skipped_events"],
    )
    return counts
