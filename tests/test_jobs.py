"""Background jobs as a user sees them: ``.jobs/``, ``relayfs jobs``, ``relayfs wait``, and
uploads that survive an L3 outage and an unmount."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mount import Mount, poll, relayfs, sh


FIELDS = (
    "id", "kind", "path", "version", "state", "bytes_done", "bytes_total", "percent",
    "attempts", "last_error", "note", "created", "updated",
)
STATES = {"queued", "running", "retrying", "done", "failed"}


def read_job(m: Mount, job_id: str) -> dict[str, str]:
    """Parse ``.jobs/ID`` (one ``key: value`` line per field)."""
    text = (m.path / ".jobs" / job_id).read_text()
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        assert sep, f"unparsable line in .jobs/{job_id}: {line!r}"
        out[key] = value
    return out


def job_of(version: Path) -> str:
    job = os.getxattr(version, "user.relayfs.job").decode()
    assert job.isdigit(), job
    return job


def wait_state(m: Mount, job_id: str, want: Callable[[dict[str, str]], bool], what: str, timeout: float = 60) -> dict[str, str]:
    def check() -> dict[str, str] | None:
        job = read_job(m, job_id)
        return job if want(job) else None

    return poll(check, f"job {job_id} {what}", timeout)


def blob_in_bucket(s3_server, m: Mount, version: Path) -> bytes:  # type: ignore[no-untyped-def]
    sha = os.getxattr(version, "user.relayfs.sha256").decode()
    bucket = m.l3.removeprefix("s3://")
    return s3_server.client().get_object(Bucket=bucket, Key=f"blobs/{sha[:2]}/{sha}")["Body"].read()


def test_jobs_dir_lists_one_entry_per_job(mnt: Mount) -> None:
    sh("mkdir d && echo one > a.txt && echo two > b.txt && echo three > d/c.txt", cwd=mnt.path)
    relayfs("wait", str(mnt.path))  # each landed upload adds a job (its feed event): let them all be made
    listed = sorted(os.listdir(mnt.path / ".jobs"), key=int)
    assert len(listed) == len(set(listed))
    jobs = {name: read_job(mnt, name) for name in listed}
    assert all(j["id"] == name for name, j in jobs.items())
    uploads = sorted(j["path"] for j in jobs.values() if j["kind"] == "upload")
    assert uploads == ["/a.txt/v1", "/b.txt/v1", "/d/c.txt/v1"]  # one per commit, no more
    for name in ("a.txt", "b.txt", "d/c.txt"):
        assert job_of(mnt.path / name / "v1") in jobs
    # the CLI sees the same jobs
    out = relayfs("jobs", str(mnt.path)).stdout.splitlines()
    assert sorted(line.split()[0] for line in out[1:]) == sorted(listed)


def test_job_file_fields_and_done_means_in_bucket(mnt: Mount, s3_server) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(300_000)
    (mnt.path / "blob.bin").write_bytes(data)
    version = mnt.path / "blob.bin" / "v1"
    job_id = job_of(version)
    job = read_job(mnt, job_id)
    assert tuple(job) == FIELDS
    assert job["id"] == job_id
    assert job["kind"] == "upload"
    assert job["path"] == "/blob.bin/v1"
    assert job["version"] == "1"
    assert job["state"] in STATES
    assert int(job["bytes_total"]) == len(data)
    assert 0 <= int(job["bytes_done"]) <= len(data)
    assert 0.0 <= float(job["percent"]) <= 100.0
    assert int(job["attempts"]) >= 0
    assert job["created"] and job["updated"]

    done = wait_state(mnt, job_id, lambda j: j["state"] == "done", "to be done")
    assert int(done["bytes_done"]) == len(data)
    assert float(done["percent"]) == 100.0
    assert int(done["attempts"]) >= 1
    assert done["last_error"] == ""
    assert done["updated"] >= done["created"]
    assert os.getxattr(version, "user.relayfs.state") == b"durable"
    assert blob_in_bucket(s3_server, mnt, version) == data
    assert job_id in os.listdir(mnt.path / ".jobs")  # finished jobs stay listed for a while


def test_jobs_is_read_only(mnt: Mount) -> None:
    sh("echo x > a.txt", cwd=mnt.path)
    job_id = job_of(mnt.path / "a.txt" / "v1")
    with pytest.raises(OSError):
        (mnt.path / ".jobs" / job_id).write_text("state: done\n")
    with pytest.raises(OSError):
        (mnt.path / ".jobs" / "new").write_text("x")
    assert read_job(mnt, job_id)["id"] == job_id


def test_outage_retries_then_completes_by_itself(make_mount, bucket: str, s3_server, fast_retry) -> None:  # type: ignore[no-untyped-def]
    m = make_mount(f"s3://{bucket}")
    sh("echo cached > old.txt", cwd=m.path)
    m.wait()
    s3_server.stop()
    try:
        # cached versions still read; new files and new versions still commit while L3 is down
        assert sh("cat old.txt/v1", cwd=m.path).stdout == "cached\n"
        data = os.urandom(50_000)
        (m.path / "new.bin").write_bytes(data)  # close returns
        assert (m.path / "new.bin" / "v1").read_bytes() == data
        assert (m.path / "new.bin" / "latest").read_bytes() == data
        sh("echo more >> old.txt/latest", cwd=m.path)
        assert sh("cat old.txt/v2", cwd=m.path).stdout == "cached\nmore\n"
        job_id = job_of(m.path / "old.txt" / "v2")
        # reading the same .jobs/ID again shows fresh state: attempts climb, the error shows
        first = read_job(m, job_id)
        job = wait_state(
            m, job_id,
            lambda j: j["state"] == "retrying" and int(j["attempts"]) > max(1, int(first["attempts"])) and j["last_error"] != "",
            "to retry more than once",
        )
        assert int(job["bytes_total"]) == len("cached\nmore\n")
        assert float(job["percent"]) < 100.0
        assert os.getxattr(m.path / "old.txt" / "v2", "user.relayfs.state") in (b"pending", b"uploading")
        assert os.getxattr(m.path / "old.txt" / "v1", "user.relayfs.state") == b"durable"
        # wait gives up with exit 2 while L3 is down
        done = relayfs("wait", str(m.path / "old.txt"), "--timeout", "1", check=False)
        assert done.returncode == 2, done.stdout + done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    finally:
        s3_server.start()
    wait_state(m, job_id, lambda j: j["state"] == "done", "to finish after L3 came back")
    new_job = job_of(m.path / "new.bin" / "v1")
    wait_state(m, new_job, lambda j: j["state"] == "done", "to finish after L3 came back")
    assert blob_in_bucket(s3_server, m, m.path / "new.bin" / "v1") == data
    assert blob_in_bucket(s3_server, m, m.path / "old.txt" / "v2") == b"cached\nmore\n"
    assert relayfs("wait", str(m.path), "--timeout", "60").returncode == 0


def test_jobs_and_wait_cli_by_path(mnt: Mount, s3_server) -> None:  # type: ignore[no-untyped-def]
    sh("mkdir docs && echo a > docs/a.txt && echo b > b.txt", cwd=mnt.path)
    out = relayfs("jobs", str(mnt.path / "docs" / "a.txt")).stdout
    assert "/docs/a.txt/v1" in out and "upload" in out
    assert "b.txt" not in out
    everything = relayfs("jobs", str(mnt.path)).stdout
    assert "/docs/a.txt/v1" in everything and "/b.txt/v1" in everything
    # relative paths work from inside the mount, like any file tool
    here = relayfs("jobs", "b.txt", cwd=str(mnt.path)).stdout
    assert "/b.txt/v1" in here and "docs" not in here

    done = relayfs("wait", str(mnt.path / "docs" / "a.txt"), "--timeout", "60", check=False)
    assert done.returncode == 0, done.stderr
    job = read_job(mnt, job_of(mnt.path / "docs" / "a.txt" / "v1"))
    assert job["state"] == "done"
    assert blob_in_bucket(s3_server, mnt, mnt.path / "docs" / "a.txt" / "v1") == b"a\n"
    assert relayfs("wait", str(mnt.path)).returncode == 0
    assert "done" in relayfs("jobs", str(mnt.path / "b.txt")).stdout


def test_umount_with_pending_uploads_then_resume(make_mount, bucket: str, s3_server, fast_retry) -> None:  # type: ignore[no-untyped-def]
    m = make_mount(f"s3://{bucket}")
    sh("echo first > a.bin", cwd=m.path)
    m.wait()
    files = {"a.bin/v2": os.urandom(100_000), "sub/b.bin/v1": os.urandom(2 * 1024 * 1024 + 17)}
    s3_server.stop()
    try:
        sh("mkdir sub", cwd=m.path)
        (m.path / "a.bin" / "latest").write_bytes(files["a.bin/v2"])
        (m.path / "sub" / "b.bin").write_bytes(files["sub/b.bin/v1"])
        jobs = {name: job_of(m.path / name) for name in files}
        wait_state(m, jobs["a.bin/v2"], lambda j: int(j["attempts"]) >= 1, "to be tried")
        assert all(read_job(m, j)["state"] != "done" for j in jobs.values())
        m.stop()  # umount while uploads are pending
        assert not os.path.ismount(m.path)
    finally:
        s3_server.start()
    m.start()  # same cache dir, L3 back
    for name, data in files.items():
        assert (m.path / name).read_bytes() == data
    for name, job_id in jobs.items():
        wait_state(m, job_id, lambda j: j["state"] == "done", f"{name} to upload after the remount")
    m.wait()
    for name, data in files.items():
        assert blob_in_bucket(s3_server, m, m.path / name) == data
        assert os.getxattr(m.path / name, "user.relayfs.state") == b"durable"
