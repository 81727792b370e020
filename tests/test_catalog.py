"""Unit tests of the catalog: namespace rules, version numbering, jobs, rebuild."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from relayfs import errors
from relayfs.catalog import ROOT_INO, Catalog
from relayfs.store import layout
from relayfs.store.l2 import BlobInfo

SHA_A = "a" * 64
SHA_B = "b" * 64


def info(sha: str = SHA_A, size: int = 3) -> BlobInfo:
    return BlobInfo(sha, size, layout.CHUNK_SIZE, (sha,))


def run(fn, tmp_path: Path):
    async def main():
        cat = Catalog(tmp_path / "catalog.db")
        try:
            return await fn(cat)
        finally:
            cat.close()

    return trio.run(main)


def test_new_file_commits_as_v1_and_versions_count_up(tmp_path: Path) -> None:
    async def body(cat: Catalog):
        d = await cat.mkdir(ROOT_INO, "reports", 0o755)
        draft = await cat.create(d.ino, "q3.pdf", 0o644, "w1")
        assert draft.kind == "draft"
        v1 = await cat.commit(draft.ino, info(SHA_A))
        vfile = cat.lookup(d.ino, "q3.pdf")
        assert vfile.kind == "vfile" and v1.name == "v1" and v1.parent == vfile.ino
        v2 = await cat.commit(vfile.ino, info(SHA_B))
        assert v2.num == 2
        assert cat.head(vfile.ino).num == 2
        assert cat.resolve("reports/q3.pdf/latest").sha256 == SHA_B
        assert cat.path_of(v2.ino) == "reports/q3.pdf/v2"
        kinds = [j.kind for j in cat.unfinished_jobs()]
        assert kinds == ["ns", "ns", "upload", "upload"]  # mkdir, mkfile, v1, v2

    run(body, tmp_path)


def test_deleted_version_numbers_are_never_reused(tmp_path: Path) -> None:
    async def body(cat: Catalog):
        draft = await cat.create(ROOT_INO, "a", 0o644, "w")
        await cat.commit(draft.ino, info(SHA_A))
        vfile = cat.lookup(ROOT_INO, "a")
        await cat.commit(vfile.ino, info(SHA_B))
        await cat.remove(vfile.ino, "v2", folder=False)
        v = await cat.commit(vfile.ino, info(SHA_B))
        assert v.num == 3
        assert [j.kind for j in cat.unfinished_jobs()][-2:] == ["delete", "upload"]

    run(body, tmp_path)


def test_reserved_and_clashing_names(tmp_path: Path) -> None:
    async def body(cat: Catalog):
        with pytest.raises(errors.AlreadyExists):
            await cat.mkdir(ROOT_INO, ".jobs", 0o755)
        draft = await cat.create(ROOT_INO, "f", 0o644, "w")
        await cat.commit(draft.ino, info())
        vfile = cat.lookup(ROOT_INO, "f")
        with pytest.raises(errors.InvalidName):
            await cat.create(vfile.ino, "v7", 0o644, "w2")
        with pytest.raises(errors.AlreadyExists):
            await cat.create(vfile.ino, "latest", 0o644, "w2")
        with pytest.raises(errors.AlreadyExists):
            await cat.create(ROOT_INO, "f", 0o644, "w3")
        with pytest.raises(errors.NotPermitted):
            await cat.mkdir(vfile.ino, "sub", 0o755)
        scratch = await cat.create(vfile.ino, ".f.swp", 0o644, "w4")
        assert scratch.kind == "scratch"

    run(body, tmp_path)


def test_remove_rules(tmp_path: Path) -> None:
    async def body(cat: Catalog):
        d = await cat.mkdir(ROOT_INO, "d", 0o755)
        draft = await cat.create(d.ino, "f", 0o644, "w")
        await cat.commit(draft.ino, info())
        with pytest.raises(errors.NotEmpty):
            await cat.remove(ROOT_INO, "d", folder=True)
        vfile = cat.lookup(d.ino, "f")
        with pytest.raises(errors.IsADirectory):
            await cat.remove(d.ino, "f", folder=False)
        with pytest.raises(errors.NotEmpty):  # a versioned file goes once its versions went
            await cat.remove(d.ino, "f", folder=True)
        await cat.remove(vfile.ino, "v1", folder=False)
        await cat.remove(d.ino, "f", folder=True)
        await cat.remove(ROOT_INO, "d", folder=True)
        assert cat.children(ROOT_INO) == []

    run(body, tmp_path)


def test_rename_rules(tmp_path: Path) -> None:
    async def body(cat: Catalog):
        a = await cat.mkdir(ROOT_INO, "a", 0o755)
        b = await cat.mkdir(a.ino, "b", 0o755)
        with pytest.raises(errors.InvalidName):  # into itself
            await cat.rename(ROOT_INO, "a", b.ino, "x", noreplace=False)
        draft = await cat.create(ROOT_INO, "f", 0o644, "w")
        await cat.commit(draft.ino, info())
        vfile = cat.lookup(ROOT_INO, "f")
        with pytest.raises(errors.ReadOnly):
            await cat.rename(vfile.ino, "v1", ROOT_INO, "g", noreplace=False)
        moved = await cat.rename(ROOT_INO, "f", b.ino, "g", noreplace=False)
        assert moved.ino == vfile.ino and cat.path_of(moved.ino) == "a/b/g"
        assert cat.resolve("a/b/g/v1").sha256 == SHA_A
        ns = [j for j in cat.unfinished_jobs() if j.kind == "ns"]
        assert ns[-1].body and b'"op":"rename"' in ns[-1].body and b'"to":"a/b/g"' in ns[-1].body

    run(body, tmp_path)


def test_rebuild_from_events_and_records(tmp_path: Path) -> None:
    fid = "1" * 32
    events = [
        ("ns/0000000000001-aaaaaaaa-00000001.json", layout.NsEvent("mkdir", "d")),
        ("ns/0000000000002-aaaaaaaa-00000002.json", layout.NsEvent("mkfile", "d/f", file_id=fid)),
        ("ns/0000000000003-aaaaaaaa-00000003.json", layout.NsEvent("mkdir", "e")),
        ("ns/0000000000004-aaaaaaaa-00000004.json", layout.NsEvent("rename", "d", to="e/d2")),
        ("ns/0000000000005-aaaaaaaa-00000005.json", layout.NsEvent("mkfile", "nowhere/x", file_id="2" * 32)),
    ]
    rec = layout.VersionRecord(fid, 2, SHA_B, 3, 123, layout.CHUNK_SIZE, (SHA_B,))

    async def body(cat: Catalog):
        counts = await cat.load_snapshot(events, {fid: [rec]}, {fid: 3})
        assert counts["skipped_events"] == 1
        f = cat.resolve("e/d2/f")
        assert f.kind == "vfile" and f.next_num == 4
        assert [v.num for v in cat.versions(f.ino)] == [2]
        assert cat.blob(SHA_B).durable

    run(body, tmp_path)


def test_state_survives_reopen(tmp_path: Path) -> None:
    async def first(cat: Catalog):
        draft = await cat.create(ROOT_INO, "f", 0o644, "w")
        await cat.commit(draft.ino, info())
        for job in cat.unfinished_jobs():
            await cat.job_state(job.id, "running")

    async def second(cat: Catalog):
        assert await cat.requeue_interrupted() == 2
        assert {j.state for j in cat.unfinished_jobs()} == {"queued"}
        assert cat.resolve("f/v1").sha256 == SHA_A

    run(first, tmp_path)
    run(second, tmp_path)


def _rec(fid: str, num: int, sha: str = SHA_B) -> layout.VersionRecord:
    return layout.VersionRecord(fid, num, sha, 3, 1_000, layout.CHUNK_SIZE, (sha,), "0ther000")


def test_merge_remote_applies_other_clients_changes_and_skips_clashes(tmp_path: Path) -> None:
    fid_new, fid_clash = "1" * 32, "2" * 32

    async def body(cat: Catalog):
        draft = await cat.create(ROOT_INO, "mine.txt", 0o644, "w")
        v1 = await cat.commit(draft.ino, info(SHA_A))
        mine = cat.lookup(ROOT_INO, "mine.txt")
        for j in cat.unfinished_jobs():  # as if every upload had finished
            await cat.job_state(j.id, "done")
        events = [
            ("ns/0000000000001-0ther000-00000001.json", layout.NsEvent("mkdir", "shared")),
            ("ns/0000000000002-0ther000-00000002.json", layout.NsEvent("mkfile", "shared/new.txt", file_id=fid_new)),
            ("ns/0000000000003-0ther000-00000003.json", layout.NsEvent("mkfile", "mine.txt", file_id=fid_clash)),
            ("ns/0000000000004-0ther000-00000004.json", layout.NsEvent("rename", "shared", to="moved")),
        ]
        records = [_rec(fid_new, 1), _rec(fid_new, 2, SHA_A), _rec(mine.file_id, 2), _rec(fid_clash, 1)]
        seen = [k for k, _ in events] + ["ns/0000000000005-0ther000-00000005.json"]  # one unreadable
        counts, gone = await cat.merge_remote(
            events, records, {(mine.file_id, 1)}, {fid_new: 2, mine.file_id: 3}, seen=seen
        )
        assert counts == {"events": 3, "versions": 3, "removed": 1, "skipped": 1}
        new = cat.resolve("moved/new.txt")
        assert [v.num for v in cat.versions(new.ino)] == [1, 2] and cat.head(new.ino).sha256 == SHA_A
        assert cat.version_state(cat.head(new.ino)) == "durable" and cat.blob(SHA_B).durable
        assert [v.num for v in cat.versions(mine.ino)] == [2]  # v1 was removed elsewhere, v2 added
        assert (mine.ino, v1.name) in gone and (ROOT_INO, "shared") in gone
        assert cat.lookup(ROOT_INO, "mine.txt").file_id == mine.file_id  # the clash was skipped
        assert (await cat.commit(mine.ino, info(SHA_A))).num == 4  # after the highest number used anywhere
        assert cat.seen_events() == set(seen) | {f"0ther000-0000000{i}" for i in range(1, 5)}  # objects and events
        assert cat.seen_of([seen[0], "0ther000-00000004", "0ther000-00000009"]) == {seen[0], "0ther000-00000004"}

    run(body, tmp_path)


def test_merge_remote_keeps_versions_not_yet_in_l3(tmp_path: Path) -> None:
    async def body(cat: Catalog):
        draft = await cat.create(ROOT_INO, "f", 0o644, "w")
        await cat.commit(draft.ino, info(SHA_A))
        f = cat.lookup(ROOT_INO, "f")
        unlink = ("ns/0000000000001-0ther000-00000001.json", layout.NsEvent("unlink", "f", file_id=f.file_id))
        counts, _ = await cat.merge_remote([unlink], [], {(f.file_id, 1)}, {}, seen=[unlink[0]])
        assert counts["skipped"] == 1 and counts["removed"] == 0  # v1's upload is still pending here
        assert [v.num for v in cat.versions(f.ino)] == [1]

    run(body, tmp_path)


def test_job_dispatch_reads_only_what_it_starts(tmp_path: Path) -> None:
    """With a backlog, the runner takes at most its free slots, heads of chains only, and
    a state change made without fsync is still there after a reopen."""
    from relayfs.jobs import JobRunner

    async def body(cat: Catalog):
        d = await cat.mkdir(ROOT_INO, "many", 0o755)
        for i in range(30):
            draft = await cat.create(d.ino, f"f{i}", 0o644, f"w{i}")
            await cat.commit(draft.ino, info(f"{i:064x}"))
        runner = JobRunner(cat, None, None, None, concurrency=4, retry_base=1, retry_max=2)  # type: ignore[arg-type]
        ready, _ = runner.runnable(0.0, 3)
        assert len(ready) == 3
        assert [j.kind for j in ready] == ["ns", "upload", "upload"]  # one ns event at a time
        assert len({j.file_id for j in ready if j.kind == "upload"}) == 2
        assert runner.runnable(0.0, 0) == ([], None)
        assert cat.has_unfinished_jobs()
        await cat.job_state(ready[1].id, "done")
        return ready[1].id

    done_id = run(body, tmp_path)
    cat = Catalog(tmp_path / "catalog.db")
    try:
        assert cat.job(done_id).state == "done"
        assert all(j.id != done_id for j in cat.unfinished_jobs())
    finally:
        cat.close()


def test_pending_counts_unfinished_jobs_under_a_path(tmp_path: Path) -> None:
    async def body(cat: Catalog):
        d = await cat.mkdir(ROOT_INO, "a", 0o755)
        for name in ("x", "xy"):
            draft = await cat.create(d.ino, name, 0o644, f"w{name}")
            await cat.commit(draft.ino, info((name * 64)[:64].replace("x", "1").replace("y", "2")))
        assert cat.pending("/")[0] == 5  # mkdir, 2 mkfile, 2 uploads
        assert cat.pending("/a/x")[0] == 2 and cat.pending("/a/xy")[0] == 2  # its mkfile and upload
        assert cat.pending("/b") == (0, [])
        upload = next(j for j in cat.unfinished_jobs() if j.kind == "upload" and j.path == "/a/x/v1")
        await cat.job_state(upload.id, "failed", error="boom")
        left, failed = cat.pending("/a/x")
        assert left == 1 and [j.id for j in failed] == [upload.id]

    run(body, tmp_path)

def test_renumber_moves_a_pending_version_past_the_numbers_taken(tmp_path: Path) -> None:
    """Another machine landed v2 first: ours becomes v4 (v3 is taken in L3 too), its job
    now writes v4's record, says why, and their v2 can then be merged in."""
    async def body(cat: Catalog):
        draft = await cat.create(ROOT_INO, "f.txt", 0o644, "w")
        await cat.commit(draft.ino, info(SHA_A))
        vfile = cat.lookup(ROOT_INO, "f.txt")
        v2 = await cat.commit(vfile.ino, info(SHA_B))
        job = next(j for j in cat.unfinished_jobs() if j.kind == "upload" and j.num == 2)
        parent, old, new = await cat.renumber(job.id, 4)
        assert (parent, old, new) == (vfile.ino, "v2", "v4")
        assert [v.num for v in cat.versions(vfile.ino)] == [1, 4] and cat.head(vfile.ino).ino == v2.ino
        moved = cat.job(job.id)
        assert moved.num == 4 and moved.key == layout.record_key(vfile.file_id, 4)
        assert layout.VersionRecord.from_json(moved.body).num == 4 and moved.path == "/f.txt/v4"
        assert "renumbered from v2" in moved.note
        counts, _ = await cat.merge_remote([], [_rec(vfile.file_id, 2, SHA_A)], set(), {vfile.file_id: 3}, seen=[])
        assert counts["versions"] == 1 and [v.num for v in cat.versions(vfile.ino)] == [1, 2, 4]
        assert (await cat.commit(vfile.ino, info(SHA_A))).num == 5

    run(body, tmp_path)


def test_seen_events_of_an_older_catalog_become_identities(tmp_path: Path) -> None:
    import sqlite3

    Catalog(tmp_path / "catalog.db").close()
    db = sqlite3.connect(tmp_path / "catalog.db")
    db.execute("INSERT INTO seen_events (key) VALUES ('ns/0000000000007-abcdef01-00000009.json')")
    db.commit()
    db.close()
    cat = Catalog(tmp_path / "catalog.db")
    try:
        assert cat.seen_events() == {"abcdef01-00000009", "ns/0000000000007-abcdef01-00000009.json"}
    finally:
        cat.close()


def test_versions_to_fetch_are_those_of_known_files_not_held_or_being_deleted(tmp_path: Path) -> None:
    async def body(cat: Catalog):
        draft = await cat.create(ROOT_INO, "f.txt", 0o644, "w")
        await cat.commit(draft.ino, info(SHA_A))
        vfile = cat.lookup(ROOT_INO, "f.txt")
        await cat.commit(vfile.ino, info(SHA_B))
        await cat.remove(vfile.ino, "v2", folder=False)  # v2 is being deleted here
        fid, other, new = vfile.file_id, "3" * 32, "4" * 32
        pairs = {(fid, 1), (fid, 2), (fid, 3), (other, 1), (new, 1)}
        assert cat.versions_to_fetch(pairs, {new}) == sorted([(fid, 3), (new, 1)])

    run(body, tmp_path)
