"""The reference for W3's warm figure: what the kernel serves for a FUSE file it keeps in
its page cache.

A FUSE filesystem of one read-only file, ``data``, whose bytes (the benchmark's stamped
pattern) live in this process's memory; it opens with ``keep_cache`` and answers with a
60 s attribute timeout, so after the first read every read is the kernel's alone. Run as
its own process: ``python -m relaybench.fuseref MOUNTPOINT NONCE SIZE``; it prints
``ready`` once mounted and unmounts on SIGTERM.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys

import pyfuse3
import trio

from .data import blocks

NAME = b"data"
FILE_INO = pyfuse3.ROOT_INODE + 1


class OneFile(pyfuse3.Operations):
    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        if ino == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_size = stat.S_IFDIR | 0o755, 0
        else:
            a.st_mode, a.st_size = stat.S_IFREG | 0o444, len(self.body)
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        a.st_blksize = 128 * 1024
        a.entry_timeout = a.attr_timeout = 60.0
        return a

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        return self._attr(inode)

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(FILE_INO)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, self._attr(FILE_INO), 1)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode != FILE_INO:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self.body[off:off + size]


async def _serve(mountpoint: str, ops: OneFile) -> None:
    pyfuse3.init(ops, mountpoint, {"fsname=fuseref", "ro"})
    print("ready", flush=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pyfuse3.main)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                pyfuse3.terminate()
                break


def main() -> None:
    mountpoint, nonce, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ops = OneFile(b"".join(blocks(nonce, size)))
    try:
        trio.run(_serve, mountpoint, ops)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
