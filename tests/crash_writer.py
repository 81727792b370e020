"""A writer (or reader) process for tests/test_crash.py: works on a mount until the daemon dies.

Every operation first journals an ``intent`` (the SHA-256 of the complete content it is about
to make a version, and how to regenerate any bytes it writes into a plain file), then does
the work through ordinary system calls, and journals ``done`` only once ``close()`` (or the
``rename`` onto ``latest``) has returned. Each journal line is fsync'ed before going on, so
after a ``kill -9`` of the daemon the journal is exactly what the writer was promised.

Journal lines (space separated, paths relative to the mount)::

    intent VFILE SHA SIZE VIA GEN     VIA: the path written; GEN: SEED:SIZE of the bytes written
                                      into VIA when VIA is a plain file (a new file or a temp
                                      file), else '-'
    done   VFILE SHA SIZE
    read   PATH SHA                   a version read back whole; SHA is what its bytes hash to
    bad    PATH WANT GOT              a version whose bytes do not hash to its xattr
    error  OP ERRNO                   the system call that failed (the daemon died), then exit
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import random
import sys
import time

WRITE_STEP = 128 * 1024
MiB = 1024 * 1024


def gen(seed: int, size: int) -> bytes:
    """Bytes the test can regenerate from (seed, size) to check what a plain file holds."""
    return random.Random(seed).randbytes(size)


class Journal:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def line(self, *fields: object) -> None:
        os.write(self.fd, (" ".join(str(f) for f in fields) + "\n").encode())
        os.fsync(self.fd)


def write_all(path: str, flags: int, data: bytes) -> None:
    """open, write in steps (so a kill can land between them), close: any error propagates."""
    fd = os.open(path, flags, 0o644)
    try:
        for off in range(0, len(data), WRITE_STEP):
            view = memoryview(data)[off:off + WRITE_STEP]
            while view:
                n = os.write(fd, view)
                view = view[n:]
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)  # close() errors (the commit failed) propagate: then it is not done


def read_all(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Writer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.mnt = args.mount
        self.dir = args.dir
        self.j = Journal(args.journal)
        self.rng = random.Random(args.seed)
        self.big = args.big
        self.ops = args.ops
        self.files: dict[str, bytes] = {}  # vfile -> the content of its newest version
        self.k = 0

    def p(self, rel: str) -> str:
        return os.path.join(self.mnt, rel)

    def size(self, big: bool, empty_ok: bool) -> int:
        """Sizes of new contents; 0 only where the commit does not wait for ``release``.

        A file created (or ``latest`` truncated) and closed with no write commits at
        ``release``, which the kernel sends after ``close()`` has returned (``flush`` cannot
        tell ``touch`` from a shell's ``>`` before its first write): such a "version whose
        close() returned" can be lost by a crash right after the close, so the writers make
        empty versions only by renaming an empty temp file onto ``latest``.
        """
        if self.big > 0 and (big or self.rng.random() < 0.3):
            self.big -= 1
            return self.rng.randint(5 * MiB + MiB // 2, 8 * MiB)
        return self.rng.choice([0 if empty_ok else 2, 1, 100, 4096, self.rng.randint(1, 300_000)])

    def fresh(self, big: bool = False, empty_ok: bool = False) -> tuple[int, bytes]:
        seed = self.rng.getrandbits(48)
        size = self.size(big, empty_ok)
        return seed, gen(seed, size)

    def new_file(self, big: bool = False) -> None:
        name = f"{self.dir}/f{self.k}.bin"
        self.k += 1
        seed, data = self.fresh(big)
        self.j.line("intent", name, sha(data), len(data), name, f"{seed}:{len(data)}")
        write_all(self.p(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, data)
        self.j.line("done", name, sha(data), len(data))
        self.files[name] = data

    def overwrite(self, name: str) -> None:
        _, data = self.fresh()
        if data == self.files[name]:
            data += b"!"
        self.j.line("intent", name, sha(data), len(data), f"{name}/latest", "-")
        write_all(self.p(f"{name}/latest"), os.O_WRONLY | os.O_TRUNC, data)
        self.j.line("done", name, sha(data), len(data))
        self.files[name] = data

    def append(self, name: str) -> None:
        extra = self.rng.randbytes(self.rng.randint(1, 50_000))
        data = self.files[name] + extra
        self.j.line("intent", name, sha(data), len(data), f"{name}/latest", "-")
        write_all(self.p(f"{name}/latest"), os.O_WRONLY | os.O_APPEND, extra)
        self.j.line("done", name, sha(data), len(data))
        self.files[name] = data

    def rename_onto_latest(self, name: str) -> None:
        """How editors save: a temp file inside NAME/, renamed onto NAME/latest."""
        seed, data = self.fresh(empty_ok=True)
        if data == self.files[name]:
            seed, data = seed + 1, gen(seed + 1, len(data) + 1)
        tmp = f"{name}/.tmp{self.k}"
        self.k += 1
        self.j.line("intent", name, sha(data), len(data), tmp, f"{seed}:{len(data)}")
        write_all(self.p(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, data)
        os.rename(self.p(tmp), self.p(f"{name}/latest"))
        self.j.line("done", name, sha(data), len(data))
        self.files[name] = data

    def adopt(self, name: str) -> None:
        """Take over a file made earlier (maybe by another mount): learn its newest bytes."""
        data = read_all(self.p(f"{name}/latest"))
        want = os.getxattr(self.p(f"{name}/latest"), "user.relayfs.sha256").decode()
        if sha(data) != want:
            self.j.line("bad", f"{name}/latest", want, sha(data))
            raise SystemExit(3)
        self.j.line("read", f"{name}/latest", want)
        self.files[name] = data

    def run(self, adopt: list[str]) -> None:
        os.makedirs(self.p(self.dir), exist_ok=True)
        for name in adopt:
            self.adopt(name)
            self.append(name)
        if self.big > 0:
            self.new_file(big=True)  # the first file is a big one: its upload is slow and multipart
        for _ in range(self.ops):
            roll = self.rng.random()
            if roll < 0.35 or not self.files:
                self.new_file()
            else:
                name = self.rng.choice(sorted(self.files))
                if roll < 0.55:
                    self.overwrite(name)
                elif roll < 0.8:
                    self.append(name)
                else:
                    self.rename_onto_latest(name)
            time.sleep(self.rng.random() * 0.04)


def read_versions(args: argparse.Namespace, paths: list[str]) -> None:
    """Read cold versions whole (each one a thaw on a fresh cache) and check their bytes."""
    j = Journal(args.journal)
    for rel in paths:
        path = os.path.join(args.mount, rel)
        want = os.getxattr(path, "user.relayfs.sha256").decode()
        got = sha(read_all(path))
        if got != want:
            j.line("bad", rel, want, got)
            raise SystemExit(3)
        j.line("read", rel, got)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mount", required=True)
    ap.add_argument("--dir", default="", help="folder (relative to the mount) for new files")
    ap.add_argument("--journal", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ops", type=int, default=25)
    ap.add_argument("--big", type=int, default=0, help="how many multi-MiB contents to write")
    ap.add_argument("--adopt", nargs="*", default=[], help="files to append to first (their latest)")
    ap.add_argument("--read", nargs="*", default=[], help="reader: versions to read back whole")
    args = ap.parse_args()
    op = "read" if args.read else "write"
    try:
        if args.read:
            read_versions(args, args.read)
        else:
            Writer(args).run(args.adopt)
    except OSError as e:
        Journal(args.journal).line("error", op, errno.errorcode.get(e.errno or 0, str(e.errno)))
        sys.exit(2)


if __name__ == "__main__":
    main()
