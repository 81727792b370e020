"""SPEC "Integrity" and ``relayfs fsck``: bytes flipped in the L2 cache or in L3 are EIO with a
log line naming the version, never served; ``relayfs fsck`` checks L2 against the recorded
SHA-256, repairs from L3 what it can and reports (exit 1) what it cannot.

The cache and the bucket are damaged behind the mount's back, the way a failing disk or a
buggy tool would: by writing to the cache dir's blob files and by putting objects with boto3.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from mount import Mount, poll, relayfs, sh

MiB = 1024 * 1024


def sha_of(path: Path) -> str:
    return os.getxattr(path, "user.relayfs.sha256").decode()


def l2_blob(m: Mount, sha: str) -> Path:
    return m.cache / "blobs" / sha[:2] / sha


def flip(path: Path, offset: int) -> None:
    """One flipped bit, same size: only a hash can tell."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def fsck(*args: str) -> tuple[int, list[str]]:
    done = relayfs("fsck", *args, check=False)
    assert not done.stderr, done.stderr
    return done.returncode, done.stdout.splitlines()


def read_errno(path: Path) -> int:
    with pytest.raises(OSError) as info:
        with open(path, "rb") as f:
            f.read()
    return info.value.errno


def jobs_of(m: Mount) -> dict[str, dict[str, str]]:
    """``.jobs/`` as {path: fields} for upload jobs."""
    out = {}
    for name in os.listdir(m.path / ".jobs"):
        fields = dict(line.split(": ", 1) for line in (m.path / ".jobs" / name).read_text().splitlines())
        if fields["kind"] == "upload":
            out[fields["path"]] = fields
    return out


def test_fsck_of_a_healthy_mount(make_mount, bucket: str) -> None:  # type: ignore[no-untyped-def]
    a = make_mount(f"s3://{bucket}")
    sh("mkdir d && echo one > d/a.txt && echo two > d/a.txt/latest && echo one > d/same.txt", cwd=a.path)
    (a.path / "big.bin").write_bytes(os.urandom(2 * MiB + 17))
    (a.path / "empty").write_bytes(b"")
    relayfs("rollback", str(a.path / "d" / "a.txt"), "v1")
    code, out = fsck(str(a.path))  # before the uploads are done: everything is in L2
    assert code == 0
    assert out == ["fsck /: 6 versions, 4 blobs (4 in L2, 0 only in L3): 0 repaired, 0 problems left"]
    a.wait()
    assert fsck(str(a.path / "d"))[1] == ["fsck /d: 4 versions, 2 blobs (2 in L2, 0 only in L3): 0 repaired, 0 problems left"]
    code, out = fsck(str(a.path / "d" / "a.txt" / "latest"))  # a version: just its blob
    assert (code, out) == (0, ["fsck /d/a.txt/latest: 1 versions, 1 blobs (1 in L2, 0 only in L3): 0 repaired, 0 problems left"])

    b = make_mount(f"s3://{bucket}")  # a fresh machine: everything only in L3, and that is fine
    assert fsck(str(b.path)) == (0, ["fsck /: 6 versions, 4 blobs (0 in L2, 4 only in L3): 0 repaired, 0 problems left"])
    (b.path / "big.bin" / "v1").read_bytes()
    poll(lambda: l2_blob(b, sha_of(b.path / "big.bin" / "v1")).exists(), "the thaw to land in L2")
    assert fsck(str(b.path))[1][0].endswith("(1 in L2, 3 only in L3): 0 repaired, 0 problems left")

    for bad in (str(b.path / "nope"), "/tmp"):
        done = relayfs("fsck", bad, check=False)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_corrupt_cached_blobs_are_eio_and_fsck_repairs_them_from_l3(make_mount, bucket: str) -> None:  # type: ignore[no-untyped-def]
    m = make_mount(f"s3://{bucket}")
    big = os.urandom(3 * MiB + 500)
    (m.path / "big.bin").write_bytes(big)
    sh("mkdir other && echo fine > other/ok.txt && echo short > s.txt && echo short > other/same.txt", cwd=m.path)
    m.wait()
    big_sha, small_sha = sha_of(m.path / "big.bin" / "v1"), sha_of(m.path / "s.txt" / "v1")
    flip(l2_blob(m, big_sha), MiB + 12345)  # chunk 1
    os.truncate(l2_blob(m, small_sha), 2)  # and one cut short

    m.expect_error(r"integrity: /(big\.bin|s\.txt)/v1: .*corrupt|does not match")
    assert read_errno(m.path / "big.bin" / "v1") == errno.EIO  # never the flipped bytes
    assert read_errno(m.path / "s.txt" / "latest") == errno.EIO
    log = m.log.read_text()
    assert re.search(rf"ERROR .*integrity: /big\.bin/v1: .*{big_sha[:12]}", log), "no ERROR names the version"
    assert re.search(r"ERROR .*integrity: /s\.txt/v1: ", log)

    code, out = fsck(str(m.path / "other" / "ok.txt"))  # another file's check leaves them alone
    assert (code, len(out)) == (0, 1) and out[0].endswith(": 0 repaired, 0 problems left")
    code, out = fsck(str(m.path))
    assert code == 0, out
    assert out[0] == "fsck /: 4 versions, 3 blobs (3 in L2, 0 only in L3): 2 repaired, 0 problems left"
    assert sorted(out[1:]) == sorted([
        f"repaired  blob {big_sha[:12]}: the L2 copy is corrupt: chunk 1 does not match its recorded SHA-256;"
        " fetched again from L3 (/big.bin/v1)",
        f"repaired  blob {small_sha[:12]}: the L2 copy is corrupt: it holds 2 bytes, not the recorded 6;"
        " fetched again from L3 (/other/same.txt/v1, /s.txt/v1)",
    ])
    assert l2_blob(m, big_sha).read_bytes() == big
    assert (m.path / "big.bin" / "v1").read_bytes() == big
    assert (m.path / "s.txt" / "v1").read_bytes() == b"short\n"
    assert (m.path / "other" / "same.txt" / "latest").read_bytes() == b"short\n"
    assert re.search(rf"WARNING .*fsck: blob {big_sha[:12]}: .*fetched again from L3", m.log.read_text())
    assert fsck(str(m.path)) == (0, ["fsck /: 4 versions, 3 blobs (3 in L2, 0 only in L3): 0 repaired, 0 problems left"])


def test_fsck_reports_what_it_cannot_repair(make_mount, bucket: str, s3_server) -> None:  # type: ignore[no-untyped-def]
    m = make_mount(f"s3://{bucket}")
    client = s3_server.client()
    sh("echo durable > both.txt && echo durable-gone > gone.txt", cwd=m.path)
    m.wait()
    both, gone = sha_of(m.path / "both.txt" / "v1"), sha_of(m.path / "gone.txt" / "v1")
    flip(l2_blob(m, both), 3)  # corrupt in L2 ...
    client.put_object(Bucket=bucket, Key=f"blobs/{both[:2]}/{both}", Body=b"durablX\n")  # ... and in L3
    os.unlink(l2_blob(m, gone))  # gone from L2 ...
    m.expect_error(r"fsck: blob|integrity|thaw|job \d+ \(upload")

    s3_server.stop()  # new versions cannot leave this machine: L2 holds their only copy
    try:
        pending = os.urandom(MiB + 99)
        (m.path / "pending.bin").write_bytes(pending)
        sh("echo lost > lost.txt && mkdir d && echo fine > d/fine.txt", cwd=m.path)
        pend, lost = sha_of(m.path / "pending.bin" / "v1"), sha_of(m.path / "lost.txt" / "v1")
        poll(lambda: jobs_of(m)["/pending.bin/v1"]["state"] == "retrying", "the upload to wait for L3")
        flip(l2_blob(m, pend), 10)
        os.unlink(l2_blob(m, lost))

        code, out = fsck(str(m.path / "pending.bin"))
        assert (code, out[0]) == (1, "fsck /pending.bin: 1 versions, 1 blobs (0 in L2, 0 only in L3): 0 repaired, 1 problems left")
        assert out[1].startswith(f"corrupt   blob {pend[:12]}: the L2 copy is corrupt: chunk 0 does not match")
        assert "no copy in L3 to repair it from (cannot reach L3" in out[1]
        assert out[1].endswith("; upload stopped (/pending.bin/v1)") and len(out) == 2
        code, out = fsck(str(m.path / "lost.txt"))
        assert code == 1 and out[1].startswith(f"missing   blob {lost[:12]}: it is in neither L2 nor L3 (cannot reach L3")
        assert out[1].endswith("; upload stopped (/lost.txt/v1)")
        code, out = fsck(str(m.path / "gone.txt"))  # durable: L3 should have it, but cannot say
        assert code == 1 and out[1].startswith(f"unchecked blob {gone[:12]}: it is only in L3, and cannot reach L3")
        for path in ("/pending.bin/v1", "/lost.txt/v1"):  # retrying cannot help them any more
            state = poll(lambda: (j := jobs_of(m)[path])["state"] == "failed" and j, f"the upload of {path} to fail")
            assert "found by fsck" in state["last_error"]
        assert jobs_of(m)["/d/fine.txt/v1"]["state"] != "failed"
    finally:
        s3_server.start()
    client.delete_object(Bucket=bucket, Key=f"blobs/{gone[:2]}/{gone}")  # ... and now from L3 too

    code, out = fsck(str(m.path))
    assert code == 1, out
    assert out[0] == "fsck /: 5 versions, 5 blobs (1 in L2, 0 only in L3): 0 repaired, 4 problems left"
    lines = {line.split()[2].rstrip(":"): line for line in out[1:]}
    assert set(lines) == {both[:12], gone[:12], pend[:12], lost[:12]}
    assert lines[both[:12]].startswith(f"corrupt   blob {both[:12]}: the L2 copy is corrupt: chunk 0 does not match")
    assert "fetching it again from L3 failed" in lines[both[:12]] and lines[both[:12]].endswith("(/both.txt/v1)")
    assert lines[gone[:12]] == (f"missing   blob {gone[:12]}: it is in neither L2 nor L3"
                                " (recorded as uploaded, but gone from L3) (/gone.txt/v1)")
    assert lines[pend[:12]].endswith("no copy in L3 to repair it from (never uploaded) (/pending.bin/v1)")
    assert lines[lost[:12]] == f"missing   blob {lost[:12]}: it is in neither L2 nor L3 (never uploaded) (/lost.txt/v1)"
    assert re.search(rf"ERROR .*fsck: blob {pend[:12]}: .*used by /pending\.bin/v1", m.log.read_text())

    m.wait("d")  # L3 is back: the good upload goes through ...
    done = relayfs("wait", str(m.path), "--timeout", "30", check=False)
    assert done.returncode == 1 and "failed" in done.stderr  # ... the bad ones stay failed
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="blobs/").get("Contents", [])}
    assert f"blobs/{pend[:2]}/{pend}" not in keys  # the corrupt bytes never left this machine
    assert read_errno(m.path / "pending.bin" / "v1") == errno.EIO
    assert read_errno(m.path / "both.txt" / "v1") == errno.EIO
    # still reported the next time: the failed repair put the bad copy back
    code, out = fsck(str(m.path / "both.txt"))
    assert code == 1 and out[1].startswith(f"corrupt   blob {both[:12]}: the L2 copy is corrupt")


def test_corrupt_object_in_l3_is_eio_naming_the_version(make_mount, bucket: str, s3_server) -> None:  # type: ignore[no-untyped-def]
    a = make_mount(f"s3://{bucket}")
    data = os.urandom(2 * MiB + 3)
    sh("mkdir docs", cwd=a.path)
    (a.path / "docs" / "r.bin").write_bytes(data)
    (a.path / "docs" / "r.bin" / "latest").write_bytes(b"second")
    a.wait()
    sha = sha_of(a.path / "docs" / "r.bin" / "v1")
    bad = bytearray(data)
    bad[MiB + 1] ^= 0x40
    s3_server.client().put_object(Bucket=bucket, Key=f"blobs/{sha[:2]}/{sha}", Body=bytes(bad))

    b = make_mount(f"s3://{bucket}")  # a fresh cache: the bytes must come from L3
    b.expect_error(r"integrity")
    assert read_errno(b.path / "docs" / "r.bin" / "v1") == errno.EIO
    assert (b.path / "docs" / "r.bin" / "v2").read_bytes() == b"second"
    assert re.search(rf"ERROR .*integrity: /docs/r\.bin/v1: .*{sha[:12]}", b.log.read_text())
    assert not l2_blob(b, sha).exists()
