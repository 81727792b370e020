"""File contents for the benchmark: unique per file, cheap to make, checkable while read.

RelayFS stores each distinct content once, so two test files with equal bytes would make
the second upload free and the figures wrong. Every 1 MiB block here is a slice of an
8 MiB random base with a 32-byte stamp (file nonce, block index) written over its head:
no two blocks of any two files are equal, making them costs a memcpy instead of a CSPRNG
(which would steal CPU from the system being measured on a 2-core machine), and a reader
can check each block's stamp for almost nothing. Nothing in the rig compresses, so the
repetition of the base every 8 MiB does not flatter anyone.

This module imports nothing from the package, so ``loadgen`` (a separate process) can use it.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct

MiB = 1024 * 1024
BLOCK = MiB
STAMP = 32
_BASE_BLOCKS = 8
_base: bytes | None = None


def _base_bytes() -> bytes:
    global _base
    if _base is None:
        _base = os.urandom(_BASE_BLOCKS * BLOCK)
    return _base


def stamp(nonce: str, index: int) -> bytes:
    """The 32 bytes that open block ``index`` of the file named by ``nonce``."""
    digest = hashlib.blake2b(nonce.encode(), digest_size=24).digest()
    return digest + struct.pack(">Q", index)


def block(nonce: str, index: int, size: int = BLOCK) -> bytes:
    """Block ``index`` (``size`` bytes, at most 1 MiB) of the file named ``nonce``."""
    base = _base_bytes()
    start = (index % _BASE_BLOCKS) * BLOCK
    head = stamp(nonce, index)
    if size <= STAMP:
        return head[:size]
    return head + base[start + STAMP:start + size]


def blocks(nonce: str, size: int) -> list[bytes]:
    """All blocks of a file of ``size`` bytes (the last one may be short)."""
    out = []
    for index in range(-(-size // BLOCK)):
        out.append(block(nonce, index, min(BLOCK, size - index * BLOCK)))
    return out


def iter_blocks(nonce: str, size: int):  # type: ignore[no-untyped-def]
    """Like ``blocks`` but made one at a time, for files too big to hold in memory."""
    for index in range(-(-size // BLOCK)):
        yield block(nonce, index, min(BLOCK, size - index * BLOCK))


def check(nonce: str, offset: int, data: bytes | memoryview) -> bool:
    """True unless ``data`` read at ``offset`` starts a block with the wrong stamp."""
    if offset % BLOCK or len(data) < STAMP:
        return True
    return bytes(data[:STAMP]) == stamp(nonce, offset // BLOCK)


class PatternReader(io.RawIOBase):
    """A seekable read-only file object producing a file's bytes, for boto3 uploads."""

    def __init__(self, nonce: str, size: int) -> None:
        super().__init__()
        self.nonce = nonce
        self.size = size
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self.pos < self.size:
            index, inner = divmod(self.pos, BLOCK)
            blk = block(self.nonce, index, min(BLOCK, self.size - index * BLOCK))
            take = min(len(view) - done, len(blk) - inner)
            view[done:done + take] = blk[inner:inner + take]
            done += take
            self.pos += take
        return done


def write_file(path: str | os.PathLike[str], nonce: str, size: int, fsync: bool = False) -> None:
    """Write the stamped pattern to ``path`` block by block (and fsync it if asked)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for blk in iter_blocks(nonce, size):
            view = memoryview(blk)
            while view:
                view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
