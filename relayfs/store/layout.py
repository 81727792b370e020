"""How RelayFS names things in L3, and the checks that refuse hostile keys.

Bucket layout (all keys below the configured prefix)::

    blobs/<sha[:2]>/<sha256>                  file contents, content-addressed: stored once
    records/<file_id>/v<NNNNNNNNNN>.json      one small record per version, put-if-absent
    records/<file_id>/v<NNNNNNNNNN>.deleted   tombstone: version removed, number stays used
    ns/<ms>-<origin>-<seq>.json               the change feed: namespace events (mkdir,
                                              mkfile, rename, ...) and, once its record
                                              landed, each version ("version") and each
                                              tombstone ("drop")

No object is ever rewritten: every commit adds a record (and a blob unless the bytes are
already there), every namespace change adds an event. A fresh machine rebuilds its catalog by
replaying ``ns/`` in key order and reading ``records/``. An event's ``<ms>`` is the writer's
clock when it was put (not when it was queued), and one writer puts its events one at a
time, in ``<seq>`` order; so another machine polls by listing only the keys after the last
time it saw, less a look-back for clock skew, and recognises an event put twice (a retry
whose first answer was lost) by its ``<origin>-<seq>``, which never changes.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidName, NameTooLong

NAME_MAX = 255
CHUNK_SIZE = 1024 * 1024  # granularity of chunk hashes, thaw ranges and L1 entries

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_VERSION_RE = re.compile(r"^v([0-9]+)$")
_RECORD_RE = re.compile(r"^records/([0-9a-f]{32})/v([0-9]{10})\.(json|deleted)$")
_NS_RE = re.compile(r"^ns/[0-9]{13}-[0-9a-f]{8}-[0-9]{8}\.json$")
_BLOB_RE = re.compile(r"^blobs/([0-9a-f]{2})/([0-9a-f]{64})$")
MTIME_NS_MAX = 2**63 - 1  # what SQLite's INTEGER (and st_mtime) can hold
VERSION_MAX = 9_999_999_999  # ten digits in a record key
CHUNK_SIZE_MIN = 4096
CHUNK_SIZE_MAX = 64 * 1024 * 1024  # a hostile record cannot make a reader allocate more per chunk

NS_OPS = frozenset({"mkdir", "rmdir", "mkfile", "unlink", "rename", "version", "drop"})
VERSION_OPS = frozenset({"version", "drop"})  # name a record or tombstone that has landed


class BadRecord(ValueError):
    """Bucket content RelayFS did not write, or that would escape the mount: skipped."""


def blob_key(sha: str) -> str:
    return f"blobs/{sha[:2]}/{sha}"


def record_key(file_id: str, num: int) -> str:
    return f"records/{file_id}/v{num:010d}.json"


def tombstone_key(file_id: str, num: int) -> str:
    return f"records/{file_id}/v{num:010d}.deleted"


def ns_key(origin: str, seq: int, now: float | None = None) -> str:
    ms = int((time.time() if now is None else now) * 1000)
    return f"ns/{ms:013d}-{origin}-{seq:08d}.json"


def ns_restamp(key: str, ms: int) -> str:
    """The same event (origin and seq) stamped with another time."""
    return f"ns/{ms:013d}{key[16:]}"


def ns_ms(key: str) -> int:
    return int(key[3:16])


def ns_identity(key: str) -> str:
    """``<origin>-<seq>``: what stays the same when an event is put again later."""
    return key[17:-5]


def ns_after(ms: int) -> str:
    """A key that sorts before every event stamped at ``ms`` or later (for StartAfter)."""
    return f"ns/{max(0, ms):013d}"


def parse_record_key(key: str) -> tuple[str, int, bool]:
    """(file_id, version number, is_tombstone) of a records/ key; BadRecord otherwise."""
    m = _RECORD_RE.match(key)
    if not m:
        raise BadRecord(f"not a version record key: {key!r}")
    return m.group(1), int(m.group(2)), m.group(3) == "deleted"


def is_ns_key(key: str) -> bool:
    return bool(_NS_RE.match(key))


def is_blob_key(key: str) -> bool:
    """``blobs/<sha[:2]>/<sha>`` exactly, with the folder matching the name."""
    m = _BLOB_RE.match(key)
    return m is not None and m.group(2).startswith(m.group(1))


def _field(d: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    """One JSON field of exactly the expected type: bucket content is never coerced, so a
    number or a list cannot turn into a name, nor a string into a version number."""
    if name not in d:
        if default is None:
            raise BadRecord(f"missing field {name!r}")
        return default
    value = d[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise BadRecord(f"field {name!r} is not an integer")
    if kind is str and not isinstance(value, str):
        raise BadRecord(f"field {name!r} is not a string")
    return value


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        d = json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise BadRecord(f"unreadable {what}: {e}") from None
    if not isinstance(d, dict):
        raise BadRecord(f"unreadable {what}: not a JSON object")
    return d


def version_number(name: str) -> int | None:
    """The K of a ``vK`` name, or None."""
    m = _VERSION_RE.match(name)
    return int(m.group(1)) if m else None


def check_name(raw: bytes) -> str:
    """A directory entry name as RelayFS stores it; raises for names it cannot store."""
    if len(raw) > NAME_MAX:
        raise NameTooLong(f"name longer than {NAME_MAX} bytes")
    if raw in (b"", b".", b"..") or b"/" in raw or b"\0" in raw:
        raise InvalidName(f"invalid name {raw!r}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidName(f"name is not UTF-8: {raw!r}") from None


def check_path(path: str) -> list[str]:
    """Split a mount-relative path from the bucket; refuse anything that could escape."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise BadRecord(f"unsafe path {path!r}")
    parts = path.split("/")
    for part in parts:
        try:
            check_name(part.encode("utf-8"))
        except (InvalidName, NameTooLong, UnicodeEncodeError) as e:
            raise BadRecord(f"unsafe path {path!r}: {e}") from None
    return parts


@dataclass(frozen=True)
class VersionRecord:
    """What L3 keeps about one version: enough to rebuild it and to verify its bytes."""

    file_id: str
    num: int
    sha256: str
    size: int
    mtime_ns: int
    chunk_size: int
    chunks: tuple[str, ...]
    origin: str = ""

    def to_json(self) -> bytes:
        body = {
            "format": 1,
            "file_id": self.file_id,
            "num": self.num,
            "sha256": self.sha256,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "chunk_size": self.chunk_size,
            "chunks": list(self.chunks),
            "origin": self.origin,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "VersionRecord":
        d = _json_object(data, "version record")
        chunks = d.get("chunks")
        if not isinstance(chunks, list) or not all(isinstance(c, str) for c in chunks):
            raise BadRecord("field 'chunks' is not a list of strings")
        rec = cls(
            file_id=_field(d, "file_id", str),
            num=_field(d, "num", int),
            sha256=_field(d, "sha256", str),
            size=_field(d, "size", int),
            mtime_ns=_field(d, "mtime_ns", int),
            chunk_size=_field(d, "chunk_size", int),
            chunks=tuple(chunks),
            origin=_field(d, "origin", str, ""),
        )
        if not CHUNK_SIZE_MIN <= rec.chunk_size <= CHUNK_SIZE_MAX:
            raise BadRecord(f"inconsistent version record: chunk size {rec.chunk_size}")
        n_chunks = max(1, -(-rec.size // rec.chunk_size))
        if (
            not _ID_RE.match(rec.file_id)
            or not _SHA_RE.match(rec.sha256)
            or not 1 <= rec.num < 10**10
            or rec.size < 0
            or not 0 <= rec.mtime_ns <= MTIME_NS_MAX
            or n_chunks != len(rec.chunks)
            or not all(_SHA_RE.match(c) for c in rec.chunks)
        ):
            raise BadRecord("inconsistent version record")
        return rec


@dataclass(frozen=True)
class NsEvent:
    """One namespace change. Paths are relative to the mount root, '/'-separated."""

    op: str
    path: str
    to: str = ""
    file_id: str = ""
    mtime_ns: int = 0
    num: int = 0  # "version" and "drop": the version number
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"format": 1, "op": self.op, "path": self.path, "mtime_ns": self.mtime_ns}
        if self.to:
            body["to"] = self.to
        if self.file_id:
            body["file_id"] = self.file_id
        if self.num:
            body["num"] = self.num
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "NsEvent":
        return cls.from_dict(_json_object(data, "namespace event"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NsEvent":
        ev = cls(
            op=_field(d, "op", str),
            path=_field(d, "path", str),
            to=_field(d, "to", str, ""),
            file_id=_field(d, "file_id", str, ""),
            mtime_ns=_field(d, "mtime_ns", int, 0),
            num=_field(d, "num", int, 0),
        )
        if ev.op not in NS_OPS:
            raise BadRecord(f"unknown namespace op {ev.op!r}")
        if not 0 <= ev.mtime_ns <= MTIME_NS_MAX:
            raise BadRecord(f"mtime_ns {ev.mtime_ns} is out of range")
        check_path(ev.path)
        if ev.op == "rename":
            check_path(ev.to)
        if ev.op in ("mkfile", *VERSION_OPS) and not _ID_RE.match(ev.file_id):
            raise BadRecord(f"{ev.op} event without a valid file id")
        if ev.op in VERSION_OPS and not 1 <= ev.num <= VERSION_MAX:
            raise BadRecord(f"{ev.op} event with version number {ev.num}")
        return ev


NS_BATCH_MAX = 200  # events one feed object may hold


def ns_batch(events: list[tuple[int, bytes]]) -> bytes:
    """One feed object for several events of one writer, given as (seq, single-event JSON):
    a bulk change (``cp -r`` of many files) costs one PUT per batch, not one per event."""
    items = [{"seq": seq, **json.loads(body)} for seq, body in events]
    return json.dumps({"format": 2, "events": items}, separators=(",", ":")).encode()


def ns_events(key: str, data: bytes) -> list[tuple[str, NsEvent]]:
    """The events a feed object holds, in order, each labelled with its key (``key#seq``
    for the events of a batch; ``event_identity`` turns a label into the event's identity)."""
    d = _json_object(data, "namespace event")
    if d.get("format") != 2:
        return [(key, NsEvent.from_dict(d))]
    items = d.get("events")
    if not isinstance(items, list) or not 1 <= len(items) <= NS_BATCH_MAX:
        raise BadRecord(f"a batch holds 1 to {NS_BATCH_MAX} events")
    out: list[tuple[str, NsEvent]] = []
    last = int(key[-13:-5]) - 1
    for item in items:
        if not isinstance(item, dict):
            raise BadRecord("a batched event is not an object")
        seq = _field(item, "seq", int)
        if not last < seq <= 99_999_999:
            raise BadRecord(f"batched event seq {seq} is out of order")
        last = seq
        out.append((f"{key}#{seq:08d}", NsEvent.from_dict(item)))
    return out


def event_identity(label: str) -> str:
    """``<origin>-<seq>`` of an event labelled by ``ns_events``."""
    key, _, seq = label.partition("#")
    ident = ns_identity(key)
    return ident if not seq else f"{ident[:8]}-{seq}"


def is_sha(value: str) -> bool:
    return bool(_SHA_RE.match(value))
