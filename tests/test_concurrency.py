"""Concurrency: writers, readers and listers at once on one mount, while uploads run.

Several writers commit to the same ``NAME/latest`` and to their own files; readers read
``latest`` and fixed versions whole; a lister runs ``ls -lR`` and reads ``.jobs/`` and
xattrs. Every whole read must be exactly one committed version's bytes, each file's
versions must be v1..vN with no gap or repeat, every committed content must be there
exactly once, and the daemon must log no error.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

from mount import Mount, sh

WORKER = Path(__file__).with_name("stress_worker.py")
WRITERS = 4
COMMITS = 40


def run_worker(*args: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)])


def lines(journal: Path) -> list[list[str]]:
    return [l.split() for l in journal.read_text().splitlines()] if journal.exists() else []


def test_writers_readers_and_listers_at_once(mnt: Mount, tmp_path: Path) -> None:
    root = mnt.path
    sh("echo seed > shared && echo seed-a > a && echo seed-b > b", cwd=root)
    seeds = {hashlib.sha256(s).hexdigest() for s in (b"seed\n", b"seed-a\n", b"seed-b\n")}
    stop = tmp_path / "stop"
    readers = [
        run_worker("reader", tmp_path / f"read{i}", stop, root / "shared" / "latest", root / "shared" / "v1", root / "a" / "latest")
        for i in range(2)
    ]
    lister = run_worker("lister", tmp_path / "lister", stop, root)
    writers = [
        run_worker("writer", tmp_path / f"write{i}", root / "shared", *( [root / "a"] if i % 2 else [root / "b"]), COMMITS)
        for i in range(WRITERS)
    ]
    assert [w.wait(timeout=300) for w in writers] == [0] * WRITERS
    stop.touch()
    assert [r.wait(timeout=60) for r in readers] == [0, 0]
    assert lister.wait(timeout=60) == 0

    committed: Counter[tuple[str, str]] = Counter()
    for i in range(WRITERS):
        committed.update((name, sha) for name, sha in lines(tmp_path / f"write{i}"))
    assert sum(committed.values()) == WRITERS * COMMITS
    written_shas = {sha for _, sha in committed} | seeds

    for name in ("shared", "a", "b"):
        expected = [sha for (n, sha), k in committed.items() if n == name for _ in range(k)]
        names = sorted((p.name for p in (root / name).iterdir() if p.name != "latest"), key=lambda v: int(v[1:]))
        assert names == [f"v{i}" for i in range(1, len(expected) + 2)], f"{name}: numbers not unique and gap-free"
        shas = [hashlib.sha256((root / name / v).read_bytes()).hexdigest() for v in names]
        assert Counter(shas[1:]) == Counter(expected), f"{name}: a committed content is missing or doubled"

    reads = [sha for i in range(2) for _, sha in lines(tmp_path / f"read{i}")]
    assert reads, "the readers read nothing"
    torn = [sha for sha in reads if sha not in written_shas]
    assert not torn, f"{len(torn)} reads saw bytes that are no committed version"
    rounds = int(lines(tmp_path / "lister")[-1][-1])
    assert rounds > 0
    mnt.wait(timeout=120)
    print(f"concurrency: {sum(committed.values())} commits, {len(reads)} whole reads, {rounds} listing rounds")
