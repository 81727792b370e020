"""The Python API (``import relayfs``) against the real S3 server, alone and next to a mount."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

import relayfs
from mount import Mount, poll
from relayfs.engine import StartError
from relayfs.errors import AlreadyExists, InvalidName, IsADirectory, NotADirectory, NotFound, RelayError

MiB = 1024 * 1024


def _keys(s3_server, bucket: str, prefix: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


@pytest.fixture
def open_client(s3_server, bucket: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Opens SDK clients on the test bucket, each with its own cache dir; all closed at the end."""
    clients: list[relayfs.Client] = []

    def make(name: str = "sdk", **settings: object) -> relayfs.Client:
        settings = {"l3": f"s3://{bucket}", "s3_endpoint": s3_server.endpoint,
                    "cache_dir": str(tmp_path / name), **settings}
        client = relayfs.open(**settings)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


def test_put_get_versions_rollback_delete_and_wait(open_client, s3_server, bucket: str) -> None:  # type: ignore[no-untyped-def]
    fs = open_client()
    first = fs.put("reports/q3.txt", b"first")
    assert (first.path, first.version, first.new) == ("/reports/q3.txt", 1, True)
    assert first.job is not None and any(j.id == first.job for j in fs.jobs())
    second = fs.put("reports/q3.txt", io.BytesIO(b"second"))
    assert second.version == 2
    same = fs.put("reports/q3.txt", b"second")  # unchanged bytes commit nothing
    assert (same.version, same.new, same.job) == (2, False, None)
    assert fs.listdir() == ["reports"] and fs.listdir("reports") == ["q3.txt"]

    fs.wait(timeout=60)
    assert all(j.state == "done" for j in fs.jobs())
    rows = fs.versions("reports/q3.txt")
    assert [(v.version, v.size, v.state) for v in rows] == [(1, 5, "durable"), (2, 6, "durable")]
    assert rows[1].sha256 == hashlib.sha256(b"second").hexdigest() and "L3" in rows[1].tier
    assert fs.read("reports/q3.txt") == b"second" and fs.read("reports/q3.txt", 1) == b"first"
    assert fs.read("reports/q3.txt", "v2") == b"second"
    blobs = _keys(s3_server, bucket, "blobs/")
    assert {k.rsplit("/", 1)[1] for k in blobs} == {hashlib.sha256(b).hexdigest() for b in (b"first", b"second")}

    back = fs.rollback("reports/q3.txt", 1)
    assert back.version == 3 and fs.read("reports/q3.txt") == b"first"
    fs.wait(timeout=60)
    assert _keys(s3_server, bucket, "blobs/") == blobs  # a rollback uploads no bytes

    assert fs.delete("reports/q3.txt", 2) == [2]
    assert [v.version for v in fs.versions("reports/q3.txt")] == [1, 3]
    assert fs.put("reports/q3.txt", b"fourth").version == 4  # numbers are never reused
    fs.wait(timeout=60)
    assert "records/" in next(iter(k for k in _keys(s3_server, bucket, "records/") if k.endswith(".deleted")))
    assert sorted(fs.delete("reports/q3.txt")) == [1, 3, 4]
    assert fs.listdir("reports") == []
    fs.wait(timeout=60)
    assert not _keys(s3_server, bucket, "blobs/")  # no version refers to any blob any more


def test_get_streams_and_seeks_and_a_fresh_client_thaws_from_l3(open_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(5 * MiB + 123)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    fs = open_client("writer")
    assert fs.put("big.bin", src).version == 1  # a local path streams from disk
    fs.wait(timeout=120)
    fs.close()

    cold = open_client("reader")  # an empty cache: the catalog and bytes come from L3
    assert [v.tier for v in cold.versions("big.bin")] == ["L3"]
    with cold.get("big.bin") as f:
        assert f.size == len(data)
        f.seek(3 * MiB + 7)
        assert f.read(100) == data[3 * MiB + 7: 3 * MiB + 107]
        f.seek(0)
        pieces = iter(lambda: f.read(MiB - 1), b"")
        assert hashlib.sha256(b"".join(pieces)).digest() == hashlib.sha256(data).digest()
        assert f.read() == b""
    assert "L2" in cold.versions("big.bin")[0].tier


def test_put_returns_at_once_while_l3_is_down_and_uploads_later(open_client, s3_server, bucket: str) -> None:  # type: ignore[no-untyped-def]
    fs = open_client(retry_base_seconds=0.2, retry_max_seconds=1)
    s3_server.stop()
    try:
        put = fs.put("offline.txt", b"written during an outage")
        assert put.version == 1 and fs.read("offline.txt") == b"written during an outage"
        poll(lambda: [j for j in fs.jobs() if j.state == "retrying" and j.last_error], "a retrying job")
        with pytest.raises(TimeoutError):
            fs.wait(timeout=0.5)
    finally:
        s3_server.start()
    fs.wait(timeout=120)
    assert any(k.endswith("/v0000000001.json") for k in _keys(s3_server, bucket, "records/"))


def test_bad_calls_raise_typed_errors_and_change_nothing(open_client, s3_server, bucket: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fs = open_client()
    fs.put("folder/file.txt", b"kept")
    fs.wait(timeout=60)
    before = _keys(s3_server, bucket, "")
    with pytest.raises(NotFound):
        fs.get("nothing-here.txt")
    with pytest.raises(NotFound):
        fs.get("folder/file.txt", 9)
    with pytest.raises(IsADirectory):
        fs.put("folder", b"x")
    with pytest.raises(IsADirectory):
        fs.versions("folder")
    with pytest.raises(InvalidName):
        fs.put("", b"x")
    with pytest.raises(AlreadyExists, match="reserved"):
        fs.put(".jobs", b"x")
    with pytest.raises(NotADirectory):
        fs.put("folder/file.txt/inner", b"x")
    with pytest.raises(NotFound):
        fs.rollback("folder/file.txt", 7)
    assert fs.read("folder/file.txt") == b"kept" and [v.version for v in fs.versions("folder/file.txt")] == [1]
    assert _keys(s3_server, bucket, "") == before

    with pytest.raises(StartError, match="in use"):
        relayfs.open(l3=f"s3://{bucket}", s3_endpoint=s3_server.endpoint, cache_dir=str(fs.config.cache))
    with pytest.raises(StartError, match="does not exist|NoSuchBucket|no bucket"):
        relayfs.open(l3="s3://no-such-bucket-here", s3_endpoint=s3_server.endpoint, cache_dir=str(tmp_path / "x"))
    fs.close()
    with pytest.raises(RelayError, match="closed"):
        fs.put("late.txt", b"x")


def test_mount_and_sdk_see_each_others_versions(make_mount, open_client, bucket: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RELAYFS_POLL_SECONDS", "1")
    m: Mount = make_mount(f"s3://{bucket}")
    fs = open_client()
    (m.path / "docs").mkdir()
    (m.path / "docs" / "plan.txt").write_bytes(b"from the mount")
    m.wait()
    fs.refresh()
    assert fs.listdir("docs") == ["plan.txt"] and fs.read("docs/plan.txt") == b"from the mount"

    put = fs.put("docs/plan.txt", b"from the script")
    assert put.version == 2
    fs.put("docs/new.txt", b"a new file from the script")
    fs.wait(timeout=60)
    latest = m.path / "docs" / "plan.txt" / "latest"
    poll(lambda: latest.read_bytes() == b"from the script", "the mount to pick up the script's v2", timeout=60)
    assert (m.path / "docs" / "plan.txt" / "v1").read_bytes() == b"from the mount"
    new = m.path / "docs" / "new.txt" / "v1"  # its feed event may land a poll later
    poll(lambda: new.exists() and new.read_bytes() == b"a new file from the script", "the mount to pick up new.txt", 60)

    (m.path / "docs" / "plan.txt" / "latest").write_bytes(b"mount again")  # the number after the script's
    assert sorted(os.listdir(m.path / "docs" / "plan.txt")) == ["latest", "v1", "v2", "v3"]
    m.wait()
    os.unlink(m.path / "docs" / "plan.txt" / "v1")
    m.wait()
    fs.refresh()
    assert [v.version for v in fs.versions("docs/plan.txt")] == [2, 3]
    assert fs.read("docs/plan.txt") == b"mount again"
