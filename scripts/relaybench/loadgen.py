"""The load of the 2 GiB phase, in processes of its own.

``python -m relaybench.loadgen write PATH SIZE NONCE`` writes a unique file in 1 MiB writes
and prints ``closed SECONDS`` once ``close()`` returned; ``read PATH [NONCE]`` reads a file
sequentially and prints ``done BYTES SECONDS OK``. Separate processes, so the measuring
process's GIL and the load never delay each other's system calls.
"""

from __future__ import annotations

import os
import sys
import time

from relaybench import data


def write(path: str, size: int, nonce: str) -> None:
    t0 = time.perf_counter()
    data.write_file(path, nonce, size)
    print(f"closed {time.perf_counter() - t0:.6f}", flush=True)


def read(path: str, nonce: str | None) -> None:
    buf = bytearray(data.BLOCK)
    view = memoryview(buf)
    t0 = time.perf_counter()
    total = 0
    ok = True
    fd = os.open(path, os.O_RDONLY)
    try:
        while n := os.readv(fd, [view]):
            if nonce is not None and total % data.BLOCK == 0:
                ok = ok and data.check(nonce, total, view[:n])
            total += n
    finally:
        os.close(fd)
    print(f"done {total} {time.perf_counter() - t0:.6f} {int(ok)}", flush=True)


def main(argv: list[str]) -> None:
    if argv[0] == "write":
        write(argv[1], int(argv[2]), argv[3])
    elif argv[0] == "read":
        read(argv[1], argv[2] if len(argv) > 2 else None)
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
