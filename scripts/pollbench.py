#!/usr/bin/env python3
"""What a poll for other workstations' changes costs, against the size of the bucket.

    scripts/pollbench.py                    # buckets of 1,000 and 10,000 files
    scripts/pollbench.py --sizes 200,2000   # other sizes (the test suite runs small ones)

For each size: a bucket is seeded straight into moto with that many files (one version
each: a "mkfile" event, a version record, one shared blob), then a RelayFS client (the SDK:
the mount's engine without FUSE) with an empty cache opens it through the benchmark's
shaping proxy (20 ms each way) and polls. The proxy counts every request. Printed per size:
the first (full) poll, polls with nothing new, and a poll after a second client committed
10 new versions; requests and milliseconds each, medians of ``--reps``. The point: once
caught up, a poll's cost follows the changes, not the bucket.

Run it with the Python that has RelayFS and its test extras installed (moto[server]).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relaybench.rig import AWS_ENV, Rig  # noqa: E402

log = logging.getLogger("pollbench")
ORIGIN = "5eed0000"
CHANGES = 10


def seed(rig: Rig, bucket: str, files: int) -> None:
    """``files`` versioned files of one version each, written the way RelayFS lays them out."""
    from relayfs.store import layout

    body = b"seeded\n"
    sha = hashlib.sha256(body).hexdigest()
    client = rig.client(pool=64)
    client.put_object(Bucket=bucket, Key=layout.blob_key(sha), Body=body)
    start_ms = int(time.time() * 1000) - 3_600_000  # an hour ago: older than any look-back

    def one(i: int) -> None:
        fid = hashlib.md5(f"{bucket}-{i}".encode()).hexdigest()
        event = layout.NsEvent("mkfile", f"f{i:06d}.txt", file_id=fid, mtime_ns=time.time_ns())
        client.put_object(Bucket=bucket, Key=layout.ns_key(ORIGIN, i + 1, now=(start_ms + i) / 1000), Body=event.to_json())
        rec = layout.VersionRecord(fid, 1, sha, len(body), time.time_ns(), layout.CHUNK_SIZE,
                                   (hashlib.sha256(body).hexdigest(),), ORIGIN)
        client.put_object(Bucket=bucket, Key=layout.record_key(fid, 1), Body=rec.to_json())

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, range(files)))


def measure(rig: Rig, fs: Any) -> tuple[int, float]:
    """(requests, ms) of one poll, counted at the proxy."""
    assert rig.proxy is not None
    rig.proxy.reset()
    t0 = time.perf_counter()
    fs.refresh()
    ms = (time.perf_counter() - t0) * 1000
    return sum(rig.proxy.stats()["requests"].values()), ms


def run_size(rig: Rig, files: int, reps: int, workdir: Path) -> dict[str, Any]:
    import relayfs

    assert rig.proxy is not None
    bucket = rig.new_bucket(f"poll-{files}-{int(time.time())}")
    t0 = time.perf_counter()
    seed(rig, bucket, files)
    log.info("%d files seeded in %.1f s", files, time.perf_counter() - t0)
    settings = dict(l3=f"s3://{bucket}", s3_endpoint=rig.proxy.endpoint, poll_seconds=0)
    t0 = time.perf_counter()
    with relayfs.open(cache_dir=str(workdir / f"reader-{files}"), **settings) as reader:
        opened = time.perf_counter() - t0
        full = measure(rig, reader)
        idle = [measure(rig, reader) for _ in range(reps)]
        after = []
        with relayfs.open(cache_dir=str(workdir / f"writer-{files}"), **settings) as writer:
            for rep in range(reps):
                for i in range(CHANGES):
                    writer.put(f"/f{i:06d}.txt", f"change {rep} {i}\n".encode())
                writer.wait(timeout=600)
                after.append(measure(rig, reader))
        got = reader.read(f"/f{CHANGES - 1:06d}.txt")
        if got != f"change {reps - 1} {CHANGES - 1}\n".encode():
            raise RuntimeError(f"the reader did not pick up the last change: {got!r}")
    rig.drop_bucket(bucket)
    return {"files": files, "open_s": opened, "full": full, "idle": idle, "after": after}


def med(samples: list[tuple[int, float]]) -> tuple[float, float]:
    return statistics.median(r for r, _ in samples), statistics.median(ms for _, ms in samples)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000", help="comma-separated bucket sizes in files [1000,10000]")
    p.add_argument("--reps", type=int, default=3, help="polls per figure, median shown [3]")
    p.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay of the proxy [20]")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("relayfs").setLevel(logging.WARNING)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes: not a list of numbers: {args.sizes!r}")
    import os

    os.environ.update(AWS_ENV)
    workdir = Path(tempfile.mkdtemp(prefix="pollbench-"))
    rig = Rig(args.delay_ms, 100.0, 0.0, False, workdir)
    rig.start()
    try:
        results = [run_size(rig, n, args.reps, workdir) for n in sizes]
    finally:
        rig.close()
    rtt = 2 * args.delay_ms
    print(f"# Poll cost against bucket size: scripts/pollbench.py {' '.join(sys.argv[1:])}\n")
    print(f"Link: {args.delay_ms:g} ms each way ({rtt:g} ms round trip); requests counted at the proxy; "
          f"medians of {args.reps}.\n")
    print("| files in bucket | open, empty cache | first poll (full) | poll, nothing new | poll after "
          f"{CHANGES} new versions |")
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        idle_req, idle_ms = med(r["idle"])
        after_req, after_ms = med(r["after"])
        print(f"| {r['files']:,} | {r['open_s']:.1f} s | {r['full'][0]} requests, {r['full'][1]:.0f} ms "
              f"| {idle_req:g} requests, {idle_ms:.0f} ms | {after_req:g} requests, {after_ms:.0f} ms |")
    if len(results) > 1:
        small, big = results[0], results[-1]
        print(f"\nIdle poll, {big['files']:,} ÷ {small['files']:,} files: requests "
              f"{med(big['idle'])[0] / max(1, med(small['idle'])[0]):.2f}×, time "
              f"{med(big['idle'])[1] / max(1e-9, med(small['idle'])[1]):.2f}×; poll after {CHANGES} changes: requests "
              f"{med(big['after'])[0] / max(1, med(small['after'])[0]):.2f}×.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
