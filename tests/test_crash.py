"""Crash at any moment (SPEC: "after a restart, every version whose close() returned exists
with the right bytes, and its upload completes").

Each round starts writer processes (tests/crash_writer.py) on the mount: new files, ``>`` and
``>>`` on ``latest``, temp files renamed onto ``latest``; some contents are multi-MiB, so their
uploads are multipart, and a fault proxy slows every L3 request so uploads are in flight.
Then the daemon gets ``kill -9`` at a random moment, picked per round from:

* ``early``: within the first writes (creates and commits in flight);
* ``random``: anywhere in the first seconds;
* ``upload``: while a multipart upload is half done (the proxy holds its part 2);
* ``double``: a first kill, a mount on the same cache dir, and a second kill while the new
  daemon resumes the interrupted uploads;
* ``thaw``: on a second mount with a fresh cache dir (every version is cold there), while
  readers read old versions whole and a writer appends to cold ``latest``s, after the first
  ranged GET of a blob went out.

After the kill the dead mount is cleaned up, the same cache dir is mounted again, and the
round checks what a user relies on: every version whose ``close()`` (or ``rename``) returned
exists in its file, in the order it was written, with bytes that hash to its
``user.relayfs.sha256``; every version there is a content some writer meant to write whole
(nothing half-written, no truncated prefix ever becomes a version); a file whose writer died
before its first close is a plain file holding a prefix of what was being written, never a
version; the cache holds no unnamed work files and no blobs outside the catalog;
``relayfs wait`` succeeds, every written version's bytes are in the bucket, and no multipart
upload is left open there. At the end a fresh cache sees every written version in the bucket.

``--crash-rounds N`` sets the number of rounds (default 20), ``--crash-seed S`` replays a run.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crash_writer import gen
from faultproxy import FaultProxy
from mount import Mount, poll

MiB = 1024 * 1024
WRITER = str(Path(__file__).with_name("crash_writer.py"))
LATENCY = 0.1  # seconds added to every L3 request while writers run: uploads stay in flight
WRITERS = 3
OPS = 25  # operations per writer and round, at most (the kill usually comes first)
MODES = ("upload", "early", "random", "thaw", "double")
VERSION = re.compile(r"v\d+")
EXTRA = ("--part-size", "5MiB")


@dataclass
class Intent:
    vfile: str
    sha: str
    size: int
    via: str
    gen: tuple[int, int] | None  # (seed, size) of the bytes written into ``via`` if a plain file


@dataclass
class Journal:
    intents: list[Intent] = field(default_factory=list)
    done: list[tuple[str, str, int]] = field(default_factory=list)  # (vfile, sha, size)
    reads: int = 0
    bad: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def read_journal(path: Path) -> Journal:
    j = Journal()
    if not path.exists():
        return j
    for line in path.read_text().splitlines():
        kind, *f = line.split(" ")
        if kind == "intent":
            g = None if f[4] == "-" else tuple(int(x) for x in f[4].split(":"))
            j.intents.append(Intent(f[0], f[1], int(f[2]), f[3], g))  # type: ignore[arg-type]
        elif kind == "done":
            j.done.append((f[0], f[1], int(f[2])))
        elif kind == "read":
            j.reads += 1
        elif kind == "bad":
            j.bad.append(line)
        elif kind == "error":
            j.errors.append(line)
    return j


def sha_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def xsha(path: Path) -> str:
    return os.getxattr(path, "user.relayfs.sha256").decode()


def restart(m: Mount) -> None:
    """Mount again on the same cache dir; a failure shows the end of the daemon's log."""
    try:
        m.start()
    except AssertionError as e:
        tail = "\n".join(m.log.read_text(errors="replace").splitlines()[-40:])
        raise AssertionError(f"{e}\n--- end of {m.log}:\n{tail}") from None


def dead_mount_cleaned(m: Mount) -> None:
    """After kill9 (which runs fusermount3 -u -z): no mount there, and no ENOTCONN."""
    assert not os.path.ismount(m.path), f"{m.path} is still mounted after the crash"
    os.stat(m.path)
    assert all(line.split()[1] != str(m.path) for line in Path("/proc/self/mounts").read_text().splitlines())


@dataclass
class Stats:
    rounds: int = 0
    modes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    done: int = 0  # versions whose close() returned, found with the right bytes
    done_bytes: int = 0
    versions_read: int = 0  # versions read whole and hashed on a remounted cache
    in_bucket: int = 0  # blobs fetched from the bucket and hashed
    drafts: int = 0  # plain files left by writers that died before close (prefix-checked)
    thaw_reads: int = 0
    orphans: int = 0  # multipart uploads a kill left open (all aborted after recovery)
    kills: int = 0
    final_versions: int = 0
    final_read: int = 0
    partial_thaws: int = 0  # thaws cut off by a kill (thaw/*.part found after it)
    # from the daemons' logs:
    jobs_requeued: int = 0  # unfinished jobs a restart found and ran again
    work_removed: int = 0  # unnamed work files (private drafts of latest) removed at restart
    blobs_removed: int = 0  # sealed but never committed blobs removed at restart
    nodes_dropped: int = 0  # files whose commit a kill cut off after their bytes were sealed
    aborted: int = 0  # orphaned multipart uploads aborted by the resumed upload job

    def add_log(self, text: str) -> None:
        for pattern, name in (
            (r"(\d+) unfinished jobs queued again", "jobs_requeued"),
            (r"removed (\d+) unnamed work files", "work_removed"),
            (r"and (\d+) uncommitted blobs", "blobs_removed"),
            (r"(\d+) files were being committed", "nodes_dropped"),
        ):
            setattr(self, name, getattr(self, name) + sum(int(n) for n in re.findall(pattern, text)))
        self.aborted += len(re.findall(r"left by an interrupted attempt", text))


class CrashRun:
    """State shared by the rounds: the mount, the proxy, every journal so far."""

    def __init__(self, make_mount, s3_server, bucket: str, tmp: Path, rng: random.Random) -> None:  # type: ignore[no-untyped-def]
        self.make_mount = make_mount
        self.s3 = s3_server.client()
        self.s3_server = s3_server
        self.bucket = bucket
        self.tmp = tmp
        self.rng = rng
        self.proxy = FaultProxy(backend_port=int(s3_server.endpoint.rsplit(":", 1)[1]))
        self.m: Mount = make_mount(f"s3://{bucket}", endpoint=self.proxy.endpoint, extra=EXTRA)
        self.mounts = [self.m]
        self.intended: dict[str, set[str]] = defaultdict(set)  # vfile -> every content meant
        self.done: dict[str, list[str]] = defaultdict(list)  # vfile -> shas whose close returned
        self.big: list[str] = []  # vfiles with a multi-MiB version
        self.blobs_checked: set[str] = set()
        self.stats = Stats()

    # -- processes ---------------------------------------------------------------------
    def spawn(self, m: Mount, journal: Path, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, WRITER, "--mount", str(m.path), "--journal", str(journal),
             "--seed", str(self.rng.getrandbits(32)), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    def kill(self, m: Mount, procs: list[subprocess.Popen[bytes]], journals: list[Path]) -> None:
        for p, j in zip(procs, journals):  # nothing may have failed before the crash
            rc = p.poll()
            assert rc in (None, 0), f"{j.name} exited {rc} before the kill: {read_journal(j)} {p.stderr.read()!r}"  # type: ignore[union-attr]
        m.kill9()
        self.stats.kills += 1
        dead_mount_cleaned(m)
        for p in procs:  # they see the dead mount (ENOTCONN) and stop
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise AssertionError("a writer hung on the dead mount") from None

    def after(self, index: int, what: str, timeout: float = 30) -> None:
        """Wait until the proxy forwarded a request matching ``what`` since log ``index``."""

        def seen() -> bool:
            return any(re.search(what, f"{meth} {target}") for meth, target, _ in self.proxy.log[index:])

        poll(seen, f"an L3 request matching {what!r}", timeout)

    # -- one round ---------------------------------------------------------------------
    def round(self, r: int, mode: str) -> None:
        self.stats.rounds += 1
        self.stats.modes[mode] += 1
        rdir = self.tmp / f"round{r:03d}"
        rdir.mkdir()
        if mode == "thaw":
            self.thaw_round(r, rdir)
            return
        m = self.m
        self.proxy.latency(LATENCY)
        journals = [rdir / f"w{i}.journal" for i in range(WRITERS)]
        procs = []
        for i, j in enumerate(journals):
            big = 2 if mode == "upload" and i == 0 else int(i == 0 and self.rng.random() < 0.3)
            procs.append(self.spawn(m, j, "--dir", f"r{r:03d}/w{i}", "--ops", str(OPS), "--big", str(big)))
        if mode == "early":
            time.sleep(self.rng.uniform(0.02, 0.4))
        elif mode == "upload":  # part 2 of the first big upload hangs: the kill lands mid-upload
            stalled = self.proxy.stall(30, method="PUT", contains="partNumber=2", count=1)
            poll(lambda: stalled.remaining == 0, "a multipart upload half done", 30)
            time.sleep(self.rng.uniform(0, 0.5))
        else:
            time.sleep(self.rng.uniform(0.2, 2.0))
        self.kill(m, procs, journals)
        if mode == "double":  # the restarted daemon resumes uploads: kill it again meanwhile
            restart(m)
            time.sleep(self.rng.uniform(0, 1.0))
            m.kill9()
            self.stats.kills += 1
            dead_mount_cleaned(m)
        orphans = len(self.open_uploads())
        assert orphans or mode != "upload", "the kill was meant to land mid-upload"
        self.stats.orphans += orphans
        self.proxy.clear()
        restart(m)
        js = [read_journal(j) for j in journals]
        self.check_round(m, js, [f"r{r:03d}/w{i}" for i in range(WRITERS)])

    def thaw_round(self, r: int, rdir: Path) -> None:
        """A fresh cache: every version is cold; kill it while versions thaw."""
        b: Mount = self.make_mount(f"s3://{self.bucket}", endpoint=self.proxy.endpoint, extra=EXTRA)
        self.mounts.append(b)
        assert not any((b.cache / "blobs").iterdir())
        olds = self.rng.sample(self.big, min(2, len(self.big)))
        cold = []
        for vfile in self.rng.sample(sorted(self.done), min(6, len(self.done))) + self.big[-3:]:
            names = [n for n in os.listdir(b.path / vfile) if VERSION.fullmatch(n)]
            cold.append(f"{vfile}/{self.rng.choice(names)}")
        self.proxy.latency(LATENCY)
        start = len(self.proxy.log)
        journals = [rdir / "reader0.journal", rdir / "reader1.journal", rdir / "writer.journal"]
        procs = [
            self.spawn(b, journals[0], "--read", *cold),
            self.spawn(b, journals[1], "--read", *reversed(cold)),
            self.spawn(b, journals[2], "--dir", f"r{r:03d}/b", "--ops", "10", "--adopt", *olds),
        ]
        self.after(start, r"^GET .*/blobs/")
        time.sleep(self.rng.uniform(0, 0.3))
        self.kill(b, procs, journals)
        self.stats.orphans += len(self.open_uploads())
        self.stats.partial_thaws += len(os.listdir(b.cache / "thaw"))
        self.proxy.clear()
        restart(b)  # the same cache dir, with whatever the thaws had brought in
        assert not any((b.cache / "thaw").iterdir()), "a partial thaw survived the restart"
        js = [read_journal(j) for j in journals]
        for j in js:
            assert not j.bad, f"wrong bytes read from a cold version: {j.bad}"
            self.stats.thaw_reads += j.reads
        for path in cold:  # every cold version reads whole and right after the restart
            assert sha_of(b.path / path) == xsha(b.path / path), path
        self.check_round(b, js, [f"r{r:03d}/b"], tuple(olds))
        b.stop()

    # -- checks ------------------------------------------------------------------------
    def open_uploads(self) -> list[dict[str, object]]:
        return list(self.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", []))

    def check_round(self, m: Mount, journals: list[Journal], folders: list[str], adopted: tuple[str, ...] = ()) -> None:
        intents: dict[str, list[Intent]] = defaultdict(list)  # by the path written (via)
        for j in journals:
            for it in j.intents:
                self.intended[it.vfile].add(it.sha)
                intents[it.via].append(it)
            for vfile, sha, size in j.done:
                self.done[vfile].append(sha)
                if size > 5 * MiB and vfile not in self.big:
                    self.big.append(vfile)
        done_now = [(v, s, n) for j in journals for v, s, n in j.done]
        vfiles = {v for j in journals for v in (it.vfile for it in j.intents)} | set(adopted)
        # every entry in the round's folders is a file some writer made
        entries = [f"{f}/{n}" for f in folders if (m.path / f).is_dir() for n in os.listdir(m.path / f)]
        for rel in entries + list(adopted):
            if (m.path / rel).is_dir():
                assert rel in vfiles, f"/{rel}: a versioned file no writer made"
                for n in os.listdir(m.path / rel):
                    if n != "latest" and not VERSION.fullmatch(n):
                        self.check_plain(m, f"{rel}/{n}", intents)
            else:
                self.check_plain(m, rel, intents)
        for vfile in sorted(vfiles):
            self.check_vfile(m, vfile)
        for vfile, sha, size in done_now:
            self.stats.done += 1
            self.stats.done_bytes += size
        self.check_cache(m)
        m.wait(timeout=180)
        assert self.open_uploads() == [], "multipart uploads left open after recovery and wait"
        for _, sha, _ in done_now:  # the bytes reached L3
            body = self.s3.get_object(Bucket=self.bucket, Key=f"blobs/{sha[:2]}/{sha}")["Body"].read()
            assert hashlib.sha256(body).hexdigest() == sha
            self.stats.in_bucket += 1

    def check_plain(self, m: Mount, rel: str, intents: dict[str, list[Intent]]) -> None:
        """A plain file (its writer died before close, or before the rename): a prefix of what
        was being written there, and nothing else."""
        data = (m.path / rel).read_bytes()
        meant = [gen(*it.gen) for it in intents.get(rel, []) if it.gen]
        assert meant, f"/{rel}: a plain file no writer was writing"
        assert any(full.startswith(data) for full in meant), f"/{rel}: holds bytes nobody wrote there"
        self.stats.drafts += 1

    def check_vfile(self, m: Mount, vfile: str) -> None:
        d = m.path / vfile
        done = self.done.get(vfile, [])
        if not d.is_dir():
            assert not done, f"/{vfile}: its close() returned, but it is not a versioned file"
            return
        nums: dict[str, list[int]] = defaultdict(list)  # equal contents may recur (b"" twice)
        for n in sorted(os.listdir(d)):
            if not VERSION.fullmatch(n):
                continue
            want = xsha(d / n)
            assert sha_of(d / n) == want, f"/{vfile}/{n}: bytes do not hash to its sha256"
            assert want in self.intended[vfile], f"/{vfile}/{n}: a version no writer meant to write whole"
            nums[want].append(int(n[1:]))
            self.stats.versions_read += 1
        last = 0
        for sha in done:  # each one exists, after the one written before it
            later = [n for n in nums.get(sha, []) if n > last]
            assert later, f"/{vfile}: a version whose close() returned is missing ({sha[:12]} after v{last})"
            last = min(later)
        if nums:
            assert xsha(d / "latest") == xsha(d / f"v{max(max(v) for v in nums.values())}")

    def check_cache(self, m: Mount) -> None:
        """L2 holds nothing a crash orphaned: every work file is a plain file in the mount, every
        blob belongs to a version, and every blob is whole."""
        plain = 0
        shas = set()
        for dirpath, dirnames, filenames in os.walk(m.path):
            if dirpath == str(m.path):
                dirnames.remove(".jobs")
            for d in dirnames:
                if VERSION.fullmatch(d):
                    raise AssertionError(f"{dirpath}/{d}: a version that is a folder")
            for f in filenames:
                if VERSION.fullmatch(f):
                    shas.add(xsha(Path(dirpath) / f))
                elif f != "latest":
                    plain += 1
        work = os.listdir(m.cache / "work")
        assert len(work) == plain, f"{len(work)} work files in the cache for {plain} plain files"
        blobs = {f.name: f for sub in (m.cache / "blobs").iterdir() for f in sub.iterdir()}
        assert set(blobs) <= shas, f"blobs no version references: {sorted(set(blobs) - shas)[:3]}"
        for name, path in blobs.items():
            if name not in self.blobs_checked:
                assert sha_of(path) == name, f"blob {name[:12]} in L2 is not whole"
                self.blobs_checked.add(name)

    def final(self) -> None:
        """A fresh cache on the bucket alone sees every version whose close() returned."""
        f: Mount = self.make_mount(f"s3://{self.bucket}", extra=EXTRA)
        sample = []
        for vfile, shas in sorted(self.done.items()):
            d = f.path / vfile
            there = {xsha(d / n): n for n in os.listdir(d) if VERSION.fullmatch(n)}
            for sha in shas:
                assert sha in there, f"/{vfile}: a version whose close() returned is not in the bucket"
                self.stats.final_versions += 1
            for sha in there:
                assert sha in self.intended[vfile], f"/{vfile}: a version no writer meant to write whole"
            sample.append(d / there[shas[-1]])
        for path in self.rng.sample(sample, min(40, len(sample))):
            assert sha_of(path) == xsha(path), path
            self.stats.final_read += 1
        f.stop()
        self.proxy.close()
        for m in self.mounts:
            self.stats.add_log(m.log.read_text())


HOLD_OPEN = """
import os, sys, time
mnt = sys.argv[1]
new = os.open(f"{mnt}/new.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
os.write(new, b"partial")
draft = os.open(f"{mnt}/a.txt/latest", os.O_WRONLY | os.O_APPEND)
os.write(draft, b"more")
swp = os.open(f"{mnt}/a.txt/.latest.swp", os.O_WRONLY | os.O_CREAT, 0o600)
os.write(swp, b"swap")
os.close(swp)
print("ready", flush=True)
time.sleep(600)
"""


def test_restart_after_kill_keeps_unclosed_files_as_plain_files(make_mount, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """What a crash left half-done never becomes a version, and leaves nothing behind in L2."""
    m: Mount = make_mount(f"s3://{bucket}")
    (m.path / "a.txt").write_bytes(b"one\n")
    writer = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(m.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        assert len(os.listdir(m.cache / "work")) == 3  # new.bin, a private draft of latest, the swap file
        m.kill9()
    finally:
        writer.kill()
        writer.wait()
    dead_mount_cleaned(m)
    stray = os.urandom(1000)  # sealed into L2 by a commit that never ran
    stray_sha = hashlib.sha256(stray).hexdigest()
    (m.cache / "blobs" / stray_sha[:2]).mkdir(exist_ok=True)
    (m.cache / "blobs" / stray_sha[:2] / stray_sha).write_bytes(stray)

    restart(m)
    assert (m.path / "new.bin").is_file()  # a plain file, not a version: its close never came
    assert (m.path / "new.bin").read_bytes() == b"partial"
    assert sorted(os.listdir(m.path / "a.txt")) == [".latest.swp", "latest", "v1"]
    assert (m.path / "a.txt" / "latest").read_bytes() == b"one\n"
    assert (m.path / "a.txt" / ".latest.swp").read_bytes() == b"swap"
    assert len(os.listdir(m.cache / "work")) == 2  # the private draft of latest is gone
    assert not (m.cache / "blobs" / stray_sha[:2] / stray_sha).exists()
    assert re.search(r"WARNING relayfs.recovery: 1 new files .* plain files, not versions.*: /new.bin$",
                     m.log.read_text(), re.M)
    with open(m.path / "new.bin", "ab") as f:  # closing it after writing commits it, as usual
        f.write(b" and the rest")
    assert (m.path / "new.bin" / "v1").read_bytes() == b"partial and the rest"
    m.wait(timeout=60)


def test_kill_mid_upload_leaves_no_multipart_upload_open(make_mount, s3_server, bucket: str,  # type: ignore[no-untyped-def]
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYFS_RETRY_BASE_SECONDS", "0.2")
    monkeypatch.setenv("RELAYFS_RETRY_MAX_SECONDS", "1")
    proxy = FaultProxy(backend_port=int(s3_server.endpoint.rsplit(":", 1)[1]))
    try:
        m: Mount = make_mount(f"s3://{bucket}", endpoint=proxy.endpoint, extra=EXTRA)
        stalled = proxy.stall(30, method="PUT", contains="partNumber=2", count=1)
        data = os.urandom(6 * MiB)
        (m.path / "big.bin").write_bytes(data)
        poll(lambda: stalled.remaining == 0, "the upload's second part")
        m.kill9()
        s3 = s3_server.client()
        assert len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
        proxy.clear()
        restart(m)
        m.wait(timeout=60)
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        sha = hashlib.sha256(data).hexdigest()
        assert s3.get_object(Bucket=bucket, Key=f"blobs/{sha[:2]}/{sha}")["Body"].read() == data
        assert (m.path / "big.bin" / "v1").read_bytes() == data
        assert "left by an interrupted attempt" in m.log.read_text()
    finally:
        proxy.close()


def test_kill9_at_any_moment(make_mount, s3_server, bucket: str, tmp_path: Path, request: pytest.FixtureRequest,  # type: ignore[no-untyped-def]
                             monkeypatch: pytest.MonkeyPatch, record_property, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RELAYFS_RETRY_BASE_SECONDS", "0.2")
    monkeypatch.setenv("RELAYFS_RETRY_MAX_SECONDS", "1")
    rounds: int = request.config.getoption("--crash-rounds")
    seed: int = request.config.getoption("--crash-seed") or random.SystemRandom().getrandbits(32)
    rng = random.Random(seed)
    run = CrashRun(make_mount, s3_server, bucket, tmp_path, rng)
    mode = ""
    try:
        for r in range(rounds):
            mode = MODES[r] if r < len(MODES) else rng.choice(MODES)
            if mode == "thaw" and not run.big:
                mode = "random"  # nothing multi-MiB to thaw yet
            run.round(r, mode)
        run.final()
    except BaseException:
        with capsys.disabled():
            print(f"\ncrash test failed in round {run.stats.rounds - 1} ({mode}); replay with --crash-seed {seed}")
        raise
    s = run.stats
    summary = (
        f"crash test (seed {seed}): {s.rounds} rounds ({', '.join(f'{k} {v}' for k, v in sorted(s.modes.items()))}),"
        f" {s.kills} kill -9; {s.done} versions whose close() returned checked ({s.done_bytes / MiB:.1f} MiB),"
        f" {s.versions_read} versions read back and hashed, {s.in_bucket} blobs hashed in the bucket,"
        f" {s.drafts} half-written plain files prefix-checked, {s.thaw_reads} cold reads,"
        f" {s.partial_thaws} thaws cut off; restarts requeued {s.jobs_requeued} jobs, removed {s.work_removed}"
        f" orphaned work files, {s.blobs_removed} uncommitted blobs and {s.nodes_dropped} half-committed files,"
        f" {s.orphans} multipart uploads found open after a kill, {s.aborted} aborted by resumed jobs;"
        f" fresh cache: {s.final_versions}"
        f" versions found, {s.final_read} read; bytes lost: 0"
    )
    for key, value in vars(s).items():
        record_property(key, dict(value) if isinstance(value, defaultdict) else value)
    with capsys.disabled():
        print("\n" + summary)
