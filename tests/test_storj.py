"""The Storj preset (``--l3 storj://BUCKET``) against a proxy that behaves like Storj's gateway.

The FaultProxy in storj mode refuses what https://gateway.storjshare.io refuses: flexible
checksum headers, ``If-None-Match`` other than ``*``, non-final parts under 5 MiB, and more
than about one write per second to one object name. A mount with the preset must never
trigger the first three, and must ride out the throttling by retrying. ``--s3-endpoint``
points the preset at the proxy instead of the real gateway; nothing else changes.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import pytest

from faultproxy import FaultProxy
from mount import Mount, poll
from test_faults import all_jobs_done, bucket_blob
from test_jobs import job_of, read_job, wait_state

MiB = 1024 * 1024


@pytest.fixture
def storj(s3_server) -> Iterator[FaultProxy]:  # type: ignore[no-untyped-def]
    p = FaultProxy(backend_port=int(s3_server.endpoint.rsplit(":", 1)[1]), mode="storj")
    yield p
    p.close()


def test_a_file_over_64_mib_uploads_in_storj_sized_parts(make_mount, bucket: str, storj: FaultProxy, s3_server) -> None:  # type: ignore[no-untyped-def]
    m: Mount = make_mount(f"storj://{bucket}", endpoint=storj.endpoint)
    data = os.urandom(64 * MiB + 3 * MiB)  # the last part is small, as S3 allows
    (m.path / "big.bin").write_bytes(data)
    m.wait(timeout=600)
    version = m.path / "big.bin" / "v1"
    job = read_job(m, job_of(version))
    assert (job["state"], job["last_error"]) == ("done", "")
    assert int(job["bytes_done"]) == int(job["bytes_total"]) == len(data)
    assert bucket_blob(s3_server, bucket, version) == data
    sha = os.getxattr(version, "user.relayfs.sha256").decode()
    assert storj.completed == [(f"blobs/{sha[:2]}/{sha}", [64 * MiB, 3 * MiB])]  # one Storj segment per part
    assert storj.client_errors() == Counter()


@pytest.mark.parametrize("kind", ["blobs", "records", "ns"])
def test_a_repeated_write_of_one_name_survives_storj_throttling(  # type: ignore[no-untyped-def]
    kind: str, make_mount, bucket: str, storj: FaultProxy, s3_server, fast_retry
) -> None:
    """The answer to the first PUT of a blob, version record or namespace event is lost, so
    the client writes it again at once: a blob or record under the same name, which the
    gateway throttles with 503 SlowDown; an event too when botocore retries it, and under a
    later stamp (a new name: pollers list recent stamps) when the job is tried again, which
    a reader applies once. Every job must still end ``done`` with the right bytes in the
    bucket."""
    storj.write_interval = 3600.0  # every rewrite is throttled until the test lets time pass
    storj.drop_answer(method="PUT", contains=f"/{kind}/", count=1)
    m: Mount = make_mount(f"storj://{bucket}", endpoint=storj.endpoint)
    data = os.urandom(100_000)
    (m.path / "a.bin").write_bytes(data)
    if kind != "ns":
        poll(lambda: storj.refusals["SlowDown"] >= 1, f"a rewrite of a {kind}/ object to be throttled")
    storj.write_interval = 1.0  # the gateway's real pace from now on
    poll(lambda: all_jobs_done(m), "every job to finish despite the throttling")
    job = wait_state(m, job_of(m.path / "a.bin" / "v1"), lambda j: j["state"] == "done", "to be done")
    assert job["last_error"] == ""
    assert bucket_blob(s3_server, bucket, m.path / "a.bin" / "v1") == data
    tries = [target.split("?")[0] for method, target, _ in storj.log if method == "PUT" and f"/{kind}/" in target]
    if kind == "ns":  # the first event went again (botocore's retry: same name; ours: a later stamp)
        assert len([t for t in tries if t.endswith("-00000001.json")]) >= 2, tries
    else:
        assert len(tries) >= 2 and len(set(tries)) == 1  # one name, written again after the lost answer
    assert storj.client_errors() == Counter()
    fresh = make_mount(f"storj://{bucket}", endpoint=storj.endpoint)  # the bucket alone says the same
    assert (fresh.path / "a.bin" / "v1").read_bytes() == data
