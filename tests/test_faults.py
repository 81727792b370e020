"""L3 misbehaving, as a user lives through it (issue item 2).

A FaultProxy (tests/faultproxy.py) sits between the mount and the S3 server and adds
latency, answers 500 or 503 SlowDown, resets connections, stalls, or cuts answers short;
the S3 server can also be stopped outright. While L3 fails, cached versions still read,
new writes still commit at close(), and each upload job shows ``retrying`` with its last
error and attempt count in ``.jobs/``; once L3 behaves, every job completes by itself and
the bucket holds the right bytes (a fresh mount of the bucket alone sees them).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import pytest

from faultproxy import FaultProxy
from mount import Mount, poll, relayfs, sh
from test_jobs import job_of, read_job, wait_state

MiB = 1024 * 1024


@pytest.fixture
def fast_retry(fast_retry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest's short backoff, plus a 2 s S3 read timeout for mounts started after this."""
    monkeypatch.setenv("RELAYFS_S3_READ_TIMEOUT", "2")  # a stall fails a try in 2 s, not 60


def bucket_blob(s3_server, bucket: str, version: os.PathLike[str]) -> bytes:  # type: ignore[no-untyped-def]
    sha = os.getxattr(version, "user.relayfs.sha256").decode()
    return s3_server.client().get_object(Bucket=bucket, Key=f"blobs/{sha[:2]}/{sha}")["Body"].read()


def all_jobs_done(m: Mount) -> bool:
    return all(read_job(m, j)["state"] == "done" for j in os.listdir(m.path / ".jobs"))


# fault name -> (start it, end it, what the job's last_error says)
Fault = tuple[Callable[[FaultProxy, Any], object], Callable[[FaultProxy, Any], object], str]
FAULTS: dict[str, Fault] = {
    "500": (lambda p, s: p.fail(500), lambda p, s: p.clear(), r"InternalError"),
    "503-slowdown": (lambda p, s: p.fail(503), lambda p, s: p.clear(), r"SlowDown"),
    "reset": (lambda p, s: p.reset(), lambda p, s: p.clear(), r"cannot reach the endpoint"),
    "stall": (lambda p, s: p.stall(30), lambda p, s: p.clear(), r"read timed out"),
    "server-stopped": (lambda p, s: s.stop(), lambda p, s: s.start(), r"cannot reach the endpoint"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_l3_fault_mount_keeps_working_and_jobs_finish_by_themselves(  # type: ignore[no-untyped-def]
    fault: str, make_mount, bucket: str, proxy: FaultProxy, s3_server, fast_retry
) -> None:
    start, end, error = FAULTS[fault]
    m = make_mount(f"s3://{bucket}", endpoint=proxy.endpoint)
    old = os.urandom(300_000)
    (m.path / "old.bin").write_bytes(old)
    m.wait()
    new = os.urandom(3 * MiB + 11)
    start(proxy, s3_server)
    try:
        assert (m.path / "old.bin" / "v1").read_bytes() == old  # cached: no L3 needed
        (m.path / "new.bin").write_bytes(new)  # close() returns: durable on L2
        assert (m.path / "new.bin" / "v1").read_bytes() == new
        with open(m.path / "old.bin" / "latest", "ab") as f:
            f.write(b"more")
        assert (m.path / "old.bin" / "v2").read_bytes() == old + b"more"
        sh("mkdir docs && mv new.bin docs/", cwd=m.path)  # namespace jobs wait for L3 too
        assert (m.path / "docs" / "new.bin" / "latest").read_bytes() == new
        upload = job_of(m.path / "docs" / "new.bin" / "v1")
        job = wait_state(
            m, upload,
            lambda j: j["state"] == "retrying" and int(j["attempts"]) >= 2 and bool(re.search(error, j["last_error"])),
            f"to retry with an error matching {error!r}",
        )
        assert int(job["bytes_total"]) == len(new) and float(job["percent"]) < 100.0
        assert os.getxattr(m.path / "docs" / "new.bin" / "v1", "user.relayfs.state") in (b"pending", b"uploading")
        assert os.getxattr(m.path / "old.bin" / "v1", "user.relayfs.state") == b"durable"
        assert "unreachable" in relayfs("status", str(m.path)).stdout
        assert (m.path / "old.bin" / "v1").read_bytes() == old  # still, after all the retries
    finally:
        end(proxy, s3_server)
    poll(lambda: all_jobs_done(m), "every job to finish after L3 came back")  # no user action
    assert bucket_blob(s3_server, bucket, m.path / "docs" / "new.bin" / "v1") == new
    assert bucket_blob(s3_server, bucket, m.path / "old.bin" / "v2") == old + b"more"
    fresh = make_mount(f"s3://{bucket}")  # the bucket alone: namespace, records and bytes
    assert (fresh.path / "docs" / "new.bin" / "v1").read_bytes() == new
    assert (fresh.path / "old.bin" / "latest").read_bytes() == old + b"more"
    assert sorted(os.listdir(fresh.path / "old.bin")) == ["latest", "v1", "v2"]


def test_latency_slows_uploads_but_never_close(make_mount, bucket: str, proxy: FaultProxy, s3_server, fast_retry) -> None:  # type: ignore[no-untyped-def]
    m = make_mount(f"s3://{bucket}", endpoint=proxy.endpoint)
    old = os.urandom(100_000)
    (m.path / "old.bin").write_bytes(old)
    m.wait()
    proxy.latency(1.0)  # every request to L3 takes a second more
    try:
        data = os.urandom(MiB + 5)
        (m.path / "slow.bin").write_bytes(data)
        # close() returned before the upload (at least three requests) could be done
        job = read_job(m, job_of(m.path / "slow.bin" / "v1"))
        assert job["state"] in ("queued", "running"), job
        assert (m.path / "slow.bin" / "v1").read_bytes() == data
        assert (m.path / "old.bin" / "v1").read_bytes() == old
        done = wait_state(m, job["id"], lambda j: j["state"] == "done", "to finish despite the latency")
        assert done["last_error"] == ""
    finally:
        proxy.clear()
    poll(lambda: all_jobs_done(m), "every job to finish")
    assert bucket_blob(s3_server, bucket, m.path / "slow.bin" / "v1") == data


def test_cut_short_ranged_get_never_yields_wrong_bytes(make_mount, bucket: str, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    a = make_mount(f"s3://{bucket}")
    data = os.urandom(6 * MiB + 77)
    (a.path / "cold.bin").write_bytes(data)
    a.wait()

    b = make_mount(f"s3://{bucket}", endpoint=proxy.endpoint)  # a fresh machine: cold cache
    cold = b.path / "cold.bin" / "v1"
    sha = os.getxattr(cold, "user.relayfs.sha256").decode()
    # one answer cut short: the thaw asks again and the read gets the right bytes
    proxy.cut_short(method="GET", contains="/blobs/", count=1)
    with open(cold, "rb") as f:
        assert f.read() == data
    assert sum(1 for _, target, outcome in proxy.log if outcome == "cut_short" and "/blobs/" in target) == 1

    c = make_mount(f"s3://{bucket}", endpoint=proxy.endpoint)  # cold again
    c.expect_error(r"thaw of blob \w+: L3 unreachable")
    proxy.cut_short(method="GET", contains="/blobs/")  # every answer cut short: EIO, never wrong bytes
    path = c.path / "cold.bin" / "v1"
    with pytest.raises(OSError) as info:
        with open(path, "rb") as f:
            f.seek(4 * MiB)
            f.read(1000)
    assert info.value.errno == 5  # EIO
    poll(lambda: not any((c.cache / "thaw").iterdir()), "the failed thaw to clean up")
    assert not (c.cache / "blobs" / sha[:2] / sha).exists()  # nothing partial reached L2
    proxy.clear()
    with open(path, "rb") as f:  # a later read succeeds once the proxy behaves
        assert f.read() == data
    poll(lambda: (c.cache / "blobs" / sha[:2] / sha).exists(), "the thaw to land in L2")
    assert (c.cache / "blobs" / sha[:2] / sha).read_bytes() == data


@pytest.mark.parametrize("fault", ["reset", "500"])
def test_multipart_interrupted_half_way_completes_and_leaves_no_uploads(  # type: ignore[no-untyped-def]
    fault: str, make_mount, bucket: str, proxy: FaultProxy, s3_server, fast_retry
) -> None:
    m = make_mount(f"s3://{bucket}", endpoint=proxy.endpoint, extra=("--part-size", "5MiB"))
    data = os.urandom(16 * MiB + 3)  # four parts
    if fault == "reset":
        proxy.reset(method="PUT", contains="partNumber=2")
    else:
        proxy.fail(500, method="PUT", contains="partNumber=2")
    proxy.fail(500, method="DELETE", contains="uploadId=")  # and the abort fails too, at first
    try:
        (m.path / "big.bin").write_bytes(data)
        job_id = job_of(m.path / "big.bin" / "v1")
        wait_state(m, job_id, lambda j: j["state"] == "retrying" and int(j["attempts"]) >= 2, "to retry")
        client = s3_server.client()
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads"), "the aborts were refused, so uploads are open"
    finally:
        proxy.clear()
    done = wait_state(m, job_id, lambda j: j["state"] == "done", "to finish after the faults stopped")
    assert int(done["bytes_done"]) == len(data)
    assert bucket_blob(s3_server, bucket, m.path / "big.bin" / "v1") == data
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert any(outcome != "forwarded" and "partNumber=2" in target for _, target, outcome in proxy.log)
