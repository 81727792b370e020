"""The namespace and version catalog: folders, versioned files, versions, drafts, scratch
files and the job journal, persisted in SQLite under L2 (``catalog.db``).

Node kinds::

    dir      an ordinary folder (the root is ino 1)
    vfile    a versioned file, shown as a folder holding v1, v2, ... and ``latest``
    version  one immutable version of a vfile (``vK``); its bytes are the blob ``sha256``
    draft    a regular file being written that becomes a version when it is closed: a new
             file in a folder, or ``NAME/NAME`` inside a vfile (``cp x NAME/``)
    scratch  any other file inside a vfile: local only, never uploaded

``latest`` has no row: it is ``LATEST_BASE + vfile ino`` and reads as the newest version.

Locking rule: every change happens inside one write transaction (``_write``), a function
of the writer connection that checks its preconditions and changes the rows in one go; the
transactions run one at a time in a worker thread (a limiter of one), and each commit is
fsync'ed (WAL, ``synchronous=FULL``) before the awaiting handler continues, except the few
``_write_light`` ones whose loss in a power cut is harmless. Reads use a
second connection on the trio loop and always see the last committed state. Nothing outside
this module touches the database; callers get plain ``Node`` and ``Job`` values.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Iterator, TypeVar

import trio

from .errors import (
    AlreadyExists,
    InvalidName,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    NoSpace,
    NotPermitted,
    ReadOnly,
)
from .store import layout
from .store.l2 import BlobInfo

log = logging.getLogger(__name__)

ROOT_INO = 1
LATEST_BASE = 1 << 40
JOBS_DIR_INO = 1 << 41  # job files are JOBS_DIR_INO + job id
RESERVED_ROOT = ".jobs"
CATALOG_ROOM = 4 * 1024 * 1024  # asked of a full disk before a write transaction is retried

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    ino      INTEGER PRIMARY KEY AUTOINCREMENT,
    parent   INTEGER NOT NULL,
    name     TEXT NOT NULL,
    kind     TEXT NOT NULL,
    file_id  TEXT,
    num      INTEGER,
    next_num INTEGER,
    sha256   TEXT,
    size     INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER NOT NULL,
    mode     INTEGER NOT NULL,
    work     TEXT,
    job_id   INTEGER,
    UNIQUE (parent, name)
);
CREATE INDEX IF NOT EXISTS nodes_sha ON nodes (sha256);
CREATE INDEX IF NOT EXISTS nodes_file ON nodes (file_id);
CREATE TABLE IF NOT EXISTS blobs (
    sha256     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    chunks     TEXT NOT NULL,
    durable    INTEGER NOT NULL DEFAULT 0,
    atime      REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    path        TEXT NOT NULL,
    file_id     TEXT,
    num         INTEGER,
    sha256      TEXT,
    key         TEXT,
    body        BLOB,
    state       TEXT NOT NULL,
    bytes_total INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT NOT NULL DEFAULT '',
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    not_before  REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_file ON jobs (file_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen_events (key TEXT PRIMARY KEY);
"""

DIR_MODE = 0o040755
VFILE_MODE = 0o040755
VERSION_MODE = 0o100444
FILE_MODE = 0o100644


@dataclass(frozen=True)
class Node:
    """One catalog row as a plain value."""

    ino: int
    parent: int
    name: str
    kind: str
    file_id: str | None
    num: int | None
    next_num: int | None
    sha256: str | None
    size: int
    mtime_ns: int
    mode: int
    work: str | None
    job_id: int | None

    @property
    def is_folder(self) -> bool:
        return self.kind in ("dir", "vfile")


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    path: str
    file_id: str | None
    num: int | None
    sha256: str | None
    key: str | None
    body: bytes | None
    state: str
    bytes_total: int
    attempts: int
    last_error: str
    created: float
    updated: float
    not_before: float
    note: str = ""  # what happened to it that its user should know (a renumbering)


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int
    chunk_size: int
    chunks: tuple[str, ...]
    durable: bool


UNFINISHED = ("queued", "running", "retrying")
VERSION_STATE = {"queued": "pending", "running": "uploading", "retrying": "uploading", "failed": "pending"}


def _node(row: sqlite3.Row | None) -> Node:
    if row is None:
        raise NotFound("no such entry")
    return Node(**dict(row))


def _job(row: sqlite3.Row) -> Job:
    return Job(**dict(row))


def _connect(path: Path) -> sqlite3.Connection:
    c = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
    c.row_factory = sqlite3.Row
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=FULL")
    return c


def _now_ns() -> int:
    return time.time_ns()


class Catalog:
    """The namespace, versions and job journal of one cache directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._w = _connect(path)
        self._w.executescript(_SCHEMA)
        self._migrate()
        self._r = _connect(path)
        self._wlimit = trio.CapacityLimiter(1)
        with_root = self._w.execute("SELECT 1 FROM nodes WHERE ino = ?", (ROOT_INO,)).fetchone()
        if not with_root:
            self._w.execute(
                "INSERT INTO nodes (ino, parent, name, kind, mtime_ns, mode) VALUES (?, 0, '', 'dir', ?, ?)",
                (ROOT_INO, _now_ns(), DIR_MODE),
            )
        if self.meta("origin") is None:
            self._set_meta(self._w, "origin", uuid.uuid4().hex[:8])
        self.origin: str = self.meta("origin") or ""
        self.changed = trio.Event()  # replaced after each set: jobs were added or changed
        self.make_room: Callable[[int], Awaitable[int]] | None = None  # see _write

    def close(self) -> None:
        self._r.close()
        self._w.close()

    def _migrate(self) -> None:
        """Bring a catalog made by an older RelayFS up to date (each step is idempotent)."""
        c = self._w
        if "note" not in {r[1] for r in c.execute("PRAGMA table_info(jobs)")}:
            c.execute("ALTER TABLE jobs ADD COLUMN note TEXT NOT NULL DEFAULT ''")
        # seen events were once recorded by key only; now also by identity (origin-seq),
        # which stays the same when an event is put again with a later stamp
        c.execute("INSERT OR IGNORE INTO seen_events (key) SELECT substr(key, 18, length(key) - 22)"
                  " FROM seen_events WHERE key LIKE 'ns/%'")

    # -- plumbing ----------------------------------------------------------------------
    def _run_txn(self, fn: Callable[..., T], args: tuple[Any, ...], sync: bool = True) -> T:
        """One transaction; nothing of it stays when it fails, also when COMMIT itself fails
        (a full disk fails the WAL append at COMMIT: that is ``NoSpace``)."""
        c = self._w
        if not sync:
            c.execute("PRAGMA synchronous=NORMAL")
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                result = fn(c, *args)
                c.execute("COMMIT")
            except BaseException as e:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                if isinstance(e, sqlite3.OperationalError) and getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                    raise NoSpace(f"the catalog cannot grow: {e}") from None
                raise
        finally:
            if not sync:
                c.execute("PRAGMA synchronous=FULL")
        return result

    async def _write_light(self, fn: Callable[..., T], *args: Any) -> T:
        """A transaction whose loss in a power cut costs nothing: not fsync'ed by itself (it
        still survives a crash of the daemon), and made durable by the next ``_write``.
        For job states (a job found unfinished runs again; every job is idempotent), blob
        bookkeeping, and drafts (they matter only once committed)."""
        try:
            return await trio.to_thread.run_sync(self._run_txn, fn, args, False, limiter=self._wlimit)
        except NoSpace:
            if self.make_room is None:
                raise
        await self.make_room(CATALOG_ROOM)
        return await trio.to_thread.run_sync(self._run_txn, fn, args, False, limiter=self._wlimit)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one write transaction in the writer thread; see the module's locking rule.

        On a full disk, ask ``make_room`` (set by the daemon: evict blobs durable in L3) and
        run the transaction once more; ``fn`` checks its own preconditions, so that is safe.
        """
        try:
            return await trio.to_thread.run_sync(self._run_txn, fn, args, limiter=self._wlimit)
        except NoSpace:
            if self.make_room is None:
                raise
        await self.make_room(CATALOG_ROOM)
        return await trio.to_thread.run_sync(self._run_txn, fn, args, limiter=self._wlimit)

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    @staticmethod
    def _set_meta(c: sqlite3.Connection, key: str, value: str) -> None:
        c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def meta(self, key: str) -> str | None:
        row = self._w.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # -- reads (trio loop) -------------------------------------------------------------
    def get(self, ino: int) -> Node:
        return _node(self._r.execute("SELECT * FROM nodes WHERE ino = ?", (ino,)).fetchone())

    def lookup(self, parent: int, name: str) -> Node:
        row = self._r.execute("SELECT * FROM nodes WHERE parent = ? AND name = ?", (parent, name)).fetchone()
        return _node(row)

    def children(self, parent: int, after_ino: int = 0) -> list[Node]:
        rows = self._r.execute(
            "SELECT * FROM nodes WHERE parent = ? AND ino > ? AND ino != ? ORDER BY ino",
            (parent, after_ino, ROOT_INO),
        ).fetchall()
        return [_node(r) for r in rows]

    def head(self, vfile_ino: int) -> Node | None:
        """The newest version of a vfile (what ``latest`` reads as), or None."""
        row = self._r.execute(
            "SELECT * FROM nodes WHERE parent = ? AND kind = 'version' ORDER BY num DESC LIMIT 1",
            (vfile_ino,),
        ).fetchone()
        return _node(row) if row else None

    def path_of(self, ino: int, c: sqlite3.Connection | None = None) -> str:
        """The mount-relative path of a node ('' for the root)."""
        c = c or self._r
        parts: list[str] = []
        while ino != ROOT_INO:
            row = c.execute("SELECT parent, name FROM nodes WHERE ino = ?", (ino,)).fetchone()
            if row is None:
                raise NotFound("no such entry")
            parts.append(row["name"])
            ino = row["parent"]
        return "/".join(reversed(parts))

    def resolve(self, path: str) -> Node:
        """A mount-relative path ('' or 'a/b') to its node; ``latest`` resolves to the head."""
        node = self.get(ROOT_INO)
        for part in [p for p in path.split("/") if p]:
            if node.kind == "vfile" and part == "latest":
                head = self.head(node.ino)
                if head is None:
                    raise NotFound(f"{path}: no versions")
                node = head
                continue
            node = self.lookup(node.ino, part)
        return node

    def versions(self, vfile_ino: int) -> list[Node]:
        rows = self._r.execute(
            "SELECT * FROM nodes WHERE parent = ? AND kind = 'version' ORDER BY num", (vfile_ino,)
        ).fetchall()
        return [_node(r) for r in rows]

    def blob(self, sha: str) -> Blob:
        row = self._r.execute("SELECT * FROM blobs WHERE sha256 = ?", (sha,)).fetchone()
        if row is None:
            raise NotFound(f"no blob {sha[:12]}")
        return Blob(row["sha256"], row["size"], row["chunk_size"], tuple(json.loads(row["chunks"])), bool(row["durable"]))

    def blob_refs(self, sha: str) -> int:
        return self._r.execute("SELECT count(*) FROM nodes WHERE sha256 = ?", (sha,)).fetchone()[0]

    def evictable_blobs(self) -> list[tuple[str, int]]:
        """Blobs durable in L3, least recently used first: the only ones L2 may drop."""
        rows = self._r.execute("SELECT sha256, size FROM blobs WHERE durable = 1 ORDER BY atime").fetchall()
        return [(r[0], r[1]) for r in rows]

    def job(self, job_id: int) -> Job:
        row = self._r.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id}")
        return _job(row)

    def jobs(self, since: float = 0.0) -> list[Job]:
        """Unfinished jobs and those finished after ``since`` (epoch seconds), oldest first."""
        rows = self._r.execute(
            "SELECT * FROM jobs WHERE state IN ('queued','running','retrying','failed') OR updated >= ? ORDER BY id",
            (since,),
        ).fetchall()
        return [_job(r) for r in rows]

    def unfinished_jobs(self) -> Iterator[Job]:
        """Queued, running and retrying jobs, oldest first, read lazily: a caller that has
        seen enough stops early instead of loading a backlog of thousands."""
        cur = self._r.execute("SELECT * FROM jobs WHERE state IN ('queued','running','retrying') ORDER BY id")
        try:
            for row in cur:
                yield _job(row)
        finally:
            cur.close()

    def pending(self, prefix: str = "/") -> tuple[int, list[Job]]:
        """How many jobs under ``prefix`` are unfinished, and the failed ones: what ``wait``
        polls, counted in SQL rather than read row by row (there may be tens of thousands)."""
        where, args = "", ()
        if prefix != "/":
            where, args = " AND (path = ? OR substr(path, 1, ?) = ?)", (prefix, len(prefix) + 1, prefix + "/")
        left = self._r.execute(
            f"SELECT count(*) FROM jobs WHERE state IN ('queued','running','retrying'){where}", args
        ).fetchone()[0]
        failed = self._r.execute(f"SELECT * FROM jobs WHERE state = 'failed'{where} ORDER BY id", args).fetchall()
        return int(left), [_job(r) for r in failed]

    def ns_followers(self, head: int, limit: int) -> list[Job]:
        """The namespace events queued behind ``head``, oldest first (at most ``limit``)."""
        rows = self._r.execute(
            "SELECT * FROM jobs WHERE kind = 'ns' AND state IN ('queued','retrying') AND id > ? ORDER BY id LIMIT ?",
            (head, limit),
        ).fetchall()
        return [_job(r) for r in rows]

    async def jobs_done(self, ids: list[int]) -> None:
        await self._write_light(lambda c: c.executemany(
            "UPDATE jobs SET state = 'done', last_error = '', updated = ? WHERE id = ?", [(time.time(), i) for i in ids]))
        self._notify()

    def chain_heads(self) -> Iterator[Job]:
        """The oldest unfinished job of each chain (namespace events form one chain, each
        file another), oldest first, read lazily: the runner can start nothing else, and a
        backlog of thousands of events behind one head costs nothing to skip."""
        cur = self._r.execute(
            "SELECT * FROM jobs WHERE id IN (SELECT min(id) FROM jobs WHERE state IN ('queued','running','retrying')"
            " GROUP BY CASE WHEN kind = 'ns' THEN 'ns' ELSE coalesce(file_id, 'job' || id) END) ORDER BY id"
        )
        try:
            for row in cur:
                yield _job(row)
        finally:
            cur.close()

    def has_unfinished_jobs(self) -> bool:
        row = self._r.execute("SELECT 1 FROM jobs WHERE state IN ('queued','running','retrying') LIMIT 1").fetchone()
        return row is not None

    def version_state(self, node: Node, c: sqlite3.Connection | None = None) -> str:
        """``pending``, ``uploading`` or ``durable`` for a version node."""
        if node.job_id is None:
            return "durable"
        row = (c or self._r).execute("SELECT state FROM jobs WHERE id = ?", (node.job_id,)).fetchone()
        if row is None or row[0] == "done":
            return "durable"
        return VERSION_STATE.get(row[0], "pending")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind, n in self._r.execute("SELECT kind, count(*) FROM nodes GROUP BY kind"):
            out[kind] = n
        for state, n in self._r.execute("SELECT state, count(*) FROM jobs GROUP BY state"):
            out[f"jobs_{state}"] = n
        pending = self._r.execute(
            "SELECT coalesce(sum(bytes_total), 0) FROM jobs WHERE state IN ('queued','running','retrying','failed')"
        ).fetchone()[0]
        out["pending_bytes"] = pending
        return out

    # -- helpers used inside transactions ----------------------------------------------
    @staticmethod
    def _get(c: sqlite3.Connection, ino: int) -> Node:
        return _node(c.execute("SELECT * FROM nodes WHERE ino = ?", (ino,)).fetchone())

    @staticmethod
    def _find(c: sqlite3.Connection, parent: int, name: str) -> Node | None:
        row = c.execute("SELECT * FROM nodes WHERE parent = ? AND name = ?", (parent, name)).fetchone()
        return _node(row) if row else None

    @staticmethod
    def _insert(c: sqlite3.Connection, **cols: Any) -> int:
        names = ", ".join(cols)
        marks = ", ".join("?" for _ in cols)
        cur = c.execute(f"INSERT INTO nodes ({names}) VALUES ({marks})", tuple(cols.values()))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _check_new_name(self, c: sqlite3.Connection, parent: Node, name: str) -> None:
        """Refuse reserved names and clashes in a folder or a vfile."""
        if parent.kind == "dir":
            if parent.ino == ROOT_INO and name == RESERVED_ROOT:
                raise AlreadyExists(".jobs is reserved")
        elif parent.kind == "vfile":
            if name == "latest":
                raise AlreadyExists("latest is reserved")
            if layout.version_number(name) is not None:
                raise InvalidName(f"{name} is a reserved version name")
        else:
            raise NotADirectory(f"{parent.name} is not a folder")
        if self._find(c, parent.ino, name) is not None:
            raise AlreadyExists(f"{name} exists")

    def _enqueue(
        self,
        c: sqlite3.Connection,
        kind: str,
        path: str,
        *,
        file_id: str | None = None,
        num: int | None = None,
        sha: str | None = None,
        key: str | None = None,
        body: bytes | None = None,
        total: int = 0,
    ) -> int:
        now = time.time()
        cur = c.execute(
            "INSERT INTO jobs (kind, path, file_id, num, sha256, key, body, state, bytes_total, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
            (kind, path, file_id, num, sha, key, body, total, now, now),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _ns(self, c: sqlite3.Connection, event: layout.NsEvent) -> int:
        """Queue the upload of one namespace event, keyed by time so replay keeps order."""
        seq = int(c.execute("SELECT coalesce((SELECT value FROM meta WHERE key='ns_seq'), 0)").fetchone()[0]) + 1
        self._set_meta(c, "ns_seq", str(seq))
        key = layout.ns_key(self.origin, seq)
        return self._enqueue(c, "ns", "/" + event.path, key=key, body=event.to_json(), file_id=event.file_id or None)

    def _is_synced_path(self, c: sqlite3.Connection, ino: int) -> bool:
        """Folders and vfiles live in L3's namespace; drafts and scratch do not."""
        return self._get(c, ino).kind in ("dir", "vfile")

    # -- namespace changes --------------------------------------------------------------
    async def mkdir(self, parent: int, name: str, mode: int) -> Node:
        def tx(c: sqlite3.Connection) -> Node:
            p = self._get(c, parent)
            if p.kind != "dir":
                raise (NotPermitted if p.kind == "vfile" else NotADirectory)(f"cannot make a folder in {p.name}")
            self._check_new_name(c, p, name)
            ino = self._insert(c, parent=parent, name=name, kind="dir", mtime_ns=_now_ns(), mode=0o040000 | (mode & 0o7777))
            self._ns(c, layout.NsEvent("mkdir", self.path_of(ino, c), mtime_ns=_now_ns()))
            return self._get(c, ino)

        node = await self._write(tx)
        self._notify()
        return node

    async def create(self, parent: int, name: str, mode: int, work: str) -> Node:
        """A new regular file: a draft (new file, or ``NAME/NAME``) or a scratch file."""

        def tx(c: sqlite3.Connection) -> Node:
            p = self._get(c, parent)
            self._check_new_name(c, p, name)
            kind = "draft" if p.kind == "dir" or name == p.name else "scratch"
            ino = self._insert(
                c, parent=parent, name=name, kind=kind, mtime_ns=_now_ns(), mode=0o100000 | (mode & 0o7777), work=work
            )
            return self._get(c, ino)

        return await self._write_light(tx)  # durable with its commit

    async def set_attrs(self, ino: int, *, mode: int | None = None, size: int | None = None, mtime_ns: int | None = None) -> Node:
        def tx(c: sqlite3.Connection) -> Node:
            n = self._get(c, ino)
            if n.kind == "version":
                raise ReadOnly("versions are immutable")
            if mode is not None:
                perm = mode & 0o7777
                if n.kind == "vfile":  # shown as a folder: who may read it may also enter it
                    perm |= (perm & 0o444) >> 2
                c.execute("UPDATE nodes SET mode = ? WHERE ino = ?", ((n.mode & ~0o7777) | perm, ino))
            if size is not None:
                c.execute("UPDATE nodes SET size = ? WHERE ino = ?", (size, ino))
            if mtime_ns is not None:
                c.execute("UPDATE nodes SET mtime_ns = ? WHERE ino = ?", (mtime_ns, ino))
            return self._get(c, ino)

        return await self._write(tx)

    async def commit(self, target: int, info: BlobInfo, *, consume: int | None = None) -> Node:
        """Commit bytes already sealed in L2 as the next version.

        ``target`` is a vfile (writing ``latest``, renaming onto it, rollback) or a draft
        node (a new file becomes ``NAME/v1``; ``NAME/NAME`` becomes the parent's next
        version). ``consume`` names a draft or scratch node removed in the same transaction
        (the source of a rename onto ``latest``). Queues the upload in the same transaction.
        """

        def tx(c: sqlite3.Connection) -> Node:
            now = _now_ns()
            t = self._get(c, target)
            if consume is not None:
                c.execute("DELETE FROM nodes WHERE ino = ?", (consume,))
            if t.kind == "draft":
                c.execute("DELETE FROM nodes WHERE ino = ?", (t.ino,))
                p = self._get(c, t.parent)
                if p.kind == "vfile":
                    vfile = p
                else:
                    fid = uuid.uuid4().hex
                    ino = self._insert(
                        c, parent=t.parent, name=t.name, kind="vfile", file_id=fid, next_num=1, mtime_ns=now, mode=VFILE_MODE
                    )
                    vfile = self._get(c, ino)
                    self._ns(c, layout.NsEvent("mkfile", self.path_of(ino, c), file_id=fid, mtime_ns=now))
            elif t.kind == "vfile":
                vfile = t
            else:
                raise IsADirectory(f"cannot commit onto a {t.kind}")
            assert vfile.file_id is not None and vfile.next_num is not None
            num = vfile.next_num
            c.execute(
                "INSERT OR IGNORE INTO blobs (sha256, size, chunk_size, chunks, atime) VALUES (?, ?, ?, ?, ?)",
                (info.sha256, info.size, info.chunk_size, json.dumps(info.chunks), time.time()),
            )
            record = layout.VersionRecord(
                vfile.file_id, num, info.sha256, info.size, now, info.chunk_size, info.chunks, self.origin
            )
            vpath = self.path_of(vfile.ino, c)
            job_id = self._enqueue(
                c, "upload", f"/{vpath}/v{num}", file_id=vfile.file_id, num=num, sha=info.sha256,
                key=layout.record_key(vfile.file_id, num), body=record.to_json(), total=info.size,
            )
            ino = self._insert(
                c, parent=vfile.ino, name=f"v{num}", kind="version", file_id=vfile.file_id, num=num,
                sha256=info.sha256, size=info.size, mtime_ns=now, mode=VERSION_MODE, job_id=job_id,
            )
            c.execute("UPDATE nodes SET next_num = ?, mtime_ns = ? WHERE ino = ?", (num + 1, now, vfile.ino))
            return self._get(c, ino)

        node = await self._write(tx)
        self._notify()
        return node

    async def remove(self, parent: int, name: str, *, folder: bool) -> Node:
        """``unlink`` (folder=False) or ``rmdir`` (folder=True) of one entry.

        Removing a version queues its delete job; removing a vfile needs it to hold no
        versions or scratch files any more (``rm -r`` removes those first).
        """

        def tx(c: sqlite3.Connection) -> Node:
            p = self._get(c, parent)
            n = self._find(c, parent, name)
            if n is None:
                raise NotFound(name)
            if folder and not n.is_folder:
                raise NotADirectory(f"{name} is not a folder")
            if not folder and n.is_folder:
                raise IsADirectory(f"{name} is a folder")
            if n.is_folder:
                if c.execute("SELECT 1 FROM nodes WHERE parent = ? LIMIT 1", (n.ino,)).fetchone():
                    raise NotEmpty(f"{name} is not empty")
                op = "rmdir" if n.kind == "dir" else "unlink"
                self._ns(c, layout.NsEvent(op, self.path_of(n.ino, c), file_id=n.file_id or "", mtime_ns=_now_ns()))
            elif n.kind == "version":
                assert n.file_id is not None and n.num is not None and n.sha256 is not None
                self._enqueue(
                    c, "delete", "/" + self.path_of(n.ino, c), file_id=n.file_id, num=n.num, sha=n.sha256,
                    key=layout.tombstone_key(n.file_id, n.num),
                )
            c.execute("DELETE FROM nodes WHERE ino = ?", (n.ino,))
            if p.kind in ("dir", "vfile") and n.kind != "scratch":
                c.execute("UPDATE nodes SET mtime_ns = ? WHERE ino = ?", (_now_ns(), p.ino))
            return n

        node = await self._write(tx)
        self._notify()
        return node

    async def rename(self, old_parent: int, old_name: str, new_parent: int, new_name: str, *, noreplace: bool) -> Node:
        """Move an entry. Versions cannot move; a folder or vfile cannot replace anything but
        an empty folder of its own kind; ``latest`` as a target is handled by the caller."""

        def tx(c: sqlite3.Connection) -> Node:
            n = self._find(c, old_parent, old_name)
            if n is None:
                raise NotFound(old_name)
            if n.kind == "version":
                raise ReadOnly("versions cannot be renamed")
            dst_parent = self._get(c, new_parent)
            if dst_parent.kind not in ("dir", "vfile"):
                raise NotADirectory("target is not a folder")
            if n.is_folder and dst_parent.kind != "dir":
                raise InvalidName("folders and versioned files can only live in folders")
            if n.is_folder:  # no cycles: the target folder must not lie inside n
                anc = dst_parent.ino
                while anc != ROOT_INO:
                    if anc == n.ino:
                        raise InvalidName("cannot move a folder into itself")
                    anc = self._get(c, anc).parent
            if dst_parent.kind == "vfile" and (new_name == "latest" or layout.version_number(new_name) is not None):
                raise ReadOnly(f"{new_name} is a version name")
            if dst_parent.ino == ROOT_INO and new_name == RESERVED_ROOT:
                raise AlreadyExists(".jobs is reserved")
            existing = self._find(c, new_parent, new_name)
            if existing is not None and existing.ino == n.ino:
                return n
            if existing is not None:
                if noreplace:
                    raise AlreadyExists(f"{new_name} exists")
                if existing.kind == "version":
                    raise ReadOnly("versions are immutable")
                if n.is_folder != existing.is_folder:
                    raise (IsADirectory if existing.is_folder else NotADirectory)(f"{new_name}: kind differs")
                if existing.is_folder:
                    if existing.kind != n.kind or c.execute(
                        "SELECT 1 FROM nodes WHERE parent = ? LIMIT 1", (existing.ino,)
                    ).fetchone():
                        raise NotEmpty(f"{new_name} is not empty")
                    self._ns(c, layout.NsEvent(
                        "rmdir" if existing.kind == "dir" else "unlink", self.path_of(existing.ino, c),
                        file_id=existing.file_id or "", mtime_ns=_now_ns(),
                    ))
                c.execute("DELETE FROM nodes WHERE ino = ?", (existing.ino,))
            synced = n.is_folder
            old_path = self.path_of(n.ino, c) if synced else ""
            kind = n.kind
            if n.kind in ("draft", "scratch"):
                kind = "draft" if dst_parent.kind == "dir" or new_name == dst_parent.name else "scratch"
            c.execute(
                "UPDATE nodes SET parent = ?, name = ?, kind = ? WHERE ino = ?", (new_parent, new_name, kind, n.ino)
            )
            if synced:
                self._ns(c, layout.NsEvent("rename", old_path, to=self.path_of(n.ino, c), mtime_ns=_now_ns()))
            return self._get(c, n.ino)

        node = await self._write(tx)
        self._notify()
        return node

    # -- jobs --------------------------------------------------------------------------
    async def job_state(
        self, job_id: int, state: str, *, attempts: int | None = None, error: str | None = None, not_before: float = 0.0,
        then: layout.NsEvent | None = None,
    ) -> None:
        """Record a job's state; ``then``: an event to queue in the same transaction (the
        change feed's "version"/"drop" once a record or tombstone has landed)."""

        def tx(c: sqlite3.Connection) -> None:
            if then is not None:
                self._ns(c, then)
            sets = ["state = ?", "updated = ?", "not_before = ?"]
            vals: list[Any] = [state, time.time(), not_before]
            if attempts is not None:
                sets.append("attempts = ?")
                vals.append(attempts)
            if error is not None:
                sets.append("last_error = ?")
                vals.append(error)
            c.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*vals, job_id))

        await self._write_light(tx)
        self._notify()

    async def blob_durable(self, sha: str, durable: bool) -> None:
        await self._write_light(lambda c: c.execute("UPDATE blobs SET durable = ? WHERE sha256 = ?", (int(durable), sha)))

    async def forget_blob(self, sha: str) -> bool:
        """Drop a blob row that no version references any more; False if one still does."""

        def tx(c: sqlite3.Connection) -> bool:
            if c.execute("SELECT 1 FROM nodes WHERE sha256 = ? LIMIT 1", (sha,)).fetchone():
                return False
            c.execute("DELETE FROM blobs WHERE sha256 = ?", (sha,))
            return True

        return await self._write(tx)

    async def touch_blobs(self, shas: Iterable[str]) -> None:
        now = time.time()
        rows = [(now, s) for s in shas]
        if rows:
            await self._write_light(lambda c: c.executemany("UPDATE blobs SET atime = ? WHERE sha256 = ?", rows))

    async def requeue_interrupted(self) -> int:
        """At start: jobs that were running or had failed are queued again."""

        def tx(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "UPDATE jobs SET state = 'queued', not_before = 0 WHERE state IN ('running', 'retrying', 'failed')"
            )
            return cur.rowcount

        n = await self._write(tx)
        self._notify()
        return n

    async def prune_jobs(self, before: float) -> None:
        await self._write_light(lambda c: c.execute("DELETE FROM jobs WHERE state = 'done' AND updated < ?", (before,)))

    # -- crash recovery (see recovery.py) ----------------------------------------------
    def local_files(self) -> list[Node]:
        """Draft and scratch nodes: files whose bytes live only in an L2 work file."""
        rows = self._r.execute("SELECT * FROM nodes WHERE kind IN ('draft', 'scratch') ORDER BY ino").fetchall()
        return [_node(r) for r in rows]

    def blob_shas(self) -> set[str]:
        """Every blob the catalog knows (committed versions, also ones evicted from L2)."""
        return {r[0] for r in self._r.execute("SELECT sha256 FROM blobs")}

    async def drop_local(self, inos: list[int]) -> None:
        """Remove draft and scratch nodes in one transaction (never a folder or a version)."""

        def tx(c: sqlite3.Connection) -> None:
            c.executemany("DELETE FROM nodes WHERE ino = ? AND kind IN ('draft', 'scratch')", [(i,) for i in inos])

        if inos:
            await self._write(tx)

    # -- rebuild from L3 ---------------------------------------------------------------
    def is_empty(self) -> bool:
        return self._r.execute("SELECT count(*) FROM nodes").fetchone()[0] <= 1 and self.meta("rebuilt") is None

    async def load_snapshot(
        self, events: list[tuple[str, layout.NsEvent]], records: dict[str, list[layout.VersionRecord]], used: dict[str, int],
        seen: Iterable[str] = (),
    ) -> dict[str, int]:
        """Fill an empty catalog from what the bucket holds.

        ``events`` are namespace events in feed order, labelled as ``layout.ns_events`` does,
        ``records`` the live version records of each file id, ``used`` the highest version
        number ever used per file id (also by deleted versions, so numbers are never reused),
        ``seen`` the feed objects read. Returns counts of what was loaded.
        """

        def tx(c: sqlite3.Connection) -> dict[str, int]:
            tree: dict[str, tuple[str, str]] = {}  # path -> (kind, file_id)
            mtimes: dict[str, int] = {}
            skipped = 0
            live_fids: set[str] = set()  # file ids in the tree: each names one file only

            def has_children(path: str) -> bool:
                return any(p.startswith(path + "/") for p in tree)

            for key, ev in events:
                # what RelayFS itself never writes is a clash (or a hostile key): skipped, with
                # the key and names logged by repr so they cannot forge log lines
                parent = ev.path.rpartition("/")[0]
                if ev.op in ("mkdir", "mkfile"):
                    if ev.path in tree or (parent and tree.get(parent, ("", ""))[0] != "dir") or ev.path == RESERVED_ROOT:
                        log.warning("skipping namespace event %r: %s %r clashes or has no folder", key, ev.op, ev.path)
                        skipped += 1
                        continue
                    if ev.op == "mkfile" and ev.file_id in live_fids:
                        log.warning("skipping namespace event %r: file id of %r is already in use", key, ev.path)
                        skipped += 1
                        continue
                    tree[ev.path] = ("dir", "") if ev.op == "mkdir" else ("vfile", ev.file_id)
                    if ev.op == "mkfile":
                        live_fids.add(ev.file_id)
                    mtimes[ev.path] = ev.mtime_ns
                elif ev.op in ("rmdir", "unlink"):
                    kind = tree.get(ev.path, ("", ""))[0]
                    if kind != ("dir" if ev.op == "rmdir" else "vfile") or has_children(ev.path):
                        log.warning("skipping namespace event %r: no empty %s %r to remove", key,
                                    "folder" if ev.op == "rmdir" else "file", ev.path)
                        skipped += 1
                        continue
                    live_fids.discard(tree.pop(ev.path)[1])
                elif ev.op == "rename":
                    to_parent = ev.to.rpartition("/")[0]
                    replaced = tree.get(ev.to)
                    if ev.path not in tree or (to_parent and tree.get(to_parent, ("", ""))[0] != "dir") or (
                        ev.to == ev.path or ev.to.startswith(ev.path + "/") or ev.to == RESERVED_ROOT
                    ) or replaced is not None and (replaced[0] != tree[ev.path][0] or has_children(ev.to)):
                        log.warning("skipping namespace event %r: cannot rename %r to %r", key, ev.path, ev.to)
                        skipped += 1
                        continue
                    if replaced is not None:  # replaced an empty entry of its kind
                        live_fids.discard(tree.pop(ev.to)[1])
                    for p in [p for p in tree if p == ev.path or p.startswith(ev.path + "/")]:
                        tree[ev.to + p[len(ev.path):]] = tree.pop(p)
                        if p in mtimes:
                            mtimes[ev.to + p[len(ev.path):]] = mtimes.pop(p)
            inos: dict[str, int] = {"": ROOT_INO}
            counts = {"folders": 0, "files": 0, "versions": 0, "skipped_events": skipped}
            for path in sorted(tree, key=lambda p: p.count("/")):
                kind, fid = tree[path]
                parent_path, _, name = path.rpartition("/")
                if parent_path not in inos:
                    continue
                ino = self._insert(
                    c, parent=inos[parent_path], name=name, kind=kind, file_id=fid or None,
                    next_num=(used.get(fid, 0) + 1) if kind == "vfile" else None,
                    mtime_ns=mtimes.get(path, _now_ns()), mode=DIR_MODE if kind == "dir" else VFILE_MODE,
                )
                inos[path] = ino
                if kind == "dir":
                    counts["folders"] += 1
                    continue
                counts["files"] += 1
                for rec in records.get(fid, []):
                    known = c.execute("SELECT size, chunk_size, chunks FROM blobs WHERE sha256 = ?", (rec.sha256,)).fetchone()
                    if known is not None and tuple(known) != (rec.size, rec.chunk_size, json.dumps(rec.chunks)):
                        log.warning(
                            "skipping version record %r: blob %s is recorded with another size or chunks",
                            layout.record_key(fid, rec.num), rec.sha256[:12],
                        )
                        continue
                    c.execute(
                        "INSERT OR IGNORE INTO blobs (sha256, size, chunk_size, chunks, durable) VALUES (?, ?, ?, ?, 1)",
                        (rec.sha256, rec.size, rec.chunk_size, json.dumps(rec.chunks)),
                    )
                    self._insert(
                        c, parent=ino, name=f"v{rec.num}", kind="version", file_id=fid, num=rec.num,
                        sha256=rec.sha256, size=rec.size, mtime_ns=rec.mtime_ns, mode=VERSION_MODE,
                    )
                    counts["versions"] += 1
                    c.execute("UPDATE nodes SET mtime_ns = max(mtime_ns, ?) WHERE ino = ?", (rec.mtime_ns, ino))
            loaded = {fid for kind, fid in tree.values() if kind == "vfile"}
            for fid in sorted(set(records) - loaded):
                for rec in records[fid]:
                    log.warning("skipping version record %r: no file in the namespace has id %s", layout.record_key(fid, rec.num), fid)
            if events:
                self._set_meta(c, "ns_last", events[-1][0])
            self._mark_seen(c, [layout.event_identity(k) for k, _ in events] + list(seen))
            self._set_meta(c, "rebuilt", str(time.time()))
            return counts

        return await self._write(tx)

    # -- changes other clients made (see sync.py) ----------------------------------------
    def seen_events(self) -> set[str]:
        """The feed as far as it was read: identities (``layout.event_identity``) of events
        applied or skipped, and the keys of the feed objects fetched."""
        return {r[0] for r in self._r.execute("SELECT key FROM seen_events")}

    def seen_of(self, items: list[str]) -> set[str]:
        """Which of ``items`` (event identities, feed object keys) were seen before."""
        out: set[str] = set()
        for i in range(0, len(items), 500):
            part = items[i:i + 500]
            marks = ",".join("?" * len(part))
            out.update(r[0] for r in self._r.execute(f"SELECT key FROM seen_events WHERE key IN ({marks})", part))
        return out

    @staticmethod
    def _mark_seen(c: sqlite3.Connection, items: list[str]) -> None:
        c.executemany("INSERT OR IGNORE INTO seen_events (key) VALUES (?)", [(k,) for k in items])

    async def renumber(self, job_id: int, floor: int) -> tuple[int, str, str]:
        """Give the pending version of an upload job whose number another machine took the
        next free number (at least ``floor``, past every number used here), and point the
        job at its new record. Returns (vfile ino, old name, new name)."""

        def tx(c: sqlite3.Connection) -> tuple[int, str, str]:
            job = _job(c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
            assert job.file_id and job.num and job.body is not None
            vfile = c.execute("SELECT * FROM nodes WHERE kind = 'vfile' AND file_id = ?", (job.file_id,)).fetchone()
            top = c.execute("SELECT coalesce(max(num), 0) FROM nodes WHERE kind = 'version' AND file_id = ?",
                            (job.file_id,)).fetchone()[0]
            new = max(floor, top + 1, vfile["next_num"] if vfile is not None else 0)
            old_name, new_name = f"v{job.num}", f"v{new}"
            c.execute("UPDATE nodes SET num = ?, name = ? WHERE kind = 'version' AND file_id = ? AND num = ?",
                      (new, new_name, job.file_id, job.num))
            c.execute("UPDATE nodes SET next_num = max(next_num, ?) WHERE kind = 'vfile' AND file_id = ?",
                      (new + 1, job.file_id))
            rec = layout.VersionRecord.from_json(job.body)
            body = dataclasses.replace(rec, num=new).to_json()
            path = job.path.rpartition("/")[0] + "/" + new_name
            note = f"renumbered from {old_name}: another workstation committed {old_name} first"
            c.execute("UPDATE jobs SET num = ?, key = ?, body = ?, path = ?, note = ? WHERE id = ?",
                      (new, layout.record_key(job.file_id, new), body, path, note, job_id))
            c.execute("UPDATE jobs SET num = ?, path = ?, key = ? WHERE kind = 'delete' AND file_id = ? AND num = ?"
                      " AND state != 'done'", (new, path, layout.tombstone_key(job.file_id, new), job.file_id, job.num))
            return (vfile["ino"] if vfile is not None else 0), old_name, new_name

        result = await self._write(tx)
        self._notify()
        return result

    def versions_to_fetch(self, pairs: Iterable[tuple[str, int]], new_fids: set[str]) -> list[tuple[str, int]]:
        """Of the (file id, number) pairs other clients wrote, those of a file here (or in
        ``new_fids``) that this catalog neither holds nor is deleting. Asks per pair, so a
        poll costs what changed, not the size of the catalog."""
        r = self._r
        out = []
        for fid, num in sorted(pairs):
            if fid not in new_fids and not r.execute("SELECT 1 FROM nodes WHERE kind = 'vfile' AND file_id = ?", (fid,)).fetchone():
                continue
            if r.execute("SELECT 1 FROM nodes WHERE kind = 'version' AND file_id = ? AND num = ?", (fid, num)).fetchone():
                continue
            if r.execute("SELECT 1 FROM jobs WHERE kind = 'delete' AND file_id = ? AND num = ?", (fid, num)).fetchone():
                continue
            out.append((fid, num))
        return out

    async def merge_remote(
        self,
        events: list[tuple[str, layout.NsEvent]],
        records: list[layout.VersionRecord],
        tombstones: set[tuple[str, int]],
        used: dict[str, int],
        *,
        seen: list[str],
    ) -> tuple[dict[str, int], list[tuple[int, str]]]:
        """Apply what other clients wrote to L3 to this live catalog, in one transaction.

        ``events`` are namespace events not seen before, in feed order (labelled as
        ``layout.ns_events`` does); ``records`` live version records this catalog lacks;
        ``tombstones`` versions removed elsewhere; ``used`` the highest number used per file
        id; ``seen`` every feed object key read (also unusable ones), never fetched again. An event that does not fit the local
        tree (a name taken here meanwhile, a folder not empty here) is skipped with a
        WARNING. Returns counts and the (parent ino, name) entries the kernel must forget.
        """

        def tx(c: sqlite3.Connection) -> tuple[dict[str, int], list[tuple[int, str]]]:
            counts = {"events": 0, "versions": 0, "removed": 0, "skipped": 0}
            gone: list[tuple[int, str]] = []
            self._mark_seen(c, [layout.event_identity(k) for k, _ in events] + list(seen))
            for key, ev in events:
                if ev.op in layout.VERSION_OPS:  # carried out through the records they name
                    continue
                why = self._apply_event(c, ev, gone)
                if why:
                    log.warning("skipping namespace event %r from another client: %s", key, why)
                    counts["skipped"] += 1
                else:
                    counts["events"] += 1
            for rec in records:
                vfile = c.execute("SELECT * FROM nodes WHERE kind = 'vfile' AND file_id = ?", (rec.file_id,)).fetchone()
                if vfile is None or (rec.file_id, rec.num) in tombstones or c.execute(
                    "SELECT 1 FROM nodes WHERE kind = 'version' AND file_id = ? AND num = ?", (rec.file_id, rec.num)
                ).fetchone():
                    continue
                known = c.execute("SELECT size, chunk_size, chunks FROM blobs WHERE sha256 = ?", (rec.sha256,)).fetchone()
                if known is not None and tuple(known) != (rec.size, rec.chunk_size, json.dumps(rec.chunks)):
                    log.warning("skipping version record %r: its blob is recorded with another size",
                                layout.record_key(rec.file_id, rec.num))
                    continue
                c.execute(
                    "INSERT OR IGNORE INTO blobs (sha256, size, chunk_size, chunks, durable) VALUES (?, ?, ?, ?, 1)",
                    (rec.sha256, rec.size, rec.chunk_size, json.dumps(rec.chunks)),
                )
                self._insert(
                    c, parent=vfile["ino"], name=f"v{rec.num}", kind="version", file_id=rec.file_id, num=rec.num,
                    sha256=rec.sha256, size=rec.size, mtime_ns=rec.mtime_ns, mode=VERSION_MODE,
                )
                c.execute("UPDATE nodes SET mtime_ns = max(mtime_ns, ?) WHERE ino = ?", (rec.mtime_ns, vfile["ino"]))
                gone.append((vfile["parent"], vfile["name"]))  # its attributes and `latest` changed
                counts["versions"] += 1
            for fid, num in sorted(tombstones):
                row = c.execute(
                    "SELECT * FROM nodes WHERE kind = 'version' AND file_id = ? AND num = ?", (fid, num)
                ).fetchone()
                if row is None or self.version_state(_node(row), c) != "durable":
                    continue
                c.execute("DELETE FROM nodes WHERE ino = ?", (row["ino"],))
                gone.append((row["parent"], row["name"]))
                counts["removed"] += 1
            for fid, top in used.items():
                c.execute(
                    "UPDATE nodes SET next_num = max(next_num, ?) WHERE kind = 'vfile' AND file_id = ?", (top + 1, fid)
                )
            return counts, gone

        result = await self._write(tx)
        self._notify()
        return result

    def _resolve_in(self, c: sqlite3.Connection, path: str) -> sqlite3.Row | None:
        row = c.execute("SELECT * FROM nodes WHERE ino = ?", (ROOT_INO,)).fetchone()
        for part in path.split("/"):
            row = c.execute("SELECT * FROM nodes WHERE parent = ? AND name = ?", (row["ino"], part)).fetchone()
            if row is None:
                return None
        return row

    def _apply_event(self, c: sqlite3.Connection, ev: layout.NsEvent, gone: list[tuple[int, str]]) -> str:
        """One namespace event from another client; returns why it was skipped, or ''."""
        parent_path, _, name = ev.path.rpartition("/")
        parent = self._resolve_in(c, parent_path) if parent_path else c.execute(
            "SELECT * FROM nodes WHERE ino = ?", (ROOT_INO,)).fetchone()
        here = self._resolve_in(c, ev.path)
        if ev.op in ("mkdir", "mkfile"):
            kind = "dir" if ev.op == "mkdir" else "vfile"
            if here is not None:
                same = here["kind"] == kind and (kind == "dir" or here["file_id"] == ev.file_id)
                return "" if same else f"{ev.path!r} exists here already"
            if parent is None or parent["kind"] != "dir" or ev.path == RESERVED_ROOT:
                return f"no folder for {ev.path!r}"
            if kind == "vfile" and c.execute("SELECT 1 FROM nodes WHERE kind = 'vfile' AND file_id = ?", (ev.file_id,)).fetchone():
                return f"file id of {ev.path!r} is in use here"
            self._insert(
                c, parent=parent["ino"], name=name, kind=kind, file_id=ev.file_id or None,
                next_num=1 if kind == "vfile" else None, mtime_ns=ev.mtime_ns or _now_ns(),
                mode=DIR_MODE if kind == "dir" else VFILE_MODE,
            )
            return ""
        if here is None:
            return "" if ev.op in ("rmdir", "unlink") else f"no {ev.path!r} here"
        if ev.op in ("rmdir", "unlink"):
            if here["kind"] != ("dir" if ev.op == "rmdir" else "vfile"):
                return f"{ev.path!r} is another kind of entry here"
            children = [_node(r) for r in c.execute("SELECT * FROM nodes WHERE parent = ?", (here["ino"],))]
            if any(ch.kind != "version" or self.version_state(ch, c) != "durable" for ch in children):
                return f"{ev.path!r} holds entries here that are not in L3"
            for ch in children:
                c.execute("DELETE FROM nodes WHERE ino = ?", (ch.ino,))
                gone.append((ch.parent, ch.name))
            c.execute("DELETE FROM nodes WHERE ino = ?", (here["ino"],))
            gone.append((here["parent"], here["name"]))
            return ""
        to_parent_path, _, to_name = ev.to.rpartition("/")
        to_parent = self._resolve_in(c, to_parent_path) if to_parent_path else c.execute(
            "SELECT * FROM nodes WHERE ino = ?", (ROOT_INO,)).fetchone()
        if to_parent is None or to_parent["kind"] != "dir" or ev.to == RESERVED_ROOT:
            return f"no folder for {ev.to!r}"
        if self._resolve_in(c, ev.to) is not None:
            return f"{ev.to!r} exists here already"
        c.execute("UPDATE nodes SET parent = ?, name = ? WHERE ino = ?", (to_parent["ino"], to_name, here["ino"]))
        gone.append((here["parent"], here["name"]))
        return ""

    async def mark_rebuilt(self) -> None:
        await self._write(lambda c: self._set_meta(c, "rebuilt", str(time.time())))
