"""L3 object stores: both backends must behave the same through the ObjectStore protocol."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from relayfs.store.l3 import (
    BucketMissing,
    DirStore,
    ObjectMissing,
    ObjectStore,
    S3Store,
    StoreAuthError,
    StoreUnavailable,
    make_store,
)
from s3server import S3Server, free_port

MiB = 1024 * 1024
PART = 5 * MiB


def _pattern(size: int, seed: int = 0) -> bytes:
    """Bytes that differ per position, so a misplaced part or range shows up."""
    block = bytes((i * 7 + seed) % 251 for i in range(251))
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture(params=["dir", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """Each test runs once per backend."""
    if request.param == "dir":
        s: ObjectStore = DirStore(str(tmp_path / "bucket"))
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        bucket: str = request.getfixturevalue("bucket")
        s = S3Store(bucket, "team/", endpoint_url=server.endpoint, part_size=PART, threads=3)
    s.check()
    return s


def _write_file(tmp_path: Path, size: int, seed: int = 1) -> tuple[Path, bytes]:
    data = _pattern(size, seed)
    path = tmp_path / f"src-{size}-{seed}"
    path.write_bytes(data)
    return path, data


def _progress() -> tuple[list[int], Callable[[int], None]]:
    calls: list[int] = []
    return calls, calls.append


# ---------------------------------------------------------------- both backends


def test_put_get_bytes(store: ObjectStore) -> None:
    assert store.put_bytes("a/b/c.json", b"hello") is True
    assert store.get_bytes("a/b/c.json") == b"hello"
    assert store.put_bytes("a/b/c.json", b"replaced") is True
    assert store.get_bytes("a/b/c.json") == b"replaced"
    assert store.put_bytes("empty", b"") is True
    assert store.get_bytes("empty") == b""
    assert store.head("empty") == 0


def test_put_if_absent_keeps_first(store: ObjectStore) -> None:
    assert store.put_bytes("records/x/v1.json", b"first", if_absent=True) is True
    assert store.put_bytes("records/x/v1.json", b"second", if_absent=True) is False
    assert store.get_bytes("records/x/v1.json") == b"first"


def test_put_if_absent_concurrent_single_winner(store: ObjectStore) -> None:
    start = threading.Barrier(8)

    def attempt(n: int) -> bool:
        start.wait()
        return store.put_bytes("records/race/v1.json", f"writer {n}".encode(), if_absent=True)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))
    assert results.count(True) == 1
    assert store.get_bytes("records/race/v1.json") == f"writer {results.index(True)}".encode()


def test_concurrent_put_and_delete_in_one_directory(store: ObjectStore) -> None:
    # DirStore prunes empty directories on delete while other threads create files in them.
    def churn(n: int) -> None:
        for i in range(20):
            store.put_bytes(f"shared/dir/{n}-{i}", b"x")
            store.delete(f"shared/dir/{n}-{i}")
        store.put_bytes(f"shared/dir/{n}-last", b"kept")

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(churn, range(6)))
    assert list(store.list("shared/")) == sorted(f"shared/dir/{n}-last" for n in range(6))


def test_no_multipart_upload_left_open(store: ObjectStore, tmp_path: Path) -> None:
    path, data = _write_file(tmp_path, 2 * PART + 7)
    store.put_file("blobs/done", str(path))
    assert store.multipart_uploads("blobs/") == []
    store.abort_multipart("blobs/done", "no-such-upload")  # nothing open: nothing happens
    assert store.get_bytes("blobs/done") == data
    with pytest.raises(ValueError):
        store.multipart_uploads("../escape")


def test_put_file_small(store: ObjectStore, tmp_path: Path) -> None:
    path, data = _write_file(tmp_path, 300_000)
    calls, progress = _progress()
    store.put_file("blobs/small", str(path), progress=progress)
    assert store.get_bytes("blobs/small") == data
    assert sum(calls) == len(data)


def test_put_file_multipart(store: ObjectStore, tmp_path: Path) -> None:
    path, data = _write_file(tmp_path, 12 * MiB + 12345)
    calls, progress = _progress()
    store.put_file("blobs/big", str(path), progress=progress)
    assert store.head("blobs/big") == len(data)
    assert store.get_bytes("blobs/big") == data
    assert sum(calls) == len(data)
    assert len(calls) > 1  # reported as it went, not once at the end


def test_put_file_empty(store: ObjectStore, tmp_path: Path) -> None:
    path, _ = _write_file(tmp_path, 0)
    store.put_file("blobs/empty", str(path))
    assert store.head("blobs/empty") == 0


def test_put_file_missing_source_is_oserror(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.put_file("blobs/x", str(tmp_path / "does-not-exist"))
    assert store.head("blobs/x") is None


def test_get_range(store: ObjectStore) -> None:
    data = _pattern(10_000)
    store.put_bytes("r", data)
    assert store.get_range("r", 0, 10) == data[:10]
    assert store.get_range("r", 1234, 4321) == data[1234:5555]
    assert store.get_range("r", 9_990, 100) == data[9_990:]  # tail: fewer bytes
    assert store.get_range("r", 9_999, 1) == data[-1:]
    assert store.get_range("r", 10_000, 5) == b""  # at the end
    assert store.get_range("r", 50_000, 5) == b""  # past the end
    assert store.get_range("r", 5, 0) == b""
    with pytest.raises(ValueError):
        store.get_range("r", -1, 5)


def test_missing_objects(store: ObjectStore) -> None:
    assert store.head("nope") is None
    with pytest.raises(ObjectMissing):
        store.get_bytes("nope")
    with pytest.raises(ObjectMissing):
        store.get_range("nope", 0, 10)
    store.put_bytes("dir/child", b"x")
    assert store.head("dir") is None  # a "directory" of keys is not an object
    with pytest.raises(ObjectMissing):
        store.get_bytes("dir")


def test_head_size(store: ObjectStore) -> None:
    store.put_bytes("h", b"12345")
    assert store.head("h") == 5


def test_list_order_start_after_and_prefix(store: ObjectStore) -> None:
    # Chosen so that per-directory walking would get the order wrong: '-' < '/' < '0'.
    keys = ["a-b", "a/b", "a/c/d", "a0", "b", "ns/001.json", "ns/002.json", "ns/010.json",
            "records/f/v1.json", "records/f/v1.deleted", "é"]
    for key in reversed(keys):
        store.put_bytes(key, key.encode())
    assert list(store.list("")) == sorted(keys)
    assert list(store.list("a")) == ["a-b", "a/b", "a/c/d", "a0"]
    assert list(store.list("a/")) == ["a/b", "a/c/d"]
    assert list(store.list("ns/")) == ["ns/001.json", "ns/002.json", "ns/010.json"]
    assert list(store.list("ns/", start_after="ns/001.json")) == ["ns/002.json", "ns/010.json"]
    assert list(store.list("ns/", start_after="ns/002")) == ["ns/002.json", "ns/010.json"]
    assert list(store.list("ns/", start_after="ns/010.json")) == []
    assert list(store.list("", start_after="a/c/d")) == sorted(keys)[3:]
    assert list(store.list("records/f/")) == ["records/f/v1.deleted", "records/f/v1.json"]
    assert list(store.list("zzz/")) == []
    assert list(store.list("ns/0")) == ["ns/001.json", "ns/002.json", "ns/010.json"]


def test_list_paginates(store: ObjectStore) -> None:
    keys = [f"p/{i:05d}" for i in range(1100)]  # more than one 1000-key S3 page
    with ThreadPoolExecutor(8) as pool:  # the store is shared by worker threads in RelayFS too
        list(pool.map(lambda key: store.put_bytes(key, b""), keys))
    assert list(store.list("p/")) == keys
    assert list(store.list("p/", start_after="p/00999")) == keys[1000:]


def test_delete_idempotent(store: ObjectStore) -> None:
    store.put_bytes("d/e/f", b"x")
    store.put_bytes("d/g", b"y")
    store.delete("d/e/f")
    assert store.head("d/e/f") is None
    store.delete("d/e/f")
    store.delete("never/existed")
    assert list(store.list("")) == ["d/g"]
    store.put_bytes("d/e/f", b"back")  # a pruned parent directory comes back
    assert store.get_bytes("d/e/f") == b"back"


@pytest.mark.parametrize(
    "key",
    ["", "/abs", "a/../b", "..", "../x", "a/..", "nul\x00byte", "back\\slash", "a//b", "a/",
     "./a", "x" * 1025],
)
def test_hostile_keys_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        store.get_bytes(key)
    with pytest.raises(ValueError):
        store.head(key)
    with pytest.raises(ValueError):
        store.delete(key)


@pytest.mark.parametrize("prefix", ["/abs", "../x", "a/../b", "nul\x00", "b\\s"])
def test_hostile_list_prefix_refused(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(ValueError):
        list(store.list(prefix))


def test_description_has_no_secrets(store: ObjectStore) -> None:
    assert "testing" not in store.description  # the moto secret key
    assert store.description


# ---------------------------------------------------------------- DirStore specifics


def test_dirstore_layout_and_no_temp_leftovers(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = DirStore(str(root))
    store.check()
    store.put_bytes("x/y", b"1")
    store.put_bytes("x/y", b"2", if_absent=True)
    src, _ = _write_file(tmp_path, 3 * MiB + 1)
    calls, progress = _progress()
    store.put_file("x/z", str(src), progress=progress)
    assert (root / "x" / "y").read_bytes() == b"1"
    assert calls == [MiB, MiB, MiB, 1]
    assert os.listdir(root / ".tmp") == []
    with pytest.raises(ValueError):
        store.put_bytes(".tmp/x", b"")
    assert list(store.list("")) == ["x/y", "x/z"]


def test_dirstore_check_creates_root(tmp_path: Path) -> None:
    root = tmp_path / "new" / "store"
    store = DirStore(str(root))
    with pytest.raises(BucketMissing):
        store.put_bytes("k", b"")  # writes never create the root; check() does
    store.check()
    assert root.is_dir()
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"


def test_dirstore_vanished_root_is_bucket_missing(tmp_path: Path) -> None:
    store = DirStore(str(tmp_path / "gone"))
    with pytest.raises(BucketMissing):
        store.get_bytes("k")
    with pytest.raises(BucketMissing):
        list(store.list(""))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_dirstore_unwritable_root(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    (root / ".tmp").mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(StoreAuthError):
            DirStore(str(root)).check()
    finally:
        root.chmod(0o700)


# ---------------------------------------------------------------- S3Store specifics


def test_s3_prefix_isolation(s3_server: S3Server, bucket: str) -> None:
    one = S3Store(bucket, "one", endpoint_url=s3_server.endpoint)
    two = S3Store(bucket, "/two/sub/", endpoint_url=s3_server.endpoint)
    bare = S3Store(bucket, "", endpoint_url=s3_server.endpoint)
    one.put_bytes("k", b"1")
    two.put_bytes("k", b"2")
    assert one.get_bytes("k") == b"1"
    assert two.get_bytes("k") == b"2"
    assert list(one.list("")) == ["k"]
    assert list(two.list("")) == ["k"]
    assert sorted(bare.list("")) == ["one/k", "two/sub/k"]
    raw = s3_server.client().list_objects_v2(Bucket=bucket)
    assert sorted(o["Key"] for o in raw["Contents"]) == ["one/k", "two/sub/k"]  # no '//'
    one.delete("k")
    assert two.head("k") == 1


def test_s3_check_missing_bucket(s3_server: S3Server) -> None:
    store = S3Store("relayfs-no-such-bucket", endpoint_url=s3_server.endpoint)
    with pytest.raises(BucketMissing) as info:
        store.check()
    assert "relayfs-no-such-bucket" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(BucketMissing):
        store.get_bytes("k")
    with pytest.raises(BucketMissing):
        list(store.list(""))


def test_s3_check_unreachable(s3_server: S3Server) -> None:
    # Nothing listens on this port: connection refused, after boto3's retries.
    store = S3Store("b", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreUnavailable) as info:
        store.check()
    assert "\n" not in str(info.value)
    with pytest.raises(StoreUnavailable):
        store.put_bytes("k", b"x")


def test_s3_outage_and_recovery(s3_server: S3Server, bucket: str) -> None:
    store = S3Store(bucket, endpoint_url=s3_server.endpoint)
    store.put_bytes("before", b"kept")
    s3_server.stop()
    try:
        with pytest.raises(StoreUnavailable):
            store.get_bytes("before")
        with pytest.raises(StoreUnavailable):
            store.check()
    finally:
        s3_server.start()
    store.check()
    assert store.get_bytes("before") == b"kept"  # the outage did not wipe the server


def test_s3_no_credentials(s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # moto accepts any key pair unless IAM auth is switched on, so exercise the path a
    # fresh machine hits: no credentials anywhere in boto3's default chain.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3Store(bucket, endpoint_url=s3_server.endpoint)
    with pytest.raises(StoreAuthError) as info:
        store.check()
    assert "credentials" in str(info.value)


def _uploads(s3_server: S3Server, bucket: str) -> list[dict[str, object]]:
    return list(s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def test_s3_multipart_aborted_when_source_shrinks(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    path, _ = _write_file(tmp_path, 3 * PART)
    store = S3Store(bucket, endpoint_url=s3_server.endpoint, part_size=PART, threads=1)

    def shrink(_n: int) -> None:
        os.truncate(path, PART + 10)  # after part 1 the rest of the file is gone

    with pytest.raises(OSError):
        store.put_file("blobs/shrunk", str(path), progress=shrink)
    assert _uploads(s3_server, bucket) == []
    assert store.head("blobs/shrunk") is None


def test_s3_multipart_aborted_when_caller_fails(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    path, _ = _write_file(tmp_path, 3 * PART)
    store = S3Store(bucket, endpoint_url=s3_server.endpoint, part_size=PART, threads=2)

    class Cancelled(Exception):
        """The caller gave up (e.g. the file was deleted before its upload finished)."""

    def cancel(_n: int) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        store.put_file("blobs/cancelled", str(path), progress=cancel)
    assert _uploads(s3_server, bucket) == []
    assert store.head("blobs/cancelled") is None


def test_s3_multipart_aborted_on_outage(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    path, _ = _write_file(tmp_path, 3 * PART)
    store = S3Store(bucket, endpoint_url=s3_server.endpoint, part_size=PART, threads=1)
    seen: list[int] = []

    def outage_then_recover(n: int) -> None:
        seen.append(n)
        if len(seen) == 1:
            s3_server.stop()

    try:
        with pytest.raises(StoreUnavailable):
            store.put_file("blobs/outage", str(path), progress=outage_then_recover)
    finally:
        s3_server.start()
    # The abort could not reach the server during the outage either; nothing half-written is
    # visible, and the store retries the abort on its next check() once the server is back.
    assert store.head("blobs/outage") is None
    assert len(_uploads(s3_server, bucket)) == 1
    store.check()
    assert _uploads(s3_server, bucket) == []


def test_s3_lists_and_aborts_uploads_a_crash_left_open(s3_server: S3Server, bucket: str) -> None:
    # A daemon killed mid-upload leaves its multipart upload open, parts and all; the next
    # attempt finds it under the blob's key and aborts it. Other prefixes are not touched.
    store = S3Store(bucket, "team/", endpoint_url=s3_server.endpoint, part_size=PART)
    raw = s3_server.client()
    left = raw.create_multipart_upload(Bucket=bucket, Key="team/blobs/ab/abc")["UploadId"]
    raw.upload_part(Bucket=bucket, Key="team/blobs/ab/abc", UploadId=left, PartNumber=1, Body=b"x" * PART)
    other = raw.create_multipart_upload(Bucket=bucket, Key="elsewhere/blobs/ab/abc")["UploadId"]
    assert store.multipart_uploads("blobs/ab/abc") == [("blobs/ab/abc", left)]
    assert store.multipart_uploads("records/") == []
    store.abort_multipart("blobs/ab/abc", left)
    store.abort_multipart("blobs/ab/abc", left)  # already gone: nothing to do, no error
    assert store.multipart_uploads("") == []
    assert [u["UploadId"] for u in _uploads(s3_server, bucket)] == [other]
    assert store.head("blobs/ab/abc") is None


# ---------------------------------------------------------------- make_store


def test_make_store_forms(tmp_path: Path) -> None:
    s3 = make_store("s3://bkt/some/prefix", endpoint_url="http://127.0.0.1:9")
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.part_size) == ("bkt", "some/prefix/", 8 * MiB)
    assert s3.description == "s3://bkt/some/prefix/ at http://127.0.0.1:9"
    bare = make_store("s3://bkt", endpoint_url="http://127.0.0.1:9")
    assert isinstance(bare, S3Store) and bare.prefix == ""
    storj = make_store("storj://bkt/p")
    assert isinstance(storj, S3Store)
    assert storj.part_size == 64 * MiB
    assert "gateway.storjshare.io" in storj.description
    assert storj.threads == 2  # 2 parts of 64 MiB in flight per upload
    storj_small = make_store("storj://bkt", part_size=16 * MiB)
    assert isinstance(storj_small, S3Store) and storj_small.part_size == 16 * MiB
    own_gateway = make_store("storj://bkt", endpoint_url="http://127.0.0.1:7777")
    assert isinstance(own_gateway, S3Store) and own_gateway.endpoint == "http://127.0.0.1:7777"
    assert own_gateway.part_size == 64 * MiB
    local = make_store(f"file://{tmp_path}/l3")
    assert isinstance(local, DirStore) and local.root == f"{tmp_path}/l3"
    secret = make_store("s3://bkt", endpoint_url="http://user:hunter2@127.0.0.1:9")
    assert "hunter2" not in secret.description


@pytest.mark.parametrize(
    "url", ["", "bucket", "http://x/y", "s3://", "file://relative/path", "file:relative",
            "s3://b/p?x=1", "gs://b"],
)
def test_make_store_rejects(url: str) -> None:
    with pytest.raises(ValueError) as info:
        make_store(url)
    assert "s3://BUCKET" in str(info.value) and "\n" not in str(info.value)
