"""The operator commands as a user runs them against a real mount and the real S3 server:
``jobs --follow``, ``status``, ``versions``, ``rollback``, ``prune``, ``refresh`` and
``config show``. A FaultProxy (tests/faultproxy.py) between the mount and S3 holds uploads
back (so jobs are pending while a command watches them), adds latency, and counts requests.
"""

from __future__ import annotations

import json
import os
import pty
import re
import stat
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pytest

from faultproxy import FaultProxy
from mount import RELAYFS, Mount, poll, relayfs, sh
from test_cli import clean_env, one_line_failure
from test_jobs import read_job

MiB = 1024 * 1024


def bucket_keys(s3_server, bucket: str, prefix: str = "") -> set[str]:  # type: ignore[no-untyped-def]
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def status_json(path: Path) -> dict[str, Any]:
    return json.loads(relayfs("status", "--json", str(path)).stdout)


def job_states(m: Mount) -> dict[str, str]:
    """``.jobs/`` as {path: state}."""
    return {f["path"]: f["state"] for f in (read_job(m, j) for j in os.listdir(m.path / ".jobs"))}


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (versions included), as ``ls -R`` would show them."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".jobs" not in p.parts)


def sha_of(path: Path) -> str:
    return os.getxattr(path, "user.relayfs.sha256").decode()


class Output:
    """A running command's output, collected by a thread, for tests that watch it live."""

    def __init__(self, read: Callable[[], bytes]) -> None:
        self._chunks: list[bytes] = []
        self._read = read
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while True:
            try:
                chunk = self._read()
            except OSError:  # a pty's master reads EIO once the child has gone
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def join(self) -> str:
        self._thread.join(timeout=30)
        return self.text


def versions_of(path: Path) -> list[str]:
    return sorted((n for n in os.listdir(path) if n != "latest"), key=lambda n: int(n[1:]))


# ----------------------------------------------------------------------------- jobs --follow


def test_jobs_follow_shows_progress_and_exits_when_all_are_done(  # type: ignore[no-untyped-def]
    make_mount, bucket: str, proxy: FaultProxy, fast_retry
) -> None:
    m = make_mount(f"s3://{bucket}", endpoint=proxy.endpoint)
    proxy.latency(0.05)
    held = proxy.fail(503, method="PUT", contains="/blobs/")  # uploads stay pending until released
    files = {f"f{i}.bin": os.urandom(2 * MiB + i) for i in range(3)}
    sh("mkdir -p docs", cwd=m.path)
    for name, data in files.items():
        (m.path / "docs" / name).write_bytes(data)
    (m.path / "elsewhere.txt").write_bytes(b"not under docs")
    poll(lambda: job_states(m).get("/docs/f0.bin/v1") == "retrying", "an upload to wait for L3")

    listed = relayfs("jobs", str(m.path / "docs")).stdout  # the plain listing, PATH-filtered
    assert all(f"/docs/{name}/v1" in listed for name in files) and "elsewhere" not in listed

    proc = subprocess.Popen(
        [*RELAYFS, "jobs", "--follow", "--interval", "0.1", str(m.path / "docs")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    out = Output(proc.stdout.read1)  # type: ignore[attr-defined]
    try:
        poll(lambda: all(f"/docs/{name}/v1" in out.text for name in files), "progress lines naming every job", 60)
        assert proc.poll() is None  # still pending: it keeps following
    finally:
        held.remaining = 0  # let the uploads through
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    text = out.join()
    assert not proc.stderr.read()  # type: ignore[union-attr]
    assert "\x1b[" not in text  # not a terminal: plain lines, no cursor movement
    lines = text.splitlines()
    bar = r"^\s*\d+ (queued|running|retrying)\s+\[[#-]{20}\]\s+\d+\.\d% +[\d.]+( \w*B)?/2\.0 MiB .*  /docs/f\d\.bin/v1"
    assert [l for l in lines if re.search(bar, l)]  # a bar per pending upload: progress, bytes of total
    assert any(l.strip().startswith("total") and "[" in l for l in lines)  # the totals line
    for name in files:
        assert f"done   /docs/{name}/v1 (upload, 2.0 MiB)" in lines
    assert "elsewhere" not in text
    assert lines[-1].startswith("nothing pending: ") and "failed" not in lines[-1]
    states = job_states(m)
    assert all(states[f"/docs/{name}/v1"] == "done" for name in files)

    # nothing pending: it says so and exits at once
    m.wait()
    done = relayfs("jobs", "--follow", str(m.path))
    assert done.stdout.splitlines() == ["nothing pending"]


def test_jobs_follow_redraws_in_place_on_a_terminal_and_exits_1_when_a_job_fails(  # type: ignore[no-untyped-def]
    make_mount, bucket: str, proxy: FaultProxy, fast_retry
) -> None:
    m = make_mount(f"s3://{bucket}", endpoint=proxy.endpoint)
    held = proxy.fail(503, method="HEAD", contains="/blobs/")  # each attempt fails before it reads the bytes
    data = os.urandom(MiB)
    (m.path / "doomed.bin").write_bytes(data)
    poll(lambda: job_states(m).get("/doomed.bin/v1") == "retrying", "the upload to wait for L3")

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*RELAYFS, "jobs", "--follow", "--interval", "0.1", str(m.path)],
        stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    os.close(slave)
    out = Output(lambda: os.read(master, 65536))
    try:
        poll(lambda: re.search(r"\x1b\[\d+A", out.text), "the live area to be redrawn in place", 60)
        poll(lambda: "/doomed.bin/v1" in out.text and "retrying" in out.text, "the retrying upload to be shown", 60)
        # its only copy disappears: the next attempt fails for good
        m.expect_error(r"job \d+ \(upload /doomed\.bin/v1\) failed: bytes of /doomed\.bin/v1 are missing")
        sha = sha_of(m.path / "doomed.bin" / "v1")
        (m.cache / "blobs" / sha[:2] / sha).unlink()
        held.remaining = 0  # let the uploads through
        assert proc.wait(timeout=120) == 1
        text = out.join()
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert re.fullmatch(r"relayfs: job \d+ \(/doomed\.bin/v1\) failed: bytes of /doomed\.bin/v1 are missing from the cache\n", stderr)
    assert "failed /doomed.bin/v1: bytes of /doomed.bin/v1 are missing" in text
    assert text.rstrip().splitlines()[-1].endswith(", 1 failed")
    # like `relayfs wait`, later runs keep saying so until the job is retried at the next mount
    again = relayfs("jobs", "--follow", str(m.path), check=False)
    assert again.returncode == 1 and again.stdout.splitlines() == ["nothing pending; 1 failed"]
    one_line_failure(again, "failed")


# ----------------------------------------------------------------------------- status


def test_status_shows_budgets_pending_work_and_l3_latency(  # type: ignore[no-untyped-def]
    make_mount, bucket: str, proxy: FaultProxy, s3_server, fast_retry
) -> None:
    m = make_mount(f"s3://{bucket}", endpoint=proxy.endpoint, extra=("--l1-bytes", "8MiB", "--l2-bytes", "64MiB"))
    (m.path / "kept.bin").write_bytes(os.urandom(MiB))
    m.wait()
    (m.path / "kept.bin" / "v1").read_bytes()  # through L1
    st = status_json(m.path)
    assert st["l3_reachable"] is True and st["l3_latency_ms"] >= 0 and st["l3_error"] == ""
    assert (st["l1_budget"], st["l2_budget"]) == (8 * MiB, 64 * MiB)
    assert 0 < st["l1_used"] <= st["l1_budget"] and MiB <= st["l2_used"] <= st["l2_budget"]
    text = relayfs("status", str(m.path)).stdout.splitlines()
    l2_pct = 100.0 * st["l2_used"] / st["l2_budget"]
    assert re.fullmatch(r"L3 +s3://\S+ at \S+: reachable, latency \d+ ms", text[1]), text[1]
    assert re.fullmatch(r"L1 \(RAM\) +[\d.]+ \w*B of 8\.0 MiB \([\d.]+%\)", text[2]), text[2]
    assert re.fullmatch(rf"L2 \(disk\) +[\d.]+ \w*B of 64\.0 MiB \({l2_pct:.1f}%\) in {re.escape(str(m.cache))}", text[3])

    # the latency is measured now: the proxy's added delay is a lower bound of it
    proxy.latency(0.4)
    assert status_json(m.path)["l3_latency_ms"] >= 400
    proxy.latency(0.0)

    # pending work: uploads held back show as retrying jobs and pending bytes
    held = proxy.fail(503, method="PUT", contains="/blobs/")
    (m.path / "pending.bin").write_bytes(os.urandom(3 * MiB))
    poll(lambda: job_states(m).get("/pending.bin/v1") == "retrying", "the upload to wait for L3")
    st = status_json(m.path)
    assert st["pending_bytes"] >= 3 * MiB and st["jobs_queued"] + st["jobs_running"] + st["jobs_retrying"] >= 1
    assert st["jobs_failed"] == 0
    assert re.search(r"^jobs +\d+ queued, \d+ running, \d+ retrying, 0 failed; 3\.0 MiB pending$",
                     relayfs("status", str(m.path)).stdout, re.MULTILINE)
    held.remaining = 0  # let the uploads through

    # L3 gone: unreachable, with a one-line reason; the mount itself still answers
    s3_server.stop()
    try:
        st = status_json(m.path)
        assert st["l3_reachable"] is False and st["l3_latency_ms"] is None
        assert st["l3_error"] and "\n" not in st["l3_error"]
        line = [l for l in relayfs("status", str(m.path)).stdout.splitlines() if l.startswith("L3 ")]
        assert len(line) == 1 and re.search(r": unreachable \(.+\)$", line[0]), line
        assert (m.path / "kept.bin" / "v1").stat().st_size == MiB
    finally:
        s3_server.start()
    m.wait()
    assert status_json(m.path)["l3_reachable"] is True


# ----------------------------------------------------------------------------- versions, rollback


def test_versions_table_has_every_column(mnt: Mount) -> None:
    sh("echo one > f.txt && echo second > f.txt/latest", cwd=mnt.path)
    out = relayfs("versions", str(mnt.path / "f.txt")).stdout.splitlines()
    assert out[0].split() == ["VERSION", "SIZE", "COMMITTED", "SHA256", "STATE", "TIER"]
    rows = [line.split() for line in out[1:]]
    assert [r[:2] for r in rows] == [["v1", "4"], ["v2", "7"]]
    for r in rows:
        version = mnt.path / "f.txt" / r[0]
        committed = datetime.fromtimestamp(version.stat().st_mtime).strftime("%Y-%m-%d %H:%M:%S")
        assert f"{r[2]} {r[3]}" == committed  # commit time, as ls -l shows it
        assert sha_of(version)[:12] == r[4] and len(r[4]) == 12
        assert r[5] in ("pending", "uploading", "durable")
        assert "L2" in r[6].split(",")  # just written: its bytes are in the disk cache
    mnt.wait()
    rows = [line.split() for line in relayfs("versions", str(mnt.path / "f.txt")).stdout.splitlines()[1:]]
    assert all(r[5] == "durable" and "L3" in r[6].split(",") for r in rows)
    as_json = json.loads(relayfs("versions", "--json", str(mnt.path / "f.txt" / "latest")).stdout)
    assert as_json["path"] == "/f.txt"
    assert [(v["version"], v["size"], v["sha256"]) for v in as_json["versions"]] == [
        (1, 4, sha_of(mnt.path / "f.txt" / "v1")), (2, 7, sha_of(mnt.path / "f.txt" / "v2"))
    ]
    assert all(v["state"] == os.getxattr(mnt.path / "f.txt" / f"v{v['version']}", "user.relayfs.state").decode()
               for v in as_json["versions"])


def test_rollback_puts_only_a_record(make_mount, bucket: str, proxy: FaultProxy, s3_server) -> None:  # type: ignore[no-untyped-def]
    m = make_mount(f"s3://{bucket}", endpoint=proxy.endpoint)
    data = os.urandom(3 * MiB + 5)
    (m.path / "f.bin").write_bytes(data)
    (m.path / "f.bin" / "latest").write_bytes(b"second")
    m.wait()
    puts_before, seen = proxy.counts["PUT"], len(proxy.log)
    blobs_before = bucket_keys(s3_server, bucket, "blobs/")

    relayfs("rollback", str(m.path / "f.bin"), "v1")
    m.wait()
    puts = [target for method, target, _ in proxy.log[seen:] if method == "PUT"]
    # the record (no bytes), then its event in the change feed telling other machines
    assert proxy.counts["PUT"] - puts_before == 2 and len(puts) == 2, puts
    assert "/records/" in puts[0] and puts[0].split("?")[0].endswith("/v0000000003.json")
    assert "/ns/" in puts[1]
    assert not [t for method, t, _ in proxy.log[seen:] if "/blobs/" in t and method in ("PUT", "POST")]
    assert bucket_keys(s3_server, bucket, "blobs/") == blobs_before
    assert (m.path / "f.bin" / "v3").read_bytes() == data
    assert sha_of(m.path / "f.bin" / "v3") == sha_of(m.path / "f.bin" / "v1")
    fresh = make_mount(f"s3://{bucket}")  # what the bucket says, from a cold cache
    assert (fresh.path / "f.bin" / "latest").read_bytes() == data


# ----------------------------------------------------------------------------- prune


def commit_versions(path: Path, count: int, tag: str = "") -> None:
    """Commit ``count`` versions with distinct bytes (so each has its own blob)."""
    for i in range(1, count + 1):
        target = path if i == 1 else path / "latest"
        target.write_bytes(f"{path.name} {tag} version {i}\n".encode())


def test_prune_keep_dry_run_folders_and_tombstones(make_mount, bucket: str, s3_server) -> None:  # type: ignore[no-untyped-def]
    m = make_mount(f"s3://{bucket}")
    (m.path / "d" / "sub").mkdir(parents=True)
    commit_versions(m.path / "d" / "a.txt", 4)
    commit_versions(m.path / "d" / "sub" / "b.txt", 3)
    commit_versions(m.path / "top.txt", 3)
    m.wait()
    before, keys, jobs = tree(m.path), bucket_keys(s3_server, bucket), sorted(os.listdir(m.path / ".jobs"))
    removed_shas = {sha_of(m.path / "d" / "a.txt" / v) for v in ("v1", "v2")} | {sha_of(m.path / "d" / "sub" / "b.txt" / "v1")}

    dry = relayfs("prune", "--dry-run", "--keep", "2", str(m.path / "d")).stdout.splitlines()
    assert [re.sub(r" \(.*\)$", "", l) for l in dry[:-1]] == [
        "would remove /d/a.txt/v1", "would remove /d/a.txt/v2", "would remove /d/sub/b.txt/v1"
    ]
    assert re.fullmatch(r"would remove /d/a\.txt/v1 \(\d+ B, committed \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)", dry[0])
    assert dry[-1].startswith("would remove 3 versions of 2 files, ") and dry[-1].endswith("nothing changed (dry run)")
    assert tree(m.path) == before and sorted(os.listdir(m.path / ".jobs")) == jobs  # no change, no job
    assert bucket_keys(s3_server, bucket) == keys

    latest = (m.path / "d" / "a.txt" / "latest").read_bytes()
    out = relayfs("prune", "--keep", "2", str(m.path / "d")).stdout.splitlines()
    assert [l.split()[1] for l in out[:-1]] == ["/d/a.txt/v1", "/d/a.txt/v2", "/d/sub/b.txt/v1"]
    assert out[-1].startswith("removed 3 versions of 2 files, ")
    assert versions_of(m.path / "d" / "a.txt") == ["v3", "v4"]
    assert versions_of(m.path / "d" / "sub" / "b.txt") == ["v2", "v3"]
    assert versions_of(m.path / "top.txt") == ["v1", "v2", "v3"]  # outside PATH: untouched
    assert (m.path / "d" / "a.txt" / "latest").read_bytes() == latest

    # a file's path prunes that file; the newest version always stays
    assert relayfs("prune", "--keep", "1", str(m.path / "top.txt")).stdout.splitlines()[-1].startswith("removed 2 versions of 1 file,")
    assert relayfs("prune", "--older-than", "0s", str(m.path / "d" / "a.txt")).stdout.splitlines()[0].startswith("removed /d/a.txt/v3 ")
    assert versions_of(m.path / "top.txt") == ["v3"] and versions_of(m.path / "d" / "a.txt") == ["v4"]
    assert relayfs("prune", "--older-than", "0s", str(m.path)).stdout.splitlines()[-1].startswith("removed 1 version of 1 file,")
    assert relayfs("prune", "--keep", "1", str(m.path)).stdout == "nothing to remove\n"

    m.wait()  # the deletes reach L3: tombstones, and blobs no version uses any more are gone
    records = bucket_keys(s3_server, bucket, "records/")
    assert len([k for k in records if k.endswith(".deleted")]) == 7
    blobs = bucket_keys(s3_server, bucket, "blobs/")
    assert not {k.rsplit("/", 1)[1] for k in blobs} & removed_shas
    fresh = make_mount(f"s3://{bucket}")  # the bucket alone says the same
    assert tree(fresh.path) == tree(m.path)
    assert (fresh.path / "d" / "a.txt" / "latest").read_bytes() == latest


def test_prune_older_than_needs_every_rule_to_agree(mnt: Mount) -> None:
    commit_versions(mnt.path / "old.txt", 4)
    newest_old = mnt.path / "old.txt" / "v4"
    poll(lambda: time.time_ns() - newest_old.stat().st_mtime_ns > 1.5e9, "the old versions to be 1.5 s old", 30)
    commit_versions(mnt.path / "young.txt", 3)

    # both rules: only what is older than 1 s AND not among the 2 newest
    out = relayfs("prune", "--keep", "2", "--older-than", "1s", str(mnt.path / "old.txt")).stdout
    assert [l.split()[1] for l in out.splitlines()[:-1]] == ["/old.txt/v1", "/old.txt/v2"]
    assert relayfs("prune", "--keep", "1", "--older-than", "1h", str(mnt.path)).stdout == "nothing to remove\n"
    assert versions_of(mnt.path / "young.txt") == ["v1", "v2", "v3"]

    # one rule: what was committed before (now - 1 s) goes, the newest of each file stays
    mtimes = {f"/{f}/{v}": (mnt.path / f / v).stat().st_mtime_ns
              for f in ("old.txt", "young.txt") for v in versions_of(mnt.path / f)}
    t_before = time.time_ns()
    out = relayfs("prune", "--older-than", "1s", str(mnt.path)).stdout
    t_after = time.time_ns()
    removed = {l.split()[1] for l in out.splitlines()[:-1]}
    assert "/old.txt/v3" in removed and "/old.txt/v4" not in removed and "/young.txt/v3" not in removed
    for path, mtime in mtimes.items():
        if path.endswith(("old.txt/v4", "young.txt/v3")):
            continue
        if mtime < t_before - 1e9:  # older than 1 s whenever the daemon looked
            assert path in removed, path
        if mtime > t_after - 1e9:  # younger than 1 s whenever it looked
            assert path not in removed, path
    assert versions_of(mnt.path / "old.txt") == ["v4"]


def test_prune_refuses_bad_arguments_in_one_line(mnt: Mount) -> None:
    commit_versions(mnt.path / "f.txt", 3)
    mnt.wait()  # a landed upload adds a job (its feed event): let them all be made first
    before = tree(mnt.path)
    jobs = sorted(os.listdir(mnt.path / ".jobs"))
    for args, pattern in [
        ((), r"--keep N, --older-than DURATION or both"),
        (("--keep", "0"), r"--keep.*0 is not in the range"),
        (("--keep", "-2"), r"--keep"),
        (("--keep", "many"), r"--keep.*not a valid integer"),
        (("--older-than", "3x"), r"--older-than.*'3x' is not a duration"),
        (("--older-than", "10"), r"not a duration"),
        (("--older-than", ""), r"not a duration"),
        (("--keep", "2", "--bogus"), r"No such option.*--bogus"),
    ]:
        done = relayfs("prune", *args, str(mnt.path / "f.txt"), check=False)
        assert done.returncode == 2, (args, done.stderr)
        one_line_failure(done, r"^relayfs: ", pattern, r"\(see: .*prune --help\)$")
        assert not done.stdout
    done = relayfs("prune", "--keep", "1", check=False)  # no PATH: a bulk delete names its target
    assert done.returncode == 2 and "Missing argument 'PATH'" in done.stderr
    for path, pattern in [(mnt.path / "nope", r"/nope: no such file or folder"), (Path("/tmp"), r"not inside a RelayFS mount")]:
        done = relayfs("prune", "--keep", "1", str(path), check=False)
        assert done.returncode == 1
        one_line_failure(done, pattern)
    assert tree(mnt.path) == before and sorted(os.listdir(mnt.path / ".jobs")) == jobs


# ----------------------------------------------------------------------------- refresh


def test_refresh_picks_up_what_another_mount_wrote(make_mount, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RELAYFS_POLL_SECONDS", "0")  # no background polling: only refresh picks changes up
    a = make_mount(f"s3://{bucket}")
    b = make_mount(f"s3://{bucket}")
    sh("mkdir d && echo first > d/new.txt", cwd=a.path)
    a.wait()
    assert "d" not in os.listdir(b.path)

    out = relayfs("refresh", str(b.path)).stdout
    assert out == "picked up 2 folder or file changes, 1 new version, 0 removed versions\n"
    assert sh("cat d/new.txt/latest", cwd=b.path).stdout == "first\n"

    sh("echo second > d/new.txt/latest", cwd=a.path)
    relayfs("prune", "--keep", "1", str(a.path / "d"))
    a.wait()
    out = relayfs("refresh", cwd=str(b.path / "d")).stdout  # PATH defaults to the current directory
    assert out == "picked up 0 folder or file changes, 1 new version, 1 removed version\n"
    assert versions_of(b.path / "d" / "new.txt") == ["v2"]
    assert (b.path / "d" / "new.txt" / "latest").read_text() == "second\n"
    assert relayfs("refresh", str(b.path)).stdout.startswith("picked up 0 folder or file changes, 0 new versions")
    one_line_failure(relayfs("refresh", "/tmp", check=False), "not inside a RelayFS mount")


# ----------------------------------------------------------------------------- config show


def test_config_show_merges_like_mount_and_masks_secrets(tmp_path: Path, bucket: str, s3_server) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    conf = home / ".config" / "relayfs" / "config.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text(
        f'l3 = "s3://{bucket}"\ns3_endpoint = "{s3_server.endpoint}"\nl1_bytes = "1MiB"\nl2_bytes = "1GiB"\n'
        's3_access_key_id = "FILEKEYID4711"\ns3_secret_access_key = "file-secret-Zq81x"\n'
    )
    conf.chmod(0o600)
    secrets = ("FILEKEYID4711", "file-secret-Zq81x", "ENVKEYID0815", "env-secret-Wx42y")

    def show(*args: str, **env: str) -> tuple[str, dict[str, Any]]:
        environ = clean_env(home, **env)
        text = relayfs("config", "show", *args, env=environ)
        js = relayfs("config", "show", "--json", *args, env=environ)
        for done in (text, js):
            assert not done.stderr and not any(s in done.stdout for s in secrets), done.stdout
        return text.stdout, json.loads(js.stdout)

    text, js = show()
    assert js["config_file"] == str(conf)
    assert js["settings"]["l1_bytes"] == MiB and js["sources"]["l1_bytes"] == "file"
    assert js["settings"]["s3_secret_access_key"] == "********" and js["sources"]["s3_secret_access_key"] == "file"
    assert js["settings"]["cache_dir"].startswith(str(home / ".cache" / "relayfs"))
    assert re.search(r"^l1_bytes +1048576 \(1\.0 MiB\) +file$", text, re.MULTILINE)
    assert re.search(r"^s3_access_key_id +\*{8} +file$", text, re.MULTILINE)

    env = {"RELAYFS_L1_BYTES": "2MiB", "RELAYFS_S3_ACCESS_KEY_ID": "ENVKEYID0815", "RELAYFS_S3_SECRET_ACCESS_KEY": "env-secret-Wx42y"}
    text, js = show(**env)
    assert (js["settings"]["l1_bytes"], js["sources"]["l1_bytes"]) == (2 * MiB, "env RELAYFS_L1_BYTES")
    assert js["sources"]["s3_secret_access_key"] == "env RELAYFS_S3_SECRET_ACCESS_KEY"
    assert (js["settings"]["l2_bytes"], js["sources"]["l2_bytes"]) == (1024 * MiB, "file")  # the file still counts
    flags = ("--l1-bytes", "3MiB", "--cache-dir", str(tmp_path / "c-flag"))
    text, js = show(*flags, **env)
    assert (js["settings"]["l1_bytes"], js["sources"]["l1_bytes"]) == (3 * MiB, "flag --l1-bytes")
    assert re.search(r"^l1_bytes +3145728 \(3\.0 MiB\) +flag --l1-bytes$", text, re.MULTILINE)

    # what a mount with the same flags and environment really uses
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    environ = clean_env(home, **env)
    relayfs("mount", str(mountpoint), *flags, env=environ)
    try:
        st = json.loads(relayfs("status", "--json", str(mountpoint), env=environ).stdout)
        assert (st["l1_budget"], st["l2_budget"], st["cache_dir"]) == (
            js["settings"]["l1_bytes"], js["settings"]["l2_bytes"], js["settings"]["cache_dir"]
        )
        assert bucket in st["l3"] and js["settings"]["l3"] == f"s3://{bucket}"
    finally:
        relayfs("umount", str(mountpoint), env=environ)

    # a bad setting, or credentials in a file others can read: one line, exit 2, as for mount
    conf.chmod(0o644)
    done = relayfs("config", "show", env=clean_env(home), check=False)
    assert done.returncode == 2
    one_line_failure(done, "chmod 600")
    assert stat.S_IMODE(conf.stat().st_mode) == 0o644
    conf.chmod(0o600)
    done = relayfs("config", "show", "--l1-bytes", "lots", env=clean_env(home), check=False)
    assert done.returncode == 2
    one_line_failure(done, "l1_bytes")
