"""Unit tests of L1 (byte-bounded LRU) and L2 (atomic, content-addressed cache dir)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from relayfs.errors import IntegrityError
from relayfs.store.l1 import ChunkCache
from relayfs.store.l2 import DiskCache
from relayfs.store.layout import CHUNK_SIZE


def test_l1_stays_within_its_byte_budget() -> None:
    l1 = ChunkCache(budget=10)
    l1.put(("a", 0), b"12345")
    l1.put(("a", 1), b"12345")
    assert l1.get(("a", 0)) == b"12345"  # now most recent
    l1.put(("b", 0), b"123")
    assert l1.used <= 10
    assert l1.get(("a", 1)) is None and l1.get(("a", 0)) == b"12345"
    l1.drop_blob("a")
    assert not l1.holds_blob("a") and l1.used == 3
    l1.put(("huge", 0), b"x" * 11)
    assert l1.get(("huge", 0)) is None


def test_l2_seal_is_content_addressed(tmp_path: Path) -> None:
    l2 = DiskCache(tmp_path / "cache")
    assert oct(os.stat(tmp_path / "cache").st_mode & 0o777) == "0o700"
    data = os.urandom(CHUNK_SIZE + 10)
    names = []
    for _ in range(2):
        w = l2.new_work_file()
        l2.work_path(w).write_bytes(data)
        names.append(l2.seal(w))
    info = names[0]
    assert names[0] == names[1]
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == len(data)
    assert len(info.chunks) == 2
    assert l2.blob_path(info.sha256).read_bytes() == data
    assert list(l2.work.iterdir()) == []
    assert l2.read_chunk(info.sha256, 1, CHUNK_SIZE, info.chunks[1]) == data[CHUNK_SIZE:]


def test_l2_detects_a_corrupt_chunk(tmp_path: Path) -> None:
    l2 = DiskCache(tmp_path / "cache")
    w = l2.new_work_file()
    l2.work_path(w).write_bytes(b"hello world")
    info = l2.seal(w)
    path = l2.blob_path(info.sha256)
    path.chmod(0o600)
    path.write_bytes(b"hellO world")
    with pytest.raises(IntegrityError):
        l2.read_chunk(info.sha256, 0, CHUNK_SIZE, info.chunks[0])


def test_l2_copy_on_write_draft(tmp_path: Path) -> None:
    l2 = DiskCache(tmp_path / "cache")
    w = l2.new_work_file()
    l2.work_path(w).write_bytes(b"v1")
    info = l2.seal(w)
    draft = l2.new_work_file(from_sha=info.sha256)
    with open(l2.work_path(draft), "ab") as f:
        f.write(b"+more")
    assert l2.blob_path(info.sha256).read_bytes() == b"v1"
    assert l2.seal(draft).size == 7


def test_l2_commit_of_same_bytes_replaces_a_rotten_blob(tmp_path: Path) -> None:
    l2 = DiskCache(tmp_path / "cache")
    w = l2.new_work_file()
    l2.work_path(w).write_bytes(b"precious")
    info = l2.seal(w)
    l2.blob_path(info.sha256).write_bytes(b"prEcious")  # bit rot behind our back
    again = l2.new_work_file()
    l2.work_path(again).write_bytes(b"precious")
    assert l2.seal(again).sha256 == info.sha256
    assert l2.blob_path(info.sha256).read_bytes() == b"precious"


def test_l1_eviction_lets_go_of_the_evicted_chunk() -> None:
    """An evicted chunk must be freed: a reference kept per eviction grew the daemon by
    every byte it ever cached."""
    import sys

    l1 = ChunkCache(budget=4 * 1024)
    chunk = bytes(4 * 1024) + b"unique"
    l1.put(("a", 0), chunk[:4096])
    first = l1.get(("a", 0))
    assert first is not None
    before = sys.getrefcount(first)
    l1.put(("b", 0), bytes(4096))  # evicts ("a", 0)
    assert l1.get(("a", 0)) is None and l1.used == 4096
    assert sys.getrefcount(first) == before - 1


def test_thaw_fetches_what_a_reader_waits_for_alone() -> None:
    from relayfs.store.thaw import RANGE_CHUNKS, Thaw

    thaw = Thaw("s" * 64, 20 * CHUNK_SIZE, CHUNK_SIZE, tuple("h" * 20), -1)
    assert thaw.next_range() == [0]  # the front first, alone: the first byte waits for one chunk
    assert thaw.next_range() == list(range(1, 1 + RANGE_CHUNKS))
    thaw.want(12)
    assert thaw.next_range() == [12]
    assert thaw.next_range() == list(range(1 + RANGE_CHUNKS, 1 + 2 * RANGE_CHUNKS))


def test_sequential_reader_checks_the_next_chunk_into_l1(tmp_path: Path) -> None:
    import trio

    from relayfs.store.thaw import Thawer
    from relayfs.store.tiers import Tiers

    l2 = DiskCache(tmp_path / "cache")
    data = os.urandom(3 * CHUNK_SIZE)
    w = l2.new_work_file()
    l2.work_path(w).write_bytes(data)
    info = l2.seal(w)
    l1 = ChunkCache(budget=16 * CHUNK_SIZE)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            tiers = Tiers(l1, l2, Thawer(l2, None, nursery, parallel=1, on_done=None), l2_budget=1 << 30)  # type: ignore[arg-type]
            reader = tiers.open(info.sha256, info.size, info.chunk_size, info.chunks)
            try:
                assert await reader.read(0, 4096) == data[:4096]
                assert l1.get((info.sha256, 1)) == data[CHUNK_SIZE:2 * CHUNK_SIZE]  # read ahead, checked
                assert await reader.read(CHUNK_SIZE, CHUNK_SIZE) == data[CHUNK_SIZE:2 * CHUNK_SIZE]
                assert await reader.read(2 * CHUNK_SIZE, 10) == data[2 * CHUNK_SIZE:2 * CHUNK_SIZE + 10]
            finally:
                reader.close()

    trio.run(main)


def test_a_failed_thaw_keeps_its_file_open_until_its_fetchers_stop(tmp_path: Path) -> None:
    """A reader woken by a failed chunk releases the thaw while another fetcher may still be
    writing its own chunk: the file must stay open until the thaw itself has finished."""
    from relayfs.store.thaw import Thaw

    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o600)
    thaw = Thaw("s" * 64, 2 * CHUNK_SIZE, CHUNK_SIZE, ("a", "b"), fd)
    thaw.readers = 1
    thaw.fail(IntegrityError("chunk 1 does not match"))
    assert all(ev.is_set() for ev in thaw.arrived)
    thaw.release()
    os.pwrite(fd, b"still open", 0)  # a fetcher still writing
    thaw.finished.set()  # what Thawer._run does once every fetcher has stopped
    thaw.close_if_idle()
    with pytest.raises(OSError):
        os.fstat(fd)
