"""Picking up what other clients (another mount, an SDK script) wrote to the same bucket.

``refresh`` lists ``ns/`` and ``records/``, fetches only the events this catalog has not
applied and the version records it does not hold, and merges them in one catalog
transaction (``Catalog.merge_remote``). Our own events are recognised by the origin in
their key and never fetched. Both listings cover the whole prefix, so a refresh costs one
LIST page per 1000 keys; the GETs grow only with what changed.
"""

from __future__ import annotations

import logging

import trio

from .bucket import fetch_all
from .catalog import Catalog
from .store import layout
from .store.l3 import ObjectStore

log = logging.getLogger(__name__)


async def refresh(
    catalog: Catalog, store: ObjectStore, bad: set[str]
) -> tuple[dict[str, int], list[tuple[int, str]]]:
    """Merge other clients' changes; returns counts and the entries the kernel must forget.

    ``bad`` holds record keys found unusable before (kept by the caller), so each is
    fetched and warned about once, not at every poll; bad events are marked seen."""
    ns_keys = await trio.to_thread.run_sync(lambda: list(store.list("ns/")))
    rec_keys = await trio.to_thread.run_sync(lambda: list(store.list("records/")))
    seen = catalog.seen_events()
    own = f"-{catalog.origin}-"
    new_ns = sorted(k for k in ns_keys if k not in seen and own not in k and layout.is_ns_key(k))
    live: set[tuple[str, int]] = set()
    tombstones: set[tuple[str, int]] = set()
    used: dict[str, int] = {}
    for key in rec_keys:
        try:
            fid, num, tomb = layout.parse_record_key(key)
        except layout.BadRecord:
            continue  # foreign keys were reported when the catalog was built
        used[fid] = max(used.get(fid, 0), num)
        (tombstones if tomb else live).add((fid, num))
    bodies = await fetch_all(store, new_ns)
    events: list[tuple[str, layout.NsEvent]] = []
    for key in new_ns:
        if key in bodies:
            try:
                events.append((key, layout.NsEvent.from_json(bodies[key])))
            except layout.BadRecord as e:
                log.warning("skipping namespace event %r: %s", key, e)
    fids = catalog.file_ids() | {ev.file_id for _, ev in events if ev.op == "mkfile"}
    known = catalog.known_versions()
    wanted = sorted(
        key for key in (layout.record_key(fid, num) for fid, num in live - tombstones
                        if fid in fids and num not in known.get(fid, set()))
        if key not in bad
    )
    records: list[layout.VersionRecord] = []
    bodies = await fetch_all(store, wanted)
    for key in wanted:
        if key not in bodies:
            continue
        try:
            rec = layout.VersionRecord.from_json(bodies[key])
        except layout.BadRecord as e:
            log.warning("skipping version record %r: %s", key, e)
            bad.add(key)
            continue
        if layout.record_key(rec.file_id, rec.num) != key:
            log.warning("skipping version record %r: it names another version", key)
            bad.add(key)
            continue
        records.append(rec)
    counts, gone = await catalog.merge_remote(events, records, tombstones, used, seen=new_ns)
    if counts["events"] or counts["versions"] or counts["removed"]:
        log.info(
            "picked up changes from other clients: %d namespace events, %d new versions, %d versions removed",
            counts["events"], counts["versions"], counts["removed"],
        )
    return counts, gone
