"""A full L2 disk, as a user lives through it (issue item 3).

The cache dir is a 24 MiB tmpfs. Writing past it fails with ENOSPC at write() or close(),
no partial version (and no partial new file) is left, the daemon stays up, and writes
work again once space is freed. Versions already durable in L3 are evicted to make room
before anyone gets ENOSPC, and read back through a thaw; pending versions never are.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from mount import Mount, relayfs, sh

MiB = 1024 * 1024
CACHE_MIB = 24


@pytest.fixture
def small_cache_mount(make_mount, bucket: str, proxy: FaultProxy, fast_retry) -> Iterator[Callable[[], Mount]]:  # type: ignore[no-untyped-def]
    """A mount (through ``proxy``) whose cache dir is a tmpfs of CACHE_MIB MiB."""
    made: list[Mount] = []

    def make() -> Mount:
        m = make_mount(f"s3://{bucket}", endpoint=proxy.endpoint, start=False)
        m.cache.mkdir(mode=0o700)
        sh(f"mount -t tmpfs -o size={CACHE_MIB}m,mode=0700 tmpfs {m.cache}")
        made.append(m)
        m.start()
        return m

    yield make
    for m in made:  # unmount RelayFS, then the tmpfs; keep the log for make_mount's check
        try:
            m.stop()
        finally:
            log = m.log.read_bytes() if m.log.exists() else b""
            subprocess.run(["umount", str(m.cache)], check=True)
            m.log.write_bytes(log)


def write_file(path: Path, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> tuple[int | None, int | None]:
    """Write ``data`` in 1 MiB writes and close: the errno of the failing write() (None if
    none failed) and of close()."""
    fd = os.open(path, flags, 0o644)
    write_err = close_err = None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[:MiB]):]
    except OSError as e:
        write_err = e.errno
    try:
        os.close(fd)
    except OSError as e:
        close_err = e.errno
    return write_err, close_err


def tier(path: Path) -> list[str]:
    return os.getxattr(path, "user.relayfs.tier").decode().split(",")


def test_full_disk_is_enospc_and_commits_nothing(small_cache_mount, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    m = small_cache_mount()
    proxy.fail(503, method="PUT")  # nothing becomes durable: nothing may be evicted
    keep = os.urandom(8 * MiB)
    (m.path / "keep.bin").write_bytes(keep)

    # a new file past the disk: ENOSPC at write(), then at close(); no version, no file left
    write_err, close_err = write_file(m.path / "big.bin", os.urandom(30 * MiB))
    assert write_err == errno.ENOSPC and close_err == errno.ENOSPC
    assert "big.bin" not in os.listdir(m.path)

    # appending to latest past the disk: ENOSPC, and keep.bin has still only v1
    write_err, close_err = write_file(m.path / "keep.bin" / "latest", os.urandom(30 * MiB), os.O_WRONLY | os.O_APPEND)
    assert errno.ENOSPC in (write_err, close_err)
    assert close_err == errno.ENOSPC  # close() says so too: it committed nothing
    assert sorted(os.listdir(m.path / "keep.bin")) == ["latest", "v1"]

    # the same through the tools people use
    dd = sh(f"dd if=/dev/urandom of={m.path}/dd.bin bs=1M count=30", check=False)
    assert dd.returncode != 0 and "No space left on device" in dd.stderr
    src = m.root / "src.bin"
    src.write_bytes(os.urandom(30 * MiB))
    cp = sh(f"cp {src} {m.path}/copy.bin", check=False)
    assert cp.returncode != 0 and "No space left on device" in cp.stderr
    cp = sh(f"cp {src} {m.path}/keep.bin/keep.bin", check=False)  # a next version of keep.bin
    assert cp.returncode != 0 and "No space left on device" in cp.stderr
    assert sorted(os.listdir(m.path)) == [".jobs", "keep.bin"]
    assert sorted(os.listdir(m.path / "keep.bin")) == ["latest", "v1"]

    # the daemon stays up: reads, small writes, .jobs and the CLI all work
    assert (m.path / "keep.bin" / "v1").read_bytes() == keep
    assert (m.path / "keep.bin" / "latest").read_bytes() == keep
    sh("echo small > small.txt && mkdir d", cwd=m.path)
    assert (m.path / "small.txt" / "v1").read_text() == "small\n"
    assert os.listdir(m.path / ".jobs")
    assert "keep.bin" in relayfs("jobs", str(m.path)).stdout
    relayfs("status", str(m.path))
    assert not any((m.cache / "work").iterdir())  # no draft bytes were left behind


def test_writes_work_again_once_uploads_are_durable(small_cache_mount, proxy: FaultProxy, s3_server, bucket: str) -> None:  # type: ignore[no-untyped-def]
    m = small_cache_mount()
    proxy.fail(503, method="PUT")
    first = {name: os.urandom(8 * MiB) for name in ("a.bin", "b.bin")}
    for name, data in first.items():
        (m.path / name).write_bytes(data)
    big = os.urandom(14 * MiB)
    assert errno.ENOSPC in write_file(m.path / "big.bin", big)  # 16 MiB pending: no room
    assert "big.bin" not in os.listdir(m.path)

    proxy.clear()  # L3 takes the uploads; once durable, their L2 copies may go
    m.wait()
    assert write_file(m.path / "big.bin", big) == (None, None)
    assert (m.path / "big.bin" / "v1").read_bytes() == big
    evicted = [name for name in first if "L2" not in tier(m.path / name / "v1")]
    assert evicted, "no durable version was evicted to make room"
    m.wait()
    for name, data in first.items():  # evicted versions read back through a thaw
        assert (m.path / name / "v1").read_bytes() == data
    client = s3_server.client()
    sha = os.getxattr(m.path / "big.bin" / "v1", "user.relayfs.sha256").decode()
    assert client.get_object(Bucket=bucket, Key=f"blobs/{sha[:2]}/{sha}")["Body"].read() == big


def test_eviction_makes_room_first_and_never_takes_pending_versions(small_cache_mount, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    m = small_cache_mount()
    durable = {name: os.urandom(6 * MiB) for name in ("a.bin", "b.bin", "c.bin")}
    for name, data in durable.items():
        (m.path / name).write_bytes(data)
    m.wait()  # 18 MiB durable in L3 and cached in L2

    proxy.fail(503, method="PUT")  # from now on uploads fail: new versions stay pending
    pending = {"d.bin": os.urandom(10 * MiB)}
    (m.path / "d.bin").write_bytes(pending["d.bin"])  # fits only once some durable ones go
    assert any("L2" not in tier(m.path / name / "v1") for name in durable)
    for name, data in durable.items():  # every durable version still reads, thawed if evicted
        assert (m.path / name / "v1").read_bytes() == data
    pending["e.bin"] = os.urandom(10 * MiB)
    (m.path / "e.bin").write_bytes(pending["e.bin"])  # room again, by evicting durable ones

    # 20 MiB pending now: however much durable data goes, 5 MiB more does not fit
    assert errno.ENOSPC in write_file(m.path / "f.bin", os.urandom(5 * MiB))
    assert "f.bin" not in os.listdir(m.path)
    for name, data in pending.items():  # pending versions were never evicted
        assert "L2" in tier(m.path / name / "v1")
        assert os.getxattr(m.path / name / "v1", "user.relayfs.state") in (b"pending", b"uploading")
        assert (m.path / name / "v1").read_bytes() == data

    proxy.clear()
    m.wait()
    f = os.urandom(5 * MiB)
    (m.path / "f.bin").write_bytes(f)  # durable now, so evictable: it fits
    assert (m.path / "f.bin" / "v1").read_bytes() == f
    for name, data in {**durable, **pending}.items():
        assert (m.path / name / "v1").read_bytes() == data
    # appending to latest starts from a copy, which needs room: never by evicting its source
    for name, data in {**durable, **pending}.items():
        m.wait()  # the versions written just before are durable: they may make room
        with open(m.path / name / "latest", "ab") as out:
            out.write(b"+more")
        assert (m.path / name / "v2").read_bytes() == data + b"+more"
