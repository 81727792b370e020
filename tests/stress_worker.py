"""One process of the concurrency stress test (tests/test_concurrency.py).

    stress_worker.py writer JOURNAL FILE... N   commit N versions, round-robin over FILEs
    stress_worker.py reader JOURNAL STOP PATH...  read PATHs whole until STOP exists
    stress_worker.py lister JOURNAL STOP ROOT     ls -R and read .jobs/* until STOP exists

Writers append ``path sha256`` to JOURNAL after each close() returned; readers append the
sha256 of every whole read. Every line is flushed and fsync'ed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path


def note(journal: Path, line: str) -> None:
    with open(journal, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def writer(journal: Path, files: list[Path], n: int) -> None:
    tag = os.urandom(4).hex()
    for i in range(n):
        path = files[i % len(files)]
        data = f"{tag}-{i}\n".encode() + os.urandom(1000 + 997 * (i % 50))
        with open(path / "latest", "wb") as f:
            f.write(data[:500])
            f.write(data[500:])
        note(journal, f"{path.name} {hashlib.sha256(data).hexdigest()}")


def reader(journal: Path, stop: Path, paths: list[Path]) -> None:
    while not stop.exists():
        for path in paths:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            note(journal, f"{path} {hashlib.sha256(data).hexdigest()}")


def lister(journal: Path, stop: Path, root: Path) -> None:
    rounds = 0
    while not stop.exists():
        subprocess.run(["ls", "-lR", str(root)], check=True, capture_output=True)
        for entry in os.scandir(root / ".jobs"):
            with open(entry.path, "rb") as f:
                assert b"state: " in f.read()
        for versioned in root.iterdir():
            if versioned.name != ".jobs":
                for v in versioned.iterdir():
                    if v.name != "latest":
                        os.getxattr(v, "user.relayfs.sha256")
        rounds += 1
    note(journal, f"lister rounds {rounds}")


if __name__ == "__main__":
    mode, journal = sys.argv[1], Path(sys.argv[2])
    if mode == "writer":
        writer(journal, [Path(p) for p in sys.argv[3:-1]], int(sys.argv[-1]))
    elif mode == "reader":
        reader(journal, Path(sys.argv[3]), [Path(p) for p in sys.argv[4:]])
    else:
        lister(journal, Path(sys.argv[3]), Path(sys.argv[4]))
