"""SPEC "What `ls` shows", rules 1-10, through a real mount driven by real programs.

Every test works on a fresh bucket of the moto server and drives the mount the way a user
does: cp, cat, shell redirections, sed -i, rsync, vim/ex, mv, rm, getfattr, ls -l, and plain
Python ``open()``/``os`` calls. What the bucket holds is read back with boto3 against the same
S3 endpoint; a second mount with an empty cache shows what L3 alone says.

Every test runs twice: on the S3 server as it is, and with the Storj preset through a proxy
that refuses what Storj's gateway refuses (tests/faultproxy.py, storj mode). There the test
also fails if the mount sent anything the gateway would refuse, throttling aside.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest

from faultproxy import FaultProxy
from mount import Mount, poll, relayfs, sh

VERSION_NAME = re.compile(r"^v[0-9]+$")


# -- helpers ------------------------------------------------------------------------------
def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def listing(path: Path) -> list[str]:
    """Entries of a folder as ``ls -A`` prints them, sorted."""
    return sorted(os.listdir(path))


def versions(path: Path) -> list[str]:
    """The vK names of a versioned file, in version order."""
    return sorted((n for n in os.listdir(path) if VERSION_NAME.match(n)), key=lambda n: int(n[1:]))


def vnames(n: int) -> list[str]:
    return [f"v{i}" for i in range(1, n + 1)]




def os_error(fn: Callable[..., Any], *args: Any) -> int:
    """The errno ``fn(*args)`` fails with (the test fails if it succeeds)."""
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


def write_file(path: Path, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def xattrs(path: Path) -> dict[str, str]:
    """``getfattr -d -m user.relayfs`` of a path, as a dict."""
    out = sh(f"getfattr --absolute-names -d -m '^user\\.relayfs\\.' '{path}'").stdout
    return {m.group(1): m.group(2) for m in re.finditer(r'^(user\.relayfs\.\w+)="(.*)"$', out, re.M)}


def s3(mnt: Mount) -> tuple[Any, str]:
    # checksums only when required, so the Storj-like proxy answers this client too
    config = botocore.config.Config(request_checksum_calculation="when_required", response_checksum_validation="when_required")
    return boto3.client("s3", endpoint_url=mnt.endpoint, config=config), mnt.l3.removeprefix("s3://")


def bucket_objects(mnt: Mount, prefix: str = "") -> dict[str, str]:
    """Every key under ``prefix`` in the mount's bucket, with its ETag."""
    client, bucket = s3(mnt)
    out: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = obj["ETag"]
    return out


def blobs(mnt: Mount) -> dict[str, str]:
    """The content objects of the bucket (key -> ETag)."""
    return bucket_objects(mnt, "blobs/")


def blob_shas(mnt: Mount) -> set[str]:
    return {k.rsplit("/", 1)[-1] for k in blobs(mnt)}


def bucket_holds(mnt: Mount, data: bytes) -> bool:
    """Whether any object of the bucket is named by the SHA-256 of ``data``."""
    digest = sha(data)
    return any(digest in key for key in bucket_objects(mnt))


def job_ids(mnt: Mount) -> set[int]:
    return {int(n) for n in os.listdir(mnt.path / ".jobs")}


def job(mnt: Mount, job_id: int | str) -> dict[str, str]:
    text = (mnt.path / ".jobs" / str(job_id)).read_text()
    return dict(line.split(": ", 1) for line in text.splitlines())


def ls_l(path: Path) -> dict[str, tuple[str, int, int]]:
    """``ls -l`` of a folder: name -> (mode string, size, mtime in ns)."""
    out = sh(f"ls -l --time-style=+%s.%N '{path}'").stdout
    rows = {}
    for line in out.splitlines()[1:]:  # "total N" first
        mode, _links, _user, _group, size, when, name = line.split(None, 6)
        secs, nanos = when.split(".")
        rows[name] = (mode, int(size), int(secs) * 10**9 + int(nanos))
    return rows


def all_version_shas(root: Path) -> set[str]:
    """The SHA-256 of every version under ``root``, as the mount reports it."""
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and ".jobs" in dirnames:
            dirnames.remove(".jobs")
        for name in filenames:
            if VERSION_NAME.match(name):
                out.add(os.getxattr(Path(dirpath) / name, "user.relayfs.sha256").decode())
    return out


@pytest.fixture(params=["s3", "storj"])
def l3_mode(request: pytest.FixtureRequest, s3_server, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy | None]:  # type: ignore[no-untyped-def]
    """None: the S3 server itself. A storj-mode proxy: mounts use ``[l3] provider = "storj"``
    (as RELAYFS_L3_PROVIDER) with the proxy as their endpoint."""
    if request.param == "s3":
        yield None
        return
    proxy = FaultProxy(backend_port=int(s3_server.endpoint.rsplit(":", 1)[1]), mode="storj")
    monkeypatch.setenv("RELAYFS_L3_PROVIDER", "storj")
    try:
        yield proxy
    finally:
        proxy.close()
    assert proxy.client_errors() == Counter(), "the mount sent what Storj's gateway refuses"


@pytest.fixture
def make_mount(l3_mode: FaultProxy | None, make_mount):  # type: ignore[no-untyped-def]
    """conftest's factory; in storj mode every mount (fresh ones too) goes through the proxy.
    ``l3_mode`` comes first so that the proxy outlives every mount."""
    if l3_mode is None:
        return make_mount

    def make(l3: str, *, endpoint: str | None = "", **kw: Any) -> Mount:
        return make_mount(l3, endpoint=l3_mode.endpoint if endpoint == "" else endpoint, **kw)

    return make


@pytest.fixture
def local(tmp_path: Path) -> Path:
    """A local folder (outside the mount) for source files."""
    d = tmp_path / "local"
    d.mkdir()
    return d


# -- 1. Read ---------------------------------------------------------------------------------
def test_read_versions_latest_and_diff(mnt):
    """Rule 1: cat vK and latest, diff v1 v2."""
    sh("mkdir reports && printf 'one\\ntwo\\n' > reports/q3.txt", cwd=mnt.path)
    sh("printf 'one\\nTWO\\n' > reports/q3.txt/latest", cwd=mnt.path)
    q3 = mnt.path / "reports" / "q3.txt"
    assert listing(q3) == ["latest", "v1", "v2"]
    assert sh("cat reports/q3.txt/v1", cwd=mnt.path).stdout == "one\ntwo\n"
    assert sh("cat reports/q3.txt/v2", cwd=mnt.path).stdout == "one\nTWO\n"
    assert sh("cat reports/q3.txt/latest", cwd=mnt.path).stdout == "one\nTWO\n"
    d = sh("diff reports/q3.txt/v1 reports/q3.txt/v2", cwd=mnt.path, check=False)
    assert d.returncode == 1
    assert "< two" in d.stdout and "> TWO" in d.stdout
    assert sh("diff reports/q3.txt/v2 reports/q3.txt/latest", cwd=mnt.path, check=False).returncode == 0
    assert stat.S_ISDIR(os.stat(q3).st_mode)
    for v in ("v1", "v2"):
        st = os.stat(q3 / v)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444


def test_ls_l_shows_exact_sizes_and_commit_times(mnt, local):
    """Rule 1: ls -l NAME/ gives each version's exact size and its commit time as mtime."""
    big = os.urandom(3 * 1024 * 1024 + 17)  # spans several chunks
    (local / "data.bin").write_bytes(big)
    d = mnt.path / "data.bin"
    before1 = time.time_ns()
    sh(f"cp '{local / 'data.bin'}' '{mnt.path}/'")
    after1 = time.time_ns()
    before2 = time.time_ns()
    sh(f"printf 'tiny' > '{d}/latest'")
    after2 = time.time_ns()
    before3 = time.time_ns()
    sh(f"head -c 1000 '{d}/v1' > '{d}/latest'")
    after3 = time.time_ns()

    rows = ls_l(d)
    assert sorted(rows) == ["latest", "v1", "v2", "v3"]
    assert [rows[v][1] for v in ("v1", "v2", "v3")] == [len(big), 4, 1000]
    assert rows["v1"][0] == rows["v2"][0] == rows["v3"][0] == "-r--r--r--"
    assert before1 <= rows["v1"][2] <= after1
    assert before2 <= rows["v2"][2] <= after2
    assert before3 <= rows["v3"][2] <= after3
    assert rows["latest"][1:] == rows["v3"][1:]  # latest is v3: same size, same time
    assert rows["latest"][0].startswith("-")
    # the commit time is the version's for good: reading and later commits do not move it
    sh(f"cat '{d}/v1' > /dev/null && echo more >> '{d}/latest'")
    again = ls_l(d)
    assert [again[v] for v in ("v1", "v2", "v3")] == [rows[v] for v in ("v1", "v2", "v3")]
    assert again["v4"][1] == 1005 and again["v4"][2] >= rows["v3"][2]
    assert (d / "v1").read_bytes() == big


def test_open_latest_keeps_its_version_while_a_new_one_commits(mnt, local):
    """Rule 1: an open handle on latest reads one version's bytes, even across a commit."""
    old = os.urandom(2 * 1024 * 1024 + 333)
    (local / "f").write_bytes(old)
    sh(f"cp '{local / 'f'}' '{mnt.path}/'")
    latest = mnt.path / "f" / "latest"
    with open(latest, "rb", buffering=0) as reader:
        first = reader.read(700_000)
        sh(f"printf 'brand new' > '{latest}'")  # another process commits v2 meanwhile
        assert versions(mnt.path / "f") == ["v1", "v2"]
        assert latest.read_bytes() == b"brand new"  # a new open sees v2
        rest = b""
        while chunk := reader.read(300_000):
            rest += chunk
    assert first + rest == old
    # a reader of a version that is deleted meanwhile (and its delete reached L3) reads on
    with open(mnt.path / "f" / "v1", "rb", buffering=0) as reader:
        first = reader.read(1_000_000)
        sh("rm f/v1", cwd=mnt.path)
        mnt.wait()
        assert not bucket_holds(mnt, old)
        rest = b""
        while chunk := reader.read(300_000):
            rest += chunk
    assert first + rest == old
    assert listing(mnt.path / "f") == ["latest", "v2"]


# -- 2. Create -------------------------------------------------------------------------------
def test_create_with_cp_and_echo(mnt, local):
    """Rule 2: cp and echo into a folder commit NAME/v1; NAME is then a versioned file."""
    pdf = os.urandom(1024 * 1024 + 5)
    (local / "q3.pdf").write_bytes(pdf)
    sh("mkdir reports", cwd=mnt.path)
    sh(f"cp '{local / 'q3.pdf'}' '{mnt.path}/reports/'")
    sh(f"echo x > '{mnt.path}/reports/a.txt'")
    reports = mnt.path / "reports"
    assert listing(reports) == ["a.txt", "q3.pdf"]
    assert listing(reports / "q3.pdf") == ["latest", "v1"]
    assert listing(reports / "a.txt") == ["latest", "v1"]
    assert sh(f"cmp '{local / 'q3.pdf'}' '{reports}/q3.pdf/v1'").returncode == 0
    assert sh(f"cat '{reports}/a.txt/latest'").stdout == "x\n"
    assert stat.S_ISDIR(os.stat(reports / "a.txt").st_mode)
    # cp refuses to replace the versioned file with a plain file (the README says so)
    again = sh(f"cp '{local / 'q3.pdf'}' '{reports}/'", check=False)
    assert again.returncode != 0 and "directory" in again.stderr
    assert listing(reports / "q3.pdf") == ["latest", "v1"]


def test_open_file_behaves_like_a_file_until_it_is_closed(mnt):
    """Rule 2: while open, a new file is a plain regular file; the close commits it."""
    path = mnt.path / "draft.txt"
    with open(path, "wb") as w:
        w.write(b"hello ")
        w.flush()
        st = os.stat(path)
        assert stat.S_ISREG(st.st_mode) and st.st_size == 6
        assert "draft.txt" in listing(mnt.path)
        assert path.read_bytes() == b"hello "  # another reader sees what was written so far
        w.write(b"world")
    assert stat.S_ISDIR(os.stat(path).st_mode)
    assert listing(path) == ["latest", "v1"]
    assert (path / "v1").read_bytes() == b"hello world"
    # a file only created (touch) commits an empty v1 just after its close
    sh("touch empty", cwd=mnt.path)
    poll(lambda: (mnt.path / "empty").is_dir() and listing(mnt.path / "empty") == ["latest", "v1"], "touch to commit")
    assert (mnt.path / "empty" / "v1").read_bytes() == b""
    # O_EXCL on a name that exists fails as on any filesystem
    assert os_error(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL) == errno.EEXIST


def test_open_new_file_can_be_renamed_or_removed_before_its_close(mnt):
    """Rule 2: like any filesystem while open: a rename moves what the close commits, and a
    file removed while open just vanishes at its close (no error, no version, no upload)."""
    fd = os.open(mnt.path / "tmp-name", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"part one, ")
    os.rename(mnt.path / "tmp-name", mnt.path / "final")
    os.write(fd, b"part two")
    os.close(fd)
    assert listing(mnt.path) == [".jobs", "final"]
    assert (mnt.path / "final" / "v1").read_bytes() == b"part one, part two"

    gone = b"never kept " + os.urandom(8).hex().encode()
    fd = os.open(mnt.path / "doomed", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, gone[:5])
    os.unlink(mnt.path / "doomed")
    os.write(fd, gone[5:])
    assert os.pread(fd, 100, 0) == gone
    os.close(fd)  # must not fail
    assert listing(mnt.path) == [".jobs", "final"]

    # a writer of latest whose file is removed (rm -r) meanwhile closes without an error
    fd = os.open(mnt.path / "final" / "latest", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b" and more")
    for name in os.listdir(mnt.path / "final"):  # rm -r, in this very process
        os.unlink(mnt.path / "final" / name)
    os.rmdir(mnt.path / "final")
    os.write(fd, b" and more")
    os.close(fd)
    assert listing(mnt.path) == [".jobs"]
    mnt.wait()
    assert not bucket_holds(mnt, gone)
    assert blob_shas(mnt) == set()


# -- 3. New version --------------------------------------------------------------------------
def test_each_write_of_latest_commits_exactly_one_version(mnt):
    """Rule 3: >, >>, truncate, in-place overwrite and truncate(2) each commit one version."""
    sh("echo one > f", cwd=mnt.path)
    f = mnt.path / "f"
    expect = [b"one\n"]

    def check() -> None:
        assert versions(f) == vnames(len(expect))
        for i, data in enumerate(expect, 1):
            assert (f / f"v{i}").read_bytes() == data
        assert (f / "latest").read_bytes() == expect[-1]

    sh("echo two > f/latest", cwd=mnt.path)
    expect.append(b"two\n")
    check()
    sh("echo three >> f/latest", cwd=mnt.path)
    expect.append(b"two\nthree\n")
    check()
    sh("truncate -s 3 f/latest", cwd=mnt.path)
    expect.append(b"two")
    check()
    with open(f / "latest", "r+b") as w:  # overwrite in place, keep the rest
        w.seek(1)
        w.write(b"X")
    expect.append(b"tXo")
    check()
    os.truncate(f / "latest", 1)  # truncate(2) with no open file
    expect.append(b"t")
    check()
    sh("dd if=/dev/zero of=f/latest bs=1k count=64 status=none", cwd=mnt.path)  # many writes, one close
    expect.append(bytes(65536))
    check()
    sh(": > f/latest", cwd=mnt.path)  # truncated, nothing written: commits at release
    expect.append(b"")
    poll(lambda: versions(f) == vnames(len(expect)), "the truncate to commit")
    check()
    src = mnt.root / "kept-attrs"
    src.write_bytes(b"copied with -p\n")
    os.chmod(src, 0o644)
    sh(f"cp -p '{src}' f/latest", cwd=mnt.path)  # re-applying latest's own mode is fine
    expect.append(b"copied with -p\n")
    check()


def test_sed_i_commits_one_version(mnt):
    """Rule 3: sed -i saves by renaming its temp file onto latest: one version, no leftovers."""
    sh("printf 'alpha\\nbeta\\n' > f.txt", cwd=mnt.path)
    sh("sed -i 's/a/A/g' f.txt/latest", cwd=mnt.path)
    f = mnt.path / "f.txt"
    assert listing(f) == ["latest", "v1", "v2"]
    assert (f / "latest").read_text() == "AlphA\nbetA\n"
    assert (f / "v1").read_text() == "alpha\nbeta\n"
    sh("sed -i -e 's/\\(b.*\\)/\\1!/' f.txt/latest", cwd=mnt.path)
    assert listing(f) == ["latest", "v1", "v2", "v3"]
    assert (f / "v3").read_text() == "AlphA\nbetA!\n"
    sh("sed -i 's/no such text/x/' f.txt/latest", cwd=mnt.path)  # rewrites identical bytes
    assert listing(f) == ["latest", "v1", "v2", "v3"]
    assert (f / "v2").read_text() == "AlphA\nbetA\n"


def test_renaming_a_file_onto_latest_commits_it(mnt, local):
    """Rule 3: rename(2) onto NAME/latest commits the renamed file as one version."""
    sh("echo v1 > f", cwd=mnt.path)
    f = mnt.path / "f"
    write_file(f / ".f.tmp", b"saved atomically\n")
    os.rename(f / ".f.tmp", f / "latest")
    assert listing(f) == ["latest", "v1", "v2"]
    assert (f / "latest").read_bytes() == b"saved atomically\n"
    write_file(f / "next", b"via mv\n")
    sh("mv f/next f/latest", cwd=mnt.path)
    assert listing(f) == ["latest", "v1", "v2", "v3"]
    (local / "outside").write_text("from another filesystem\n")
    sh(f"cp '{local / 'outside'}' f/latest", cwd=mnt.path)
    assert listing(f) == ["latest", "v1", "v2", "v3", "v4"]
    assert (f / "v4").read_text() == "from another filesystem\n"
    write_file(f / "same", b"from another filesystem\n")
    os.replace(f / "same", f / "latest")  # the bytes latest already has: nothing new
    assert listing(f) == ["latest", "v1", "v2", "v3", "v4"]
    assert [(f / v).read_bytes() for v in vnames(3)] == [b"v1\n", b"saved atomically\n", b"via mv\n"]
    # latest itself cannot be moved away (copy it instead), nor can a folder become a version
    assert os_error(os.rename, f / "latest", mnt.path / "elsewhere") == errno.EROFS
    sh("mkdir d", cwd=mnt.path)
    assert os_error(os.rename, mnt.path / "d", f / "latest") in (errno.EISDIR, errno.ENOTDIR)
    assert listing(f) == ["latest", "v1", "v2", "v3", "v4"]


def test_mv_from_another_filesystem_onto_latest(mnt, local):
    """Rule 3: `mv ~/new.pdf mnt/q3.pdf/latest` (a copy, not a rename(2)) commits one version."""
    sh("echo one > f", cwd=mnt.path)
    (local / "outside").write_text("from another filesystem\n")
    sh(f"mv '{local / 'outside'}' f/latest", cwd=mnt.path)
    assert listing(mnt.path / "f") == ["latest", "v1", "v2"]
    assert (mnt.path / "f" / "v2").read_text() == "from another filesystem\n"


def test_rsync_into_latest_into_the_file_and_into_a_folder(mnt, local):
    """Rule 3 (and 2): rsync onto latest, rsync NAME into NAME/, rsync a new file into a folder."""
    (local / "report").write_text("first\n")
    sh("mkdir docs", cwd=mnt.path)
    docs = mnt.path / "docs"
    sh(f"rsync '{local / 'report'}' '{docs}/'")  # a new file, through rsync's temp file
    assert listing(docs) == ["report"]
    assert listing(docs / "report") == ["latest", "v1"]
    assert (docs / "report" / "v1").read_text() == "first\n"
    mode = stat.S_IMODE(os.stat(docs / "report").st_mode)
    assert mode & 0o500 == 0o500, f"the versioned file must stay searchable, got {oct(mode)}"

    (local / "src").write_text("second\n")
    sh(f"rsync '{local / 'src'}' '{docs}/report/latest'")
    assert listing(docs / "report") == ["latest", "v1", "v2"]
    assert (docs / "report" / "latest").read_text() == "second\n"

    (local / "report").write_text("third\n")
    sh(f"rsync '{local / 'report'}' '{docs}/report/'")
    assert listing(docs / "report") == ["latest", "v1", "v2", "v3"]
    assert (docs / "report" / "latest").read_text() == "third\n"

    # syncing the same bytes again makes no new version either way
    sh(f"rsync '{local / 'report'}' '{docs}/report/'")
    sh(f"rsync -c '{local / 'report'}' '{docs}/report/latest'")
    sh(f"rsync '{local / 'report'}' '{docs}/report/latest'")
    assert listing(docs / "report") == ["latest", "v1", "v2", "v3"]
    mnt.wait()
    assert blob_shas(mnt) == all_version_shas(mnt.path)  # rsync's temp files left nothing behind


def test_cp_file_named_name_into_the_versioned_file(mnt, local):
    """Rule 3: cp q3.pdf mnt/reports/q3.pdf/ commits the next version."""
    (local / "q3.pdf").write_bytes(b"draft 1")
    sh("mkdir reports", cwd=mnt.path)
    sh(f"cp '{local / 'q3.pdf'}' '{mnt.path}/reports/'")
    (local / "q3.pdf").write_bytes(b"draft 2, longer")
    sh(f"cp '{local / 'q3.pdf'}' '{mnt.path}/reports/q3.pdf/'")
    q3 = mnt.path / "reports" / "q3.pdf"
    assert listing(q3) == ["latest", "v1", "v2"]
    assert (q3 / "v1").read_bytes() == b"draft 1"
    assert (q3 / "v2").read_bytes() == b"draft 2, longer"
    assert (q3 / "latest").read_bytes() == b"draft 2, longer"
    sh(f"cp '{local / 'q3.pdf'}' '{q3}/'")  # the same bytes again: nothing new
    assert listing(q3) == ["latest", "v1", "v2"]


def test_vim_and_ex_save_latest_as_one_version(mnt):
    """Rule 3: vim -es and ex -s writing latest each commit exactly one version."""
    sh("printf 'aaa\\nbab\\n' > notes", cwd=mnt.path)
    notes = mnt.path / "notes"
    sh("vim -es -u NONE -i NONE -n -c '%s/a/b/g' -c wq notes/latest", cwd=mnt.path)
    assert listing(notes) == ["latest", "v1", "v2"]
    assert (notes / "latest").read_text() == "bbb\nbbb\n"
    sh("ex -s -u NONE -i NONE -n -c '$s/$/\\rccc/' -c wq notes/latest", cwd=mnt.path)
    assert listing(notes) == ["latest", "v1", "v2", "v3"]
    assert (notes / "latest").read_text() == "bbb\nbbb\nccc\n"
    sh("vim -es -u NONE -i NONE -n -c wq notes/latest", cwd=mnt.path)  # saved, unchanged
    assert listing(notes) == ["latest", "v1", "v2", "v3"]
    assert (notes / "v1").read_text() == "aaa\nbab\n"


def test_vim_swap_and_backup_files_are_scratch(mnt):
    """Rules 3 and 5: vim with its swap file and a kept backup in NAME/ saves one version;
    the swap and backup files are local scratch files, never versions, never uploaded."""
    sh("printf 'keep me\\n' > doc", cwd=mnt.path)
    doc = mnt.path / "doc"
    seen = mnt.root / "seen-while-editing"
    # swap file next to the file (dir=.), backup kept next to it, /tmp not skipped
    sh(
        "vim -es -u NONE -i NONE --cmd 'set dir=. backup backupdir=. backupskip=' "
        f"-c 'silent !ls -a {doc} > {seen}' -c '%s/keep/kept/' -c wq doc/latest",
        cwd=mnt.path,
    )
    assert ".latest.swp" in seen.read_text().split()  # the swap file lived in doc/
    assert listing(doc) == ["latest", "latest~", "v1", "v2"]  # the swap file is gone again
    assert (doc / "latest").read_text() == "kept me\n"
    assert (doc / "latest~").read_text() == "keep me\n"
    assert stat.S_ISREG(os.stat(doc / "latest~").st_mode)
    assert "user.relayfs.sha256" not in xattrs(doc / "latest~")
    mnt.wait()
    assert blob_shas(mnt) == {sha(b"keep me\n"), sha(b"kept me\n")}


def test_open_for_write_and_close_without_change_commits_nothing(mnt, local):
    """Rule 3: opening latest for writing and closing it unchanged commits nothing."""
    sh("echo same > f", cwd=mnt.path)
    f = mnt.path / "f"
    latest = f / "latest"
    open(latest, "r+b").close()
    open(latest, "ab").close()
    fd = os.open(latest, os.O_WRONLY)
    os.close(fd)
    sh("touch f/latest && : >> f/latest", cwd=mnt.path)
    with open(latest, "r+b") as w:  # rewrites the same bytes
        w.write(b"same\n")
    sh(f"cp f/latest '{local / 'copy'}' && cat '{local / 'copy'}' > f/latest", cwd=mnt.path)
    sh(f"cp '{local / 'copy'}' f/latest", cwd=mnt.path)
    os.truncate(latest, 5)  # to the size it has
    assert listing(f) == ["latest", "v1"]
    # the next real change is v2: nothing above used up a version number
    sh("echo other > f/latest", cwd=mnt.path)
    assert listing(f) == ["latest", "v1", "v2"]
    assert (f / "v2").read_text() == "other\n"
    mnt.wait()
    uploads = [j for j in (job(mnt, i) for i in job_ids(mnt)) if j["kind"] == "upload"]
    assert sorted(j["path"] for j in uploads) == ["/f/v1", "/f/v2"]


# -- 4. Immutable ----------------------------------------------------------------------------
def test_versions_are_read_only_even_for_root(mnt, local):
    """Rule 4: write, truncate, chmod, rename onto vK fail with EROFS and change nothing."""
    assert os.geteuid() == 0
    sh("echo original > f && echo second > f/latest", cwd=mnt.path)
    f = mnt.path / "f"
    v1 = f / "v1"
    before = (ls_l(f), xattrs(v1)["user.relayfs.sha256"])

    assert os_error(open, v1, "r+b") == errno.EROFS
    assert os_error(open, v1, "ab") == errno.EROFS
    assert os_error(open, v1, "wb") == errno.EROFS
    assert os_error(os.truncate, v1, 0) == errno.EROFS
    assert os_error(os.chmod, v1, 0o644) == errno.EROFS
    assert os_error(os.chmod, v1, 0o444) == errno.EROFS
    assert os_error(os.chmod, f / "latest", 0o600) == errno.EROFS
    assert os_error(os.chmod, f / "latest", 0o755) == errno.EROFS
    assert os_error(os.rename, f / "v2", v1) == errno.EROFS
    assert os_error(os.setxattr, v1, "user.relayfs.sha256", b"0" * 64) == errno.EROFS
    (f / "tmp").write_text("scratch\n")
    assert os_error(os.rename, f / "tmp", v1) == errno.EROFS
    (local / "other").write_text("other\n")
    for cmd in (
        "echo x > f/v1",
        "echo x >> f/v1",
        "truncate -s 0 f/v1",
        "chmod u+w f/v1",
        "mv f/tmp f/v1",
        f"cp '{local / 'other'}' f/v1",
        "sed -i s/o/0/ f/v1",
        "dd if=/dev/zero of=f/v1 bs=1 count=1 conv=notrunc status=none",
    ):
        done = sh(cmd, cwd=mnt.path, check=False)
        assert done.returncode != 0, cmd
        assert "Read-only file system" in done.stderr, (cmd, done.stderr)
    os.unlink(f / "tmp")
    assert (ls_l(f), xattrs(v1)["user.relayfs.sha256"]) == before
    assert v1.read_text() == "original\n"
    assert (f / "v2").read_text() == "second\n"
    assert listing(f) == ["latest", "v1", "v2"]


# -- 5. Scratch ------------------------------------------------------------------------------
def test_scratch_files_stay_local_and_never_become_versions(mnt, make_mount):
    """Rule 5: other files in NAME/ are normal files, local only, never uploaded."""
    sh("mkdir d && echo content > d/f", cwd=mnt.path)
    f = mnt.path / "d" / "f"
    secret = b"scratch bytes " + os.urandom(16).hex().encode() + b"\n"
    kept = b"kept scratch " + os.urandom(16).hex().encode() + b"\n"
    write_file(f / "notes.tmp", secret)
    assert (f / "notes.tmp").read_bytes() == secret
    assert stat.S_ISREG(os.stat(f / "notes.tmp").st_mode)
    assert os.stat(f / "notes.tmp").st_size == len(secret)
    sh("echo more >> d/f/notes.tmp", cwd=mnt.path)
    assert (f / "notes.tmp").read_bytes() == secret + b"more\n"
    with open(f / "notes.tmp", "r+b") as h:  # in place, like a database or an editor would
        h.write(b"S")
    os.chmod(f / "notes.tmp", 0o600)
    assert stat.S_IMODE(os.stat(f / "notes.tmp").st_mode) == 0o600
    sh("mv d/f/notes.tmp d/f/notes.bak", cwd=mnt.path)
    assert listing(f) == ["latest", "notes.bak", "v1"]
    assert (f / "notes.bak").read_bytes() == b"S" + secret[1:] + b"more\n"
    write_file(f / ".f.swp", kept)
    write_file(f / "v1.orig", kept)  # names that only look like versions are fine
    write_file(f / "latest.new", kept)
    assert listing(f) == [".f.swp", "latest", "latest.new", "notes.bak", "v1", "v1.orig"]
    assert "user.relayfs.sha256" not in xattrs(f / ".f.swp")
    assert (f / "latest").read_text() == "content\n"
    sh("rm d/f/notes.bak", cwd=mnt.path)
    assert listing(f) == [".f.swp", "latest", "latest.new", "v1", "v1.orig"]
    mnt.wait()
    for data in (secret, secret + b"more\n", b"S" + secret[1:] + b"more\n", kept):
        assert not bucket_holds(mnt, data)
    assert blob_shas(mnt) == {sha(b"content\n")}
    assert not any("notes" in k or "swp" in k for k in bucket_objects(mnt))
    # a fresh machine sees the file and its version, not the scratch files
    other = make_mount(mnt.l3)
    assert listing(other.path / "d" / "f") == ["latest", "v1"]


# -- 6. Delete -------------------------------------------------------------------------------
def test_rm_version_and_rm_latest(mnt, make_mount):
    """Rule 6: rm NAME/vK removes one version; rm NAME/latest removes no data."""
    sh("echo A > f && echo B > f/latest && echo C > f/latest", cwd=mnt.path)
    f = mnt.path / "f"
    mnt.wait()
    sh("rm f/v2", cwd=mnt.path)
    assert listing(f) == ["latest", "v1", "v3"]
    assert (f / "v1").read_text() == "A\n" and (f / "v3").read_text() == "C\n"
    assert os_error(open, f / "v2") == errno.ENOENT
    sh("rm f/latest", cwd=mnt.path)  # only the name goes, until the next commit
    assert listing(f) == ["v1", "v3"]
    assert os_error(open, f / "latest") == errno.ENOENT
    assert (f / "v3").read_text() == "C\n"
    sh("rm f/latest", cwd=mnt.path, check=False)
    relayfs("rollback", str(f), "v3")  # any new version brings the name back
    assert listing(f) == ["latest", "v1", "v3", "v4"]
    assert (f / "latest").read_text() == "C\n"
    sh("rm f/v4", cwd=mnt.path)
    sh("rm f/v3", cwd=mnt.path)  # the newest version: latest falls back to v1
    assert listing(f) == ["latest", "v1"]
    assert (f / "latest").read_text() == "A\n"
    sh("echo D > f/latest", cwd=mnt.path)  # numbers are never reused
    assert listing(f) == ["latest", "v1", "v5"]
    mnt.wait()
    assert not bucket_holds(mnt, b"B\n") and not bucket_holds(mnt, b"C\n")
    assert blob_shas(mnt) == {sha(b"A\n"), sha(b"D\n")}
    fresh = make_mount(mnt.l3)
    assert listing(fresh.path / "f") == ["latest", "v1", "v5"]
    assert (fresh.path / "f" / "v1").read_text() == "A\n"
    assert (fresh.path / "f" / "latest").read_text() == "D\n"


def test_rm_r_removes_the_file_and_a_shared_blob_survives(mnt, make_mount):
    """Rule 6: rm -r NAME removes every version; bytes another file uses stay in L3."""
    sh("mkdir d && echo shared > d/g && echo only-g > d/g/latest && echo shared > d/h", cwd=mnt.path)
    sh("echo scratch > d/g/notes", cwd=mnt.path)
    mnt.wait()
    assert bucket_holds(mnt, b"only-g\n")
    sh("rm -r d/g", cwd=mnt.path)
    assert listing(mnt.path / "d") == ["h"]
    assert os_error(os.stat, mnt.path / "d" / "g") == errno.ENOENT
    assert (mnt.path / "d" / "h" / "v1").read_text() == "shared\n"
    mnt.wait()
    assert not bucket_holds(mnt, b"only-g\n")
    assert blob_shas(mnt) == {sha(b"shared\n")}
    # the name is free again: a new file there starts at v1
    sh("echo new > d/g", cwd=mnt.path)
    assert listing(mnt.path / "d" / "g") == ["latest", "v1"]
    sh("rm -r d/g", cwd=mnt.path)
    # folders: rmdir needs them empty, rm -r empties them
    sh("mkdir -p e/sub && echo x > e/sub/y && echo z > e/z", cwd=mnt.path)
    assert os_error(os.rmdir, mnt.path / "e") == errno.ENOTEMPTY
    sh("rm -r e", cwd=mnt.path)
    sh("mkdir empty && rmdir empty", cwd=mnt.path)
    assert listing(mnt.path) == [".jobs", "d"]
    mnt.wait()
    assert blob_shas(mnt) == {sha(b"shared\n")}
    fresh = make_mount(mnt.l3)
    assert listing(fresh.path) == [".jobs", "d"]
    assert listing(fresh.path / "d") == ["h"]
    assert (fresh.path / "d" / "h" / "latest").read_text() == "shared\n"


# -- 7. Rollback -----------------------------------------------------------------------------
def test_rollback_with_the_cli_and_with_cp(mnt):
    """Rule 7: relayfs rollback and cp NAME/vK NAME/latest commit vK again, uploading nothing."""
    sh("echo good > f && echo bad > f/latest", cwd=mnt.path)
    f = mnt.path / "f"
    mnt.wait()
    blobs_before = blobs(mnt)
    out = relayfs("rollback", str(f), "v1").stdout
    assert "v3" in out
    assert listing(f) == ["latest", "v1", "v2", "v3"]
    assert (f / "v3").read_text() == "good\n"
    assert (f / "latest").read_text() == "good\n"
    assert xattrs(f / "v3")["user.relayfs.sha256"] == xattrs(f / "v1")["user.relayfs.sha256"]
    sh("cp f/v2 f/latest", cwd=mnt.path)
    assert listing(f) == ["latest", "v1", "v2", "v3", "v4"]
    assert (f / "latest").read_text() == "bad\n"
    relayfs("rollback", str(f / "latest"), "3")  # a version number alone works too
    assert (f / "v5").read_text() == "good\n"
    mnt.wait()
    assert blobs(mnt) == blobs_before  # same objects, same ETags: no bytes uploaded again
    for v in ("v3", "v4", "v5"):
        assert xattrs(f / v)["user.relayfs.state"] == "durable"
    bad = relayfs("rollback", str(f), "v9", check=False)
    assert bad.returncode != 0 and "has no version v9" in bad.stderr
    assert versions(f) == vnames(5)


# -- 8. Rename -------------------------------------------------------------------------------
def test_mv_of_folders_and_versioned_files_uploads_no_data(mnt, make_mount, local):
    """Rule 8: mv of folders and versioned files works and uploads no file data again."""
    big = os.urandom(1024 * 1024 + 99)
    (local / "big").write_bytes(big)
    sh(f"mkdir -p reports/2024 && cp '{local / 'big'}' reports/2024/big", cwd=mnt.path)
    sh("echo one > reports/a.txt && echo two > reports/a.txt/latest", cwd=mnt.path)
    mnt.wait()
    objects_before = blobs(mnt)
    jobs_before = job_ids(mnt)
    sh("mv reports archive", cwd=mnt.path)
    sh("mv archive/a.txt archive/b.txt", cwd=mnt.path)
    sh("mkdir moved && mv archive/2024/big moved/", cwd=mnt.path)
    sh("mv archive/2024 archive/old", cwd=mnt.path)
    assert listing(mnt.path) == [".jobs", "archive", "moved"]
    assert listing(mnt.path / "archive") == ["b.txt", "old"]
    assert listing(mnt.path / "archive" / "b.txt") == ["latest", "v1", "v2"]
    assert (mnt.path / "archive" / "b.txt" / "v1").read_text() == "one\n"
    assert (mnt.path / "archive" / "b.txt" / "latest").read_text() == "two\n"
    assert (mnt.path / "moved" / "big" / "v1").read_bytes() == big
    # a moved file keeps taking new versions
    sh("echo three >> archive/b.txt/latest", cwd=mnt.path)
    assert (mnt.path / "archive" / "b.txt" / "v3").read_text() == "two\nthree\n"
    # moves that cannot be: a folder into itself, a folder into a versioned file
    assert os_error(os.rename, mnt.path / "archive", mnt.path / "archive" / "old" / "x") == errno.EINVAL
    assert os_error(os.rename, mnt.path / "moved", mnt.path / "archive" / "b.txt" / "x") != 0
    mnt.wait()
    new_jobs = [job(mnt, i) for i in job_ids(mnt) - jobs_before]
    uploads = [j for j in new_jobs if j["kind"] == "upload"]
    assert [j["path"] for j in uploads] == ["/archive/b.txt/v3"]  # only the new version
    after = blobs(mnt)
    assert {k: v for k, v in after.items() if k in objects_before} == objects_before
    assert set(after) - set(objects_before) == {k for k in after if k.endswith(sha(b"two\nthree\n"))}
    fresh = make_mount(mnt.l3)
    assert listing(fresh.path) == [".jobs", "archive", "moved"]
    assert listing(fresh.path / "archive" / "old") == []
    assert listing(fresh.path / "archive" / "b.txt") == ["latest", "v1", "v2", "v3"]
    assert (fresh.path / "moved" / "big" / "latest").read_bytes() == big


# -- 9. Extended attributes ------------------------------------------------------------------
def test_xattrs_on_versions_and_latest(mnt):
    """Rule 9: sha256, job, state and tier on each version and on latest; durable after wait."""
    sh("mkdir d && printf 'first' > d/f && printf 'second' > d/f/latest", cwd=mnt.path)
    f = mnt.path / "d" / "f"
    names = {"user.relayfs.sha256", "user.relayfs.job", "user.relayfs.state", "user.relayfs.tier"}
    for v, data in (("v1", b"first"), ("v2", b"second")):
        a = xattrs(f / v)
        assert set(a) == names
        assert a["user.relayfs.sha256"] == sha(data)
        assert a["user.relayfs.state"] in ("pending", "uploading", "durable")
        assert "L2" in a["user.relayfs.tier"].split(",")
        j = job(mnt, a["user.relayfs.job"])
        assert j["kind"] == "upload" and j["path"] == f"/d/f/{v}" and j["id"] == a["user.relayfs.job"]
    assert xattrs(f / "latest")["user.relayfs.sha256"] == sha(b"second")
    assert xattrs(f / "latest")["user.relayfs.job"] == xattrs(f / "v2")["user.relayfs.job"]
    mnt.wait()
    for v in ("v1", "v2", "latest"):
        a = xattrs(f / v)
        assert a["user.relayfs.state"] == "durable"
        assert {"L2", "L3"} <= set(a["user.relayfs.tier"].split(","))
    assert os.getxattr(f / "v1", "user.relayfs.state") == b"durable"
    assert set(os.listxattr(f / "v1")) == names
    # folders and versioned files themselves carry no version attributes
    assert xattrs(mnt.path / "d") == {} and xattrs(f) == {}
    # and the sha256 is what the bytes hash to
    got = sh("sha256sum d/f/v2", cwd=mnt.path).stdout.split()[0]
    assert got == xattrs(f / "v2")["user.relayfs.sha256"]


# -- 10. Reserved names, links ---------------------------------------------------------------
def test_reserved_names(mnt):
    """Rule 10: .jobs at the root, latest and vK inside a versioned file are reserved."""
    root = mnt.path
    assert os_error(os.mkdir, root / ".jobs") == errno.EEXIST
    assert os_error(os.open, root / ".jobs", os.O_WRONLY | os.O_CREAT | os.O_EXCL) == errno.EEXIST
    assert sh("mkdir .jobs", cwd=root, check=False).returncode != 0
    sh("mkdir d && echo x > d/f", cwd=root)
    assert os_error(os.rename, root / "d", root / ".jobs") in (errno.EEXIST, errno.ENOTEMPTY)
    sh("mkdir d/.jobs && echo ok > d/.jobs/x", cwd=root)  # only the root's .jobs is special
    assert (root / "d" / ".jobs" / "x" / "v1").read_text() == "ok\n"
    f = root / "d" / "f"
    assert os_error(os.open, f / "latest", os.O_WRONLY | os.O_CREAT | os.O_EXCL) == errno.EEXIST
    assert os_error(os.mkdir, f / "latest") == errno.EEXIST
    assert os_error(os.mkdir, f / "v1") == errno.EEXIST
    assert os_error(os.open, f / "v1", os.O_WRONLY | os.O_CREAT | os.O_EXCL) == errno.EEXIST
    for name in ("v2", "v9", "v0", "v007", "v123456789"):
        assert os_error(os.open, f / name, os.O_WRONLY | os.O_CREAT) == errno.EINVAL, name
    done = sh("echo x > d/f/v5", cwd=root, check=False)
    assert done.returncode != 0 and "Invalid argument" in done.stderr
    assert listing(f) == ["latest", "v1"]
    assert (f / "v1").read_text() == "x\n"


def test_links_are_refused(mnt):
    """Rule 10: symlinks and hard links are refused with EPERM."""
    sh("echo x > f && echo y > f/scratch", cwd=mnt.path)
    f = mnt.path / "f"
    assert os_error(os.symlink, "f/v1", mnt.path / "link") == errno.EPERM
    assert os_error(os.symlink, "v1", f / "link") == errno.EPERM
    assert os_error(os.link, f / "v1", mnt.path / "hard") == errno.EPERM
    assert os_error(os.link, f / "scratch", f / "hard") == errno.EPERM
    assert os_error(os.link, f / "latest", mnt.path / "hard") == errno.EPERM
    done = sh("ln -s f/v1 link", cwd=mnt.path, check=False)
    assert done.returncode != 0 and "Operation not permitted" in done.stderr
    done = sh("ln f/v1 hard", cwd=mnt.path, check=False)
    assert done.returncode != 0 and "Operation not permitted" in done.stderr
    assert os_error(os.mkfifo, mnt.path / "fifo") == errno.EPERM
    assert listing(mnt.path) == [".jobs", "f"]
    assert listing(f) == ["latest", "scratch", "v1"]


def test_names_that_cannot_be_stored(mnt):
    """Bad input: names over 255 bytes get ENAMETOOLONG, undecodable names EINVAL."""
    longest = "n" * 255
    sh(f"echo ok > {longest}", cwd=mnt.path)
    assert (mnt.path / longest / "v1").read_text() == "ok\n"
    assert os_error(os.open, mnt.path / ("n" * 256), os.O_WRONLY | os.O_CREAT) == errno.ENAMETOOLONG
    assert os_error(os.mkdir, mnt.path / ("é" * 128)) == errno.ENAMETOOLONG  # 256 bytes
    assert os_error(os.rename, mnt.path / longest, mnt.path / ("m" * 256)) == errno.ENAMETOOLONG
    assert os_error(os.mkdir, os.fsencode(mnt.path) + b"/bad\xff") == errno.EINVAL
    assert listing(mnt.path) == [".jobs", longest]
