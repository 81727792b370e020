"""The tiers as a user sees them: a fresh machine sees the whole bucket, cold versions thaw
with the right bytes, and corrupt bytes (in L3 or in L2) are EIO, never wrong data."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from mount import Mount, poll, relayfs, sh

MiB = 1024 * 1024




def xattr(path: Path, name: str) -> str:
    return os.getxattr(path, f"user.relayfs.{name}").decode()


def tree(root: Path) -> dict[str, tuple[int, int, bytes] | None]:
    """Every path under a mount (not .jobs): folders map to None, files to (size, mtime, bytes)."""
    out: dict[str, tuple[int, int, bytes] | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".":
            dirnames.remove(".jobs")
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = None
        for f in filenames:
            p = Path(dirpath) / f
            st = p.stat()
            key = os.path.normpath(os.path.join(rel, f))
            out[key] = (st.st_size, st.st_mtime_ns if f != "latest" else 0, p.read_bytes())
    return out


def versions_table(path: Path) -> list[tuple[str, str, str]]:
    """(version, size, sha prefix) rows of ``relayfs versions``; state and tier differ by mount."""
    lines = relayfs("versions", str(path)).stdout.splitlines()
    assert lines[0].split()[0] == "VERSION"
    return [(cols[0], cols[1], cols[4]) for cols in (line.split() for line in lines[1:])]


def bucket_of(m: Mount) -> str:
    return m.l3.removeprefix("s3://")


def blob_key(sha: str) -> str:
    return f"blobs/{sha[:2]}/{sha}"


def test_fresh_cache_sees_the_whole_bucket(make_mount, bucket: str) -> None:  # type: ignore[no-untyped-def]
    a = make_mount(f"s3://{bucket}")
    deep = os.urandom(200_000)
    sh(
        "mkdir -p docs/sub empty/inner"
        " && echo top > top.txt"
        " && echo one > docs/r.txt && echo two > docs/r.txt/latest && echo three >> docs/r.txt/latest"
        " && rm docs/r.txt/v2"
        " && echo old-name > docs/name1.txt && echo again >> docs/name1.txt/latest"
        " && mv docs/name1.txt docs/sub/renamed.txt"
        " && mkdir x && echo in-x > x/f.txt && mv x y",
        cwd=a.path,
    )
    (a.path / "docs" / "sub" / "deep.bin").write_bytes(deep)
    a.wait()

    b = make_mount(f"s3://{bucket}")  # a fresh machine: empty cache dir
    assert not any((b.cache / "blobs").iterdir())
    seen = tree(b.path)
    assert set(seen) == {
        "docs", "docs/sub", "empty", "empty/inner", "y", "top.txt", "docs/r.txt", "docs/sub/renamed.txt",
        "docs/sub/deep.bin", "y/f.txt",
        "top.txt/v1", "top.txt/latest",
        "docs/r.txt/v1", "docs/r.txt/v3", "docs/r.txt/latest",
        "docs/sub/renamed.txt/v1", "docs/sub/renamed.txt/v2", "docs/sub/renamed.txt/latest",
        "docs/sub/deep.bin/v1", "docs/sub/deep.bin/latest",
        "y/f.txt/v1", "y/f.txt/latest",
    }
    assert seen["docs/r.txt/v1"][2] == b"one\n"  # type: ignore[index]
    assert seen["docs/r.txt/v3"][2] == b"two\nthree\n"  # type: ignore[index]
    assert seen["docs/r.txt/latest"][2] == b"two\nthree\n"  # type: ignore[index]
    assert seen["docs/sub/renamed.txt/v2"][2] == b"old-name\nagain\n"  # type: ignore[index]
    assert seen["docs/sub/deep.bin/v1"][2] == deep  # type: ignore[index]
    assert seen["y/f.txt/v1"][2] == b"in-x\n"  # type: ignore[index]
    assert seen == tree(a.path)  # same bytes, sizes and commit times on both machines
    for f in ("top.txt", "docs/r.txt", "docs/sub/renamed.txt", "docs/sub/deep.bin", "y/f.txt"):
        assert versions_table(b.path / f) == versions_table(a.path / f)
        for v in os.listdir(b.path / f):
            assert xattr(b.path / f / v, "sha256") == xattr(a.path / f / v, "sha256")
            assert xattr(b.path / f / v, "state") == "durable"
    # numbers are never reused: the next version after v3 (v2 was deleted) is v4
    sh("echo four > docs/r.txt/latest", cwd=b.path)
    assert sorted(os.listdir(b.path / "docs" / "r.txt")) == ["latest", "v1", "v3", "v4"]


def test_tier_xattr_goes_from_l3_to_l2_after_reading(make_mount, bucket: str) -> None:  # type: ignore[no-untyped-def]
    a = make_mount(f"s3://{bucket}")
    data = os.urandom(3 * MiB + 5)
    (a.path / "f.bin").write_bytes(data)
    v1 = a.path / "f.bin" / "v1"
    assert "L2" in xattr(v1, "tier").split(",")  # written on this machine: in the cache dir
    a.wait()
    assert "L3" in xattr(v1, "tier").split(",")

    b = make_mount(f"s3://{bucket}")
    cold = b.path / "f.bin" / "v1"
    assert xattr(cold, "tier") == "L3"
    assert cold.read_bytes() == data
    tiers = poll(lambda: (t := xattr(cold, "tier").split(",")) and "L2" in t and t, "the thaw to land in L2")
    assert "L3" in tiers
    assert "L2" in relayfs("versions", str(b.path / "f.bin")).stdout.splitlines()[1].split()[-1]


def test_thaw_multi_mib_read_from_the_middle_first(make_mount, bucket: str) -> None:  # type: ignore[no-untyped-def]
    a = make_mount(f"s3://{bucket}")
    data = os.urandom(5 * MiB + 123)
    (a.path / "big.bin").write_bytes(data)
    a.wait()

    b = make_mount(f"s3://{bucket}")
    path = b.path / "big.bin" / "v1"
    assert path.stat().st_size == len(data)
    with open(path, "rb", buffering=0) as f:
        off = 3 * MiB + 777  # inside the fourth chunk, crossing nothing yet
        f.seek(off)
        assert f.read(100_000) == data[off:off + 100_000]
        off = 2 * MiB - 10  # across a chunk boundary
        f.seek(off)
        assert f.read(20) == data[off:off + 20]
        f.seek(len(data) - 50)  # the tail
        assert f.read(1000) == data[-50:]
        f.seek(0)
        assert f.read() == data
    assert (b.path / "big.bin" / "latest").read_bytes() == data
    poll(lambda: "L2" in xattr(path, "tier"), "the thaw to land in L2")
    assert (b.cache / "blobs" / xattr(path, "sha256")[:2] / xattr(path, "sha256")).read_bytes() == data


def test_blob_tampered_in_bucket_is_eio(make_mount, bucket: str, s3_server) -> None:  # type: ignore[no-untyped-def]
    a = make_mount(f"s3://{bucket}")
    good = os.urandom(2 * MiB + 1000)
    (a.path / "t.bin").write_bytes(good)
    sh("echo small > s.txt", cwd=a.path)
    a.wait()
    client = s3_server.client()
    sha = xattr(a.path / "t.bin" / "v1", "sha256")
    bad = bytearray(good)
    bad[MiB + 5] ^= 0xFF  # one flipped byte in the second chunk, same size
    client.put_object(Bucket=bucket, Key=blob_key(sha), Body=bytes(bad))
    small_sha = xattr(a.path / "s.txt" / "v1", "sha256")
    client.put_object(Bucket=bucket, Key=blob_key(small_sha), Body=b"evil\n")  # another size

    b = make_mount(f"s3://{bucket}")
    b.expect_error(r"integrity|does not match")
    for path in (b.path / "t.bin" / "v1", b.path / "s.txt" / "v1"):
        with pytest.raises(OSError) as info:
            with open(path, "rb") as f:
                f.read()
        assert info.value.errno == errno.EIO
    with pytest.raises(OSError) as info:  # and again: a failed thaw is not remembered as good
        with open(b.path / "t.bin" / "v1", "rb") as f:
            f.seek(MiB)
            f.read(10)
    assert info.value.errno == errno.EIO
    assert sh("cat t.bin/latest > /dev/null", cwd=b.path, check=False).returncode != 0
    log = b.log.read_text()
    assert re.search(rf"ERROR.*{sha[:12]}", log), "no log line names the corrupt blob"
    assert re.search(rf"ERROR.*{small_sha[:12]}", log), "no log line names the corrupt blob"
    assert not (b.cache / "blobs" / sha[:2] / sha).exists()  # nothing corrupt reached L2
    assert "L2" not in xattr(b.path / "t.bin" / "v1", "tier").split(",")


def test_blob_tampered_in_l2_is_eio(make_mount, bucket: str) -> None:  # type: ignore[no-untyped-def]
    m = make_mount(f"s3://{bucket}")
    data = os.urandom(MiB + 300)
    (m.path / "f.bin").write_bytes(data)
    sha = xattr(m.path / "f.bin" / "v1", "sha256")
    m.wait()
    m.stop()
    blob = m.cache / "blobs" / sha[:2] / sha
    raw = bytearray(blob.read_bytes())
    raw[10] ^= 0x01
    blob.write_bytes(bytes(raw))
    m.start()
    m.expect_error(r"integrity|corrupt")
    with pytest.raises(OSError) as info:
        (m.path / "f.bin" / "v1").read_bytes()
    assert info.value.errno == errno.EIO
    with pytest.raises(OSError) as info:
        (m.path / "f.bin" / "latest").read_bytes()
    assert info.value.errno == errno.EIO
    assert re.search(rf"ERROR.*{sha[:12]}", m.log.read_text()), "no log line names the corrupt blob"


def test_l1_serves_a_version_whose_l2_file_vanished(make_mount, bucket: str, s3_server) -> None:  # type: ignore[no-untyped-def]
    m = make_mount(f"s3://{bucket}")
    data = os.urandom(100_000)
    (m.path / "hot.bin").write_bytes(data)
    m.wait()
    latest = m.path / "hot.bin" / "latest"  # direct I/O: every read reaches the daemon
    assert latest.read_bytes() == data  # now in L1
    sha = xattr(latest, "sha256")
    assert "L1" in xattr(latest, "tier").split(",")
    (m.cache / "blobs" / sha[:2] / sha).unlink()  # behind the daemon's back
    assert xattr(latest, "tier") == "L1,L3"
    s3_server.stop()  # so the bytes can only come from RAM
    m.expect_error(r"thaw of blob .* L3 unreachable")
    try:
        assert latest.read_bytes() == data
        assert latest.read_bytes() == data
    finally:
        s3_server.start()
