"""Picking up what other clients (another mount, an SDK script) wrote to the same bucket.

``ns/`` is the change feed: namespace events, and a "version" or "drop" event for each
record or tombstone once it has landed. A ``Poller`` lists only the feed's keys stamped
after its previous poll began, less ``LOOKBACK_MS`` (another machine's clock may lag ours,
and an event is stamped just before its PUT), so once caught up a poll costs one LIST
request per 1000 events of the last few minutes, plus a GET per new event and per new
version record: it grows with the changes, not with the bucket. Events it applied or skipped are remembered by identity
(``origin-seq``), so the overlap is never applied twice, and our own are never fetched.

A full poll (the first one after a start, which may follow days offline) also lists all of
``records/``, so versions written by clients that predate the feed are found too.
Everything found is merged in one catalog transaction (``Catalog.merge_remote``).
"""

from __future__ import annotations

import logging
import time

import trio

from .bucket import feed_events, fetch_all
from .catalog import Catalog
from .store import layout
from .store.l3 import ObjectStore

log = logging.getLogger(__name__)

LOOKBACK_MS = 5 * 60 * 1000


class Poller:
    """The state of polling one bucket: the feed position and what proved unusable.

    Touched only by ``Engine.refresh``, which runs one poll at a time."""

    def __init__(self, catalog: Catalog, store: ObjectStore) -> None:
        self.catalog = catalog
        self.store = store
        self.last_ms = 0  # our clock when the last poll that worked began
        self.polls = 0
        self.bad: set[str] = set()  # record keys found unusable: fetched and warned about once
        self.requests = 0  # L3 requests made by polls so far (LIST pages and GETs)

    async def poll(self, *, full: bool) -> tuple[dict[str, int], list[tuple[int, str]]]:
        """Merge other clients' changes; returns counts and the entries the kernel must forget."""
        began = int(time.time() * 1000)
        start = "" if full or not self.last_ms else layout.ns_after(self.last_ms - LOOKBACK_MS)
        ns_keys = await self._list("ns/", start)
        own = self.catalog.origin
        candidates = [k for k in ns_keys if layout.is_ns_key(k) and not layout.ns_identity(k).startswith(own + "-")]
        fetched = self.catalog.seen_of(candidates)
        new_ns = [k for k in candidates if k not in fetched]
        bodies = await self._fetch(new_ns)
        events = feed_events(new_ns, bodies, own=own)
        applied = self.catalog.seen_of([layout.event_identity(label) for label, _ in events])
        events = [(label, ev) for label, ev in events if layout.event_identity(label) not in applied]
        live: set[tuple[str, int]] = {(ev.file_id, ev.num) for _, ev in events if ev.op == "version"}
        tombstones: set[tuple[str, int]] = {(ev.file_id, ev.num) for _, ev in events if ev.op == "drop"}
        if full:
            for key in await self._list("records/", ""):
                try:
                    fid, num, tomb = layout.parse_record_key(key)
                except layout.BadRecord:
                    continue  # foreign keys were reported when the catalog was built
                (tombstones if tomb else live).add((fid, num))
        used: dict[str, int] = {}
        for fid, num in live | tombstones:
            used[fid] = max(used.get(fid, 0), num)
        new_fids = {ev.file_id for _, ev in events if ev.op == "mkfile"}
        wanted = sorted(
            key for key in (layout.record_key(fid, num) for fid, num in self.catalog.versions_to_fetch(live - tombstones, new_fids))
            if key not in self.bad
        )
        records: list[layout.VersionRecord] = []
        bodies = await self._fetch(wanted)
        for key in wanted:
            if key not in bodies:
                continue
            try:
                rec = layout.VersionRecord.from_json(bodies[key])
            except layout.BadRecord as e:
                log.warning("skipping version record %r: %s", key, e)
                self.bad.add(key)
                continue
            if layout.record_key(rec.file_id, rec.num) != key:
                log.warning("skipping version record %r: it names another version", key)
                self.bad.add(key)
                continue
            records.append(rec)
        counts, changed = await self.catalog.merge_remote(events, records, tombstones, used, seen=new_ns)
        self.polls += 1
        self.last_ms = began
        if counts["events"] or counts["versions"] or counts["removed"]:
            log.info(
                "picked up changes from other clients: %d namespace events, %d new versions, %d versions removed",
                counts["events"], counts["versions"], counts["removed"],
            )
        return counts, changed

    async def _list(self, prefix: str, start_after: str) -> list[str]:
        keys = await trio.to_thread.run_sync(lambda: list(self.store.list(prefix, start_after)))
        self.requests += len(keys) // 1000 + 1
        return keys

    async def _fetch(self, keys: list[str]) -> dict[str, bytes]:
        self.requests += len(keys)
        return await fetch_all(self.store, keys)
