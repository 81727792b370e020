"""SPEC "Bad input": every request RelayFS must refuse gets its clear errno, and none of them
changes stored data.

One table of bad inputs, each a real syscall on a real mount: names over 255 bytes or not
UTF-8, reserved names (``.jobs``, ``latest``, ``vK``), symbolic and hard links and device
nodes, writes, truncates, chmod/chown/utime, xattr changes and renames onto or of a version,
``rmdir`` of what is not empty, ``O_EXCL`` on names that exist. Before and after the table the
test takes a snapshot of everything a user or another machine could see (every path with its
mode, size and mtime, every file's bytes, every version's xattrs, the jobs, the bucket's keys
and ETags) and requires it unchanged, with no ERROR in the daemon's log.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mount import Mount, sh

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(src: Path, dst: Path, flags: int) -> None:
    if _libc.renameat2(-100, os.fsencode(src), -100, os.fsencode(dst), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(src))


def opened(path: Path | bytes, flags: int) -> Callable[[], None]:
    """An ``open(2)`` that must fail (and is closed at once if it does not)."""

    def call() -> None:
        os.close(os.open(path, flags, 0o644))

    return call


def snapshot(m: Mount, s3_server) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Everything a user or another machine could see of the mount's data."""
    paths: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(m.path):
        if Path(dirpath) == m.path:
            dirnames.remove(".jobs")
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            row: tuple[Any, ...] = (st.st_mode, st.st_size, st.st_mtime_ns)
            if name in filenames:
                row += (p.read_bytes(),)
                xattrs = os.listxattr(p)
                row += tuple(sorted((x, os.getxattr(p, x)) for x in xattrs if x != "user.relayfs.tier"))
            paths[str(p.relative_to(m.path))] = row
    jobs = {j: (m.path / ".jobs" / j).read_text() for j in os.listdir(m.path / ".jobs")}
    client, bucket = s3_server.client(), m.l3.removeprefix("s3://")
    keys = {o["Key"]: o["ETag"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])}
    return {"paths": paths, "jobs": jobs, "bucket": keys}


def test_bad_inputs_get_their_errno_and_change_nothing(mnt: Mount, s3_server) -> None:  # type: ignore[no-untyped-def]
    root = mnt.path
    sh("mkdir -p d/sub empty full && echo one > d/f && echo two > d/f/latest && echo s > d/f/scratch"
       " && echo top > top.txt && echo in > full/x.txt", cwd=root)
    (root / "big.bin").write_bytes(os.urandom(1024 * 1024 + 7))
    mnt.wait()
    f, v1, v2 = root / "d" / "f", root / "d" / "f" / "v1", root / "d" / "f" / "v2"
    job = sorted(os.listdir(root / ".jobs"), key=int)[0]
    before = snapshot(mnt, s3_server)
    raw = os.fsencode(root)
    W, C = os.O_WRONLY, os.O_WRONLY | os.O_CREAT

    cases: list[tuple[str, Callable[[], Any], int]] = [
        # names that cannot be stored
        ("create a 256-byte name", opened(root / ("n" * 256), C), errno.ENAMETOOLONG),
        ("mkdir a 256-byte name (128 x é)", lambda: os.mkdir(root / ("é" * 128)), errno.ENAMETOOLONG),
        ("mkdir a 256-byte name in a folder", lambda: os.mkdir(root / "d" / ("m" * 256)), errno.ENAMETOOLONG),
        ("create a 256-byte scratch name", opened(f / ("s" * 256), C), errno.ENAMETOOLONG),
        ("rename to a 256-byte name", lambda: os.rename(root / "top.txt", root / ("r" * 256)), errno.ENAMETOOLONG),
        ("create a non-UTF-8 name", opened(raw + b"/bad\xff", C), errno.EINVAL),
        ("mkdir a non-UTF-8 name", lambda: os.mkdir(raw + b"/bad\xfe\xfe"), errno.EINVAL),
        ("rename to a non-UTF-8 name", lambda: os.rename(root / "empty", raw + b"/\xc3\x28"), errno.EINVAL),
        # reserved names
        ("mkdir .jobs", lambda: os.mkdir(root / ".jobs"), errno.EEXIST),
        ("create .jobs with O_EXCL", opened(root / ".jobs", C | os.O_EXCL), errno.EEXIST),
        ("rename a folder onto .jobs", lambda: os.rename(root / "empty", root / ".jobs"), errno.EEXIST),
        ("rmdir .jobs", lambda: os.rmdir(root / ".jobs"), errno.EROFS),
        ("unlink .jobs", lambda: os.unlink(root / ".jobs"), errno.EISDIR),
        ("rename .jobs away", lambda: os.rename(root / ".jobs", root / "jobs2"), errno.EROFS),
        ("create in .jobs", opened(root / ".jobs" / "new", C), errno.EROFS),
        ("mkdir in .jobs", lambda: os.mkdir(root / ".jobs" / "new"), errno.EROFS),
        ("write a .jobs entry", opened(root / ".jobs" / job, W), errno.EROFS),
        ("unlink a .jobs entry", lambda: os.unlink(root / ".jobs" / job), errno.EROFS),
        ("chmod a .jobs entry", lambda: os.chmod(root / ".jobs" / job, 0o666), errno.EROFS),
        ("move a folder into .jobs", lambda: os.rename(root / "empty", root / ".jobs" / "empty"), errno.EROFS),
        ("mkdir NAME/latest", lambda: os.mkdir(f / "latest"), errno.EEXIST),
        ("create NAME/latest with O_EXCL", opened(f / "latest", C | os.O_EXCL), errno.EEXIST),
        ("mkdir NAME/v1", lambda: os.mkdir(f / "v1"), errno.EEXIST),
        ("create NAME/v1 with O_EXCL", opened(v1, C | os.O_EXCL), errno.EEXIST),
        ("create NAME/v7 (a future version)", opened(f / "v7", C), errno.EINVAL),
        ("create NAME/v007", opened(f / "v007", C | os.O_EXCL), errno.EINVAL),
        ("rename scratch onto NAME/v7", lambda: os.rename(f / "scratch", f / "v7"), errno.EROFS),
        ("mkdir inside a versioned file", lambda: os.mkdir(f / "sub"), errno.EPERM),
        # links and special files
        ("symlink at the root", lambda: os.symlink("d/f/v1", root / "link"), errno.EPERM),
        ("symlink inside a versioned file", lambda: os.symlink("v1", f / "link"), errno.EPERM),
        ("hard link of a version", lambda: os.link(v1, root / "hard"), errno.EPERM),
        ("hard link of latest", lambda: os.link(f / "latest", root / "d" / "hard"), errno.EPERM),
        ("hard link of a scratch file", lambda: os.link(f / "scratch", f / "hard"), errno.EPERM),
        ("hard link of a .jobs entry", lambda: os.link(root / ".jobs" / job, root / "hard"), errno.EPERM),
        ("mkfifo", lambda: os.mkfifo(root / "fifo"), errno.EPERM),
        ("mknod a character device", lambda: os.mknod(root / "null", 0o600 | 0o020000, os.makedev(1, 3)), errno.EPERM),
        # versions are immutable, for root too
        ("open a version O_WRONLY", opened(v1, W), errno.EROFS),
        ("open a version O_RDWR", opened(v1, os.O_RDWR), errno.EROFS),
        ("open a version O_APPEND", opened(v1, W | os.O_APPEND), errno.EROFS),
        ("open a version O_TRUNC", opened(v1, W | os.O_TRUNC), errno.EROFS),
        ("open a version O_RDONLY|O_TRUNC", opened(v2, os.O_RDONLY | os.O_TRUNC), errno.EROFS),
        ("open a big version O_RDWR", opened(root / "big.bin" / "v1", os.O_RDWR), errno.EROFS),
        ("truncate a version to 0", lambda: os.truncate(v1, 0), errno.EROFS),
        ("truncate a version longer", lambda: os.truncate(v2, 100), errno.EROFS),
        ("chmod a version", lambda: os.chmod(v1, 0o644), errno.EROFS),
        ("chmod latest", lambda: os.chmod(f / "latest", 0o600), errno.EROFS),
        ("chown a version", lambda: os.chown(v1, 1, 1), errno.EROFS),
        ("chown latest", lambda: os.chown(f / "latest", 1, 1), errno.EROFS),
        ("utime a version", lambda: os.utime(v1, (1, 1)), errno.EROFS),
        ("set user.relayfs.sha256", lambda: os.setxattr(v1, "user.relayfs.sha256", b"0" * 64), errno.EROFS),
        ("set another xattr on a version", lambda: os.setxattr(v2, "user.note", b"x"), errno.EROFS),
        ("remove an xattr of a version", lambda: os.removexattr(v1, "user.relayfs.state"), errno.EROFS),
        ("rename a version onto another", lambda: os.rename(v2, v1), errno.EROFS),
        ("rename scratch onto a version", lambda: os.rename(f / "scratch", v1), errno.EROFS),
        ("rename a version away", lambda: os.rename(v1, root / "stolen"), errno.EROFS),
        ("rename latest away", lambda: os.rename(f / "latest", root / "stolen"), errno.EROFS),
        ("rename a folder onto a version", lambda: os.rename(root / "empty", v1), errno.ENOTDIR),
        ("rename a folder onto latest", lambda: os.rename(root / "empty", f / "latest"), errno.ENOTDIR),
        ("rmdir a version", lambda: os.rmdir(v1), errno.ENOTDIR),
        # folders and versioned files
        ("rmdir a non-empty folder", lambda: os.rmdir(root / "full"), errno.ENOTEMPTY),
        ("rmdir a folder holding folders", lambda: os.rmdir(root / "d"), errno.ENOTEMPTY),
        ("rmdir a versioned file", lambda: os.rmdir(f), errno.ENOTEMPTY),
        ("rename a folder onto a non-empty one", lambda: os.rename(root / "empty", root / "full"), errno.ENOTEMPTY),
        ("rename a folder onto a versioned file", lambda: os.rename(root / "empty", root / "top.txt"), errno.ENOTEMPTY),
        ("rename a folder into itself", lambda: os.rename(root / "d", root / "d" / "sub" / "d"), errno.EINVAL),
        ("rename a versioned file into another", lambda: os.rename(root / "top.txt", f / "top.txt"), errno.EINVAL),
        ("exchange two names", lambda: renameat2(root / "empty", root / "full", RENAME_EXCHANGE), errno.EINVAL),
        ("rename with NOREPLACE onto a name", lambda: renameat2(root / "empty", root / "d", RENAME_NOREPLACE), errno.EEXIST),
        ("unlink a folder", lambda: os.unlink(root / "empty"), errno.EISDIR),
        ("unlink a versioned file", lambda: os.unlink(f), errno.EISDIR),
        ("open a folder for writing", opened(root / "d", W), errno.EISDIR),
        ("open a versioned file for writing", opened(f, os.O_RDWR), errno.EISDIR),
        ("truncate a versioned file", lambda: os.truncate(f, 0), errno.EISDIR),
        ("mkdir over a folder", lambda: os.mkdir(root / "d"), errno.EEXIST),
        ("mkdir over a versioned file", lambda: os.mkdir(root / "top.txt"), errno.EEXIST),
        ("O_EXCL on a folder", opened(root / "full", C | os.O_EXCL), errno.EEXIST),
        ("O_EXCL on a versioned file", opened(root / "top.txt", C | os.O_EXCL), errno.EEXIST),
        ("O_EXCL on a scratch file", opened(f / "scratch", C | os.O_EXCL), errno.EEXIST),
        ("O_EXCL on a file in a folder", opened(root / "full" / "x.txt", C | os.O_EXCL), errno.EEXIST),
        ("rmdir the mount point", lambda: os.rmdir(root), errno.EBUSY),
    ]
    wrong = []
    for label, call, expected in cases:
        try:
            call()
        except OSError as e:
            if e.errno != expected:
                wrong.append(f"{label}: {errno.errorcode.get(e.errno or 0)}, expected {errno.errorcode[expected]}")
        else:
            wrong.append(f"{label}: succeeded, expected {errno.errorcode[expected]}")
    assert not wrong, "\n".join(wrong)
    print(f"{len(cases)} bad inputs refused with their errno")

    mnt.wait()
    after = snapshot(mnt, s3_server)
    assert after["paths"] == before["paths"]
    assert after["jobs"] == before["jobs"]  # no job was queued, none changed
    assert after["bucket"] == before["bucket"]
    assert mnt.errors() == []
