"""The workloads W1..W7 and the 2 GiB daemon phase, for one system at a time.

Each ``run_*`` function fills its rows of ``Results`` for one system. A system is driven
the way a user drives it: files through ``os`` calls in its data directory (a mount), or,
for ``boto3``, S3 calls through the same proxy. Where a workload needs a cold start, the
system's cold state is made as its ``cold_how`` says, after ``drop_caches``; figures that
needed ``drop_caches`` and did not get it are marked.

Medians of ``reps`` runs where cheap. Where one run of a workload already takes longer
than ``SLOW_REP`` seconds (s3fs creating 500 files pays 0.4 s per file), it is run once and
the table says so in the notes rather than spending ten minutes on a figure that is
already clear.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from . import data
from .measure import DropCaches, median, now, percentile, proc_sample, read_file, reset_hwm, ttfb_only
from .report import Results, Row
from .rig import SCRIPTS, Rig, clean_env
from .systems import SeedFile, System, wait_durable

log = logging.getLogger(__name__)

MiB = 1024 * 1024
GiB = 1024 * MiB
SLOW_REP = 60.0


@dataclass
class Sizes:
    size: int = 256 * MiB  # W1, W2, W3, W5
    small_files: int = 500  # W4
    small_size: int = 4096
    random_reads: int = 2000  # W5
    boto3_random_reads: int = 100  # W5 for boto3: each read is a GET of ~45 ms
    w6_small: int = 1 * MiB
    w6_big: int = 1 * GiB
    w7_files: int = 10_000
    big: int = 2 * GiB  # the RSS/CPU/interference phase
    idle_samples: int = 400
    busy_samples: int = 20_000  # a cap: busy sampling runs until the load is over
    reps: int = 3

    @classmethod
    def quick(cls, size_mib: int | None) -> "Sizes":
        return cls(size=(size_mib or 16) * MiB, small_files=50, random_reads=200, boto3_random_reads=20,
                   w6_big=32 * MiB, w7_files=200, big=64 * MiB, idle_samples=100, busy_samples=2000, reps=1)


def human(n: int) -> str:
    if n >= GiB and n % GiB == 0:
        return f"{n // GiB} GiB"
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    return f"{n // 1024} KiB"


def rows(z: Sizes, per_conn: float, part: int, threads: int) -> list[Row]:
    """Every row of the table, in order; labels carry the sizes that were run."""
    s, b = human(z.size), human(z.big)
    out = [
        Row("W1.close", f"W1 write {s}: until close() returns", "s", "lower", "W1"),
        Row("W1.durable", f"W1 write {s}: open until durable in L3 (native: with fsync)", "s", "lower", "W1"),
        Row("W1.down", f"W1 write {s} with L3 unreachable: until close() returns", "s", "lower", "W1"),
        Row("W1.upload", f"W1 upload to L3, close() to durable ({human(part)} parts × {threads})", "MiB/s", "higher", "W1"),
        Row("W2.ttfb", f"W2 cold read {s}: time to first byte", "ms", "lower", "W2"),
        Row("W2.seq", f"W2 cold read {s}: sequential", "MiB/s", "higher", "W2"),
    ]
    if per_conn:
        out += [
            Row("W2w.ttfb", f"W2 cold read {s}, link capped {per_conn:g} MB/s per connection: first byte", "ms", "lower", "W2"),
            Row("W2w.seq", f"W2 cold read {s}, link capped {per_conn:g} MB/s per connection: sequential", "MiB/s", "higher", "W2"),
        ]
    out += [
        Row("W3.warm", f"W3 warm re-read {s}", "MiB/s", "higher", "W3"),
        Row("W3.fuse", f"W3 warm re-read {s} of a minimal FUSE file the kernel keeps in its page cache (reference)",
            "MiB/s", "higher", "W3"),
        Row("W3.drop", f"W3 re-read {s} after drop_caches, own disk cache kept", "MiB/s", "higher", "W3"),
        Row("W4.create", f"W4 create a {human(z.small_size)} file, p50", "ms", "lower", "W4"),
        Row("W4.create_all", f"W4 create {z.small_files} files of {human(z.small_size)}", "s", "lower", "W4"),
        Row("W4.scan", f"W4 scandir + stat of {z.small_files} files", "ms", "lower", "W4"),
        Row("W4.read", f"W4 read {z.small_files} files back", "s", "lower", "W4"),
        Row("W5.p50", f"W5 random 4 KiB read in a warm {s} file, p50", "µs", "lower", "W5"),
        Row("W5.p99", f"W5 random 4 KiB read in a warm {s} file, p99", "µs", "lower", "W5"),
        Row("W6.small", f"W6 cold time to first byte, {human(z.w6_small)} file", "ms", "lower", "W6"),
        Row("W6.big", f"W6 cold time to first byte, {human(z.w6_big)} file", "ms", "lower", "W6"),
        Row("W7.mount", f"W7 mount with empty caches over {z.w7_files:,} files, until ready", "s", "lower", "W7"),
        Row("W7.first", f"W7 first ls -l of {z.w7_files:,} files after that mount", "s", "lower", "W7"),
        Row("W7.cold", f"W7 ls -l of {z.w7_files:,} files after drop_caches, own caches kept", "s", "lower", "W7"),
        Row("W7.warm", f"W7 ls -l of {z.w7_files:,} files, warm", "s", "lower", "W7"),
        Row("RSS.peak", f"RSS daemon peak RSS, writing {b} and reading a cold {b} at once", "MiB", "lower", "RSS"),
        Row("RSS.cpu", "RSS daemon CPU per GiB moved (write + upload, thaw + read)", "s/GiB", "lower", "RSS"),
        Row("RSS.upload", f"RSS write {b}: open until durable in L3, the cold read starting at close()", "MiB/s", "higher", "RSS"),
        Row("RSS.read", f"RSS cold read {b} while the upload runs", "MiB/s", "higher", "RSS"),
        Row("IF.stat_idle", "IF stat, p99, idle", "µs", "lower", "IF"),
        Row("IF.stat_busy", f"IF stat, p99, while the {b} upload or cold read runs", "µs", "lower", "IF"),
        Row("IF.stat_ratio", "IF stat p99, busy ÷ idle (target ≤ 2×)", "×", "lower", "IF"),
        Row("IF.read_idle", "IF 4 KiB read of a cached file, p99, idle", "µs", "lower", "IF"),
        Row("IF.read_busy", f"IF 4 KiB read of a cached file, p99, while the {b} upload or cold read runs", "µs", "lower", "IF"),
        Row("IF.read_ratio", "IF 4 KiB cached read p99, busy ÷ idle (target ≤ 2×)", "×", "lower", "IF"),
    ]
    return out


@dataclass
class Ctx:
    rig: Rig
    sizes: Sizes
    drop: DropCaches
    results: Results
    part_size: int
    threads: int
    run_id: str

    def bucket(self, system: str, group: str) -> str:
        return self.rig.new_bucket(f"b-{self.run_id}-{system}-{group}".lower())

    def cold(self) -> bool:
        """Drop the page cache; False (figures get marked) when that is not possible."""
        return self.drop()

    def nonce(self, what: str) -> str:
        return f"{self.run_id}-{what}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------------- W1


def run_w1(ctx: Ctx, s: System) -> None:
    z, r = ctx.sizes, ctx.results
    bucket = ctx.bucket(s.name, "w1")
    close_s: list[float] = []
    durable_s: list[float] = []
    upload: list[float] = []
    try:
        if s.name == "boto3":
            client = ctx.rig.client(direct=False, no_expect=True, pool=max(10, ctx.threads * 2))
            cfg = TransferConfig(multipart_threshold=ctx.part_size, multipart_chunksize=ctx.part_size,
                                 max_concurrency=ctx.threads)
            for rep in range(z.reps):
                src = data.PatternReader(ctx.nonce("w1"), z.size)
                t0 = now()
                client.upload_fileobj(src, bucket, f"w1-{rep}", Config=cfg)
                dt = now() - t0
                durable_s.append(dt)
                upload.append(z.size / MiB / dt)
            r.put("W1.durable", s.name, median(durable_s), durable_s)
            r.put("W1.upload", s.name, median(upload), upload)
            return
        with s.mount(bucket, ctx.rig.proxy.endpoint) as m:
            for rep in range(z.reps):
                blocks = data.blocks(ctx.nonce("w1"), z.size)  # made before the clock starts
                name = f"w1-{rep}"
                t0 = now()
                fd = os.open(m.path / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                for blk in blocks:
                    _write_all(fd, blk)
                os.close(fd)
                t_close = now()
                close_s.append(t_close - t0)
                if s.name == "native":
                    blocks = data.blocks(ctx.nonce("w1f"), z.size)
                    t0 = now()
                    fd = os.open(m.path / f"{name}-fsync", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    for blk in blocks:
                        _write_all(fd, blk)
                    os.fsync(fd)
                    os.close(fd)
                    durable_s.append(now() - t0)
                    continue
                del blocks
                t_dur = wait_durable(s, m, bucket, name, z.size)
                if t_dur is None:
                    raise RuntimeError(f"{name} not durable in L3 within an hour")
                durable_s.append(t_dur - t0)
                upload.append(z.size / MiB / max(1e-9, t_dur - t_close))
            if s.name == "relayfs":
                r.put("W1.down", s.name, *_w1_outage(ctx, s, m, bucket))
        r.put("W1.close", s.name, median(close_s), close_s)
        r.put("W1.durable", s.name, median(durable_s), durable_s)
        if s.name == "relayfs":  # peers' close-to-durable includes their own choices (rclone's 5 s write-back delay)
            r.put("W1.upload", s.name, median(upload), upload)
    finally:
        _forget(ctx, s, bucket)


def _w1_outage(ctx: Ctx, s: System, m: Any, bucket: str) -> tuple[float, list[float]]:
    """W1's write with the proxy cutting every connection: close() must not wait for L3.
    (Only relayfs: s3fs uploads inside close(), rclone's write-back retries later anyway.)"""
    z = ctx.sizes
    times: list[float] = []
    ctx.rig.proxy.outage(True)
    try:
        for rep in range(z.reps):
            blocks = data.blocks(ctx.nonce("w1d"), z.size)
            t0 = now()
            fd = os.open(m.path / f"w1-down-{rep}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            for blk in blocks:
                _write_all(fd, blk)
            os.close(fd)
            times.append(now() - t0)
            del blocks
    finally:
        ctx.rig.proxy.outage(False)
    for rep in range(z.reps):  # and once L3 is back, they land
        if wait_durable(s, m, bucket, f"w1-down-{rep}", z.size) is None:
            raise RuntimeError("a file written during the outage never reached L3")
    return median(times), times


def _write_all(fd: int, blk: bytes) -> None:
    view = memoryview(blk)
    while view:
        view = view[os.write(fd, view):]


def _forget(ctx: Ctx, s: System, bucket: str) -> None:
    ctx.rig.drop_bucket(bucket)
    forget = getattr(s, "forget", None)
    if forget is not None:
        forget(bucket)


# ---------------------------------------------------------------------------- W2 W3 W5


def run_read(ctx: Ctx, s: System, groups: set[str]) -> None:
    """W2 (cold read), W3 (warm re-reads) and W5 (random reads) on one seeded file."""
    z, r = ctx.sizes, ctx.results
    bucket = ctx.bucket(s.name, "read")
    nonce = ctx.nonce("cold")
    try:
        s.seed(bucket, [SeedFile("cold", nonce, z.size)])
        if s.name == "boto3":
            _read_boto3(ctx, s, bucket, nonce, groups)
            return
        ttfb, seq, warm, dropped, p50, p99 = [], [], [], [], [], []
        marked = False
        for rep in range(z.reps):
            with s.mount(bucket, ctx.rig.proxy.endpoint) as m:
                path, first_ms, mib_s, not_cold = _cold_read(ctx, s, m, nonce)
                marked |= not_cold
                ttfb.append(first_ms)
                seq.append(mib_s)
                if "W3" in groups:
                    _, el, n, ok = read_file(path, nonce)
                    _check_read(s, path, n, z.size, ok)
                    warm.append(n / MiB / el)
                    marked |= not ctx.cold()
                    _, el, n, ok = read_file(path, nonce)
                    _check_read(s, path, n, z.size, ok)
                    dropped.append(n / MiB / el)
                if "W5" in groups:
                    lat = _random_reads(path, z.size, z.random_reads)
                    p50.append(percentile(lat, 50))
                    p99.append(percentile(lat, 99))
        if "W2" in groups:
            r.put("W2.ttfb", s.name, median(ttfb), ttfb, marked)
            r.put("W2.seq", s.name, median(seq), seq, marked)
        if "W3" in groups:
            r.put("W3.warm", s.name, median(warm), warm)
            r.put("W3.drop", s.name, median(dropped), dropped, marked)
            if s.name == "native":
                fuse = _fuse_reference(ctx)
                r.put("W3.fuse", s.name, median(fuse), fuse)
        if "W5" in groups:
            r.put("W5.p50", s.name, median(p50), p50)
            r.put("W5.p99", s.name, median(p99), p99)
        if "W2" in groups and ctx.rig.wan is not None and s.name != "native":
            ttfb, seq = [], []
            for rep in range(z.reps):
                with s.mount(bucket, ctx.rig.wan.endpoint) as m:
                    _, first_ms, mib_s, not_cold = _cold_read(ctx, s, m, nonce)
                    marked |= not_cold
                    ttfb.append(first_ms)
                    seq.append(mib_s)
            r.put("W2w.ttfb", s.name, median(ttfb), ttfb, marked)
            r.put("W2w.seq", s.name, median(seq), seq, marked)
    finally:
        _forget(ctx, s, bucket)


def _cold_read(ctx: Ctx, s: System, m: Any, nonce: str) -> tuple[Path, float, float, bool]:
    """The seeded file read whole after drop_caches: (path, ms to first byte, MiB/s, whether
    the page cache could not be dropped)."""
    path = m.path / s.read_name("cold")
    not_cold = not ctx.cold()
    t1, el, n, ok = read_file(path, nonce)
    _check_read(s, path, n, ctx.sizes.size, ok)
    return path, t1 * 1000, n / MiB / el, not_cold


def _fuse_reference(ctx: Ctx) -> list[float]:
    """Warm re-reads (MiB/s) of a file served by ``fuseref``: the kernel's FUSE page cache."""
    z = ctx.sizes
    nonce = ctx.nonce("fuseref")
    mnt = Path(tempfile.mkdtemp(prefix="fuseref-", dir=ctx.rig.workdir))
    proc = subprocess.Popen([sys.executable, "-m", "relaybench.fuseref", str(mnt), nonce, str(z.size)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=clean_env({"PYTHONPATH": str(SCRIPTS)}))
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the reference FUSE filesystem did not mount")
        path = mnt / "data"
        _, _, n, ok = read_file(path, nonce)  # fills the page cache
        _check_read_size(path, n, z.size, ok)
        out = []
        for _ in range(z.reps):
            _, el, n, ok = read_file(path, nonce)
            _check_read_size(path, n, z.size, ok)
            out.append(n / MiB / el)
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
        with contextlib.suppress(OSError):
            mnt.rmdir()


def _check_read_size(path: Path, n: int, size: int, ok: bool) -> None:
    if n != size or not ok:
        raise RuntimeError(f"read {n} bytes of {path} (expected {size}), stamps ok: {ok}")


def _check_read(s: System, path: Path, n: int, size: int, ok: bool) -> None:
    if n != size:
        raise RuntimeError(f"read {n} bytes of {path}, expected {size}")
    if not ok:
        raise RuntimeError(f"{path}: wrong bytes (a block stamp did not match)")


def _random_reads(path: Path, size: int, count: int, seed: int = 7) -> list[float]:
    """Latencies (µs) of ``count`` 4 KiB preads at random 4 KiB-aligned offsets."""
    rnd = random.Random(seed)
    offsets = [rnd.randrange(0, max(1, size // 4096)) * 4096 for _ in range(count)]
    fd = os.open(path, os.O_RDONLY)
    out = []
    try:
        for off in offsets:
            t = time.perf_counter_ns()
            os.pread(fd, 4096, off)
            out.append((time.perf_counter_ns() - t) / 1000)
    finally:
        os.close(fd)
    return out


def _read_boto3(ctx: Ctx, s: System, bucket: str, nonce: str, groups: set[str]) -> None:
    z, r = ctx.sizes, ctx.results
    client = ctx.rig.client(direct=False)
    if "W2" in groups:
        ttfb, seq = [], []
        for _ in range(z.reps):
            t1, el, n = _get_stream(client, bucket, "cold")
            if n != z.size:
                raise RuntimeError(f"GET returned {n} bytes, expected {z.size}")
            ttfb.append(t1 * 1000)
            seq.append(n / MiB / el)
        r.put("W2.ttfb", s.name, median(ttfb), ttfb)
        r.put("W2.seq", s.name, median(seq), seq)
        if ctx.rig.wan is not None:
            wan = _on(ctx.rig.wan.endpoint, ctx)
            ttfb, seq = [], []
            cfg = TransferConfig(multipart_threshold=ctx.part_size, multipart_chunksize=ctx.part_size,
                                 max_concurrency=ctx.threads)
            for _ in range(z.reps):
                t1, _, _ = _get_stream(wan, bucket, "cold", first_only=True)
                ttfb.append(t1 * 1000)
                sink = _Sink()
                t0 = now()
                wan.download_fileobj(bucket, "cold", sink, Config=cfg)
                el = now() - t0
                if sink.n != z.size:
                    raise RuntimeError(f"download returned {sink.n} bytes, expected {z.size}")
                seq.append(sink.n / MiB / el)
            r.put("W2w.ttfb", s.name, median(ttfb), ttfb)
            r.put("W2w.seq", s.name, median(seq), seq,
                  note="transfer manager: parallel ranged GETs")
    if "W5" in groups:
        rnd = random.Random(7)
        lat = []
        for _ in range(z.boto3_random_reads):
            off = rnd.randrange(0, z.size // 4096) * 4096
            t = time.perf_counter_ns()
            client.get_object(Bucket=bucket, Key="cold", Range=f"bytes={off}-{off + 4095}")["Body"].read()
            lat.append((time.perf_counter_ns() - t) / 1000)
        r.put("W5.p50", s.name, percentile(lat, 50), lat)
        r.put("W5.p99", s.name, percentile(lat, 99), lat)
        r.note(s.name, f"W5: {z.boto3_random_reads} ranged GETs, not {z.random_reads} (each is a round trip)")


def _on(endpoint: str, ctx: Ctx) -> Any:
    from .rig import s3_client

    return s3_client(endpoint, pool=max(10, ctx.threads * 2))


class _Sink(io.RawIOBase):
    """A writable file object that counts and drops bytes (downloads into nowhere)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        n = len(b)
        self.n += n
        return n

    def seek(self, *_: Any) -> int:  # the transfer manager seeks for each part; order does not matter
        return 0

    def seekable(self) -> bool:
        return True


def _get_stream(client: Any, bucket: str, key: str, first_only: bool = False) -> tuple[float, float, int]:
    """(seconds to first 4 KiB, total seconds, bytes) of one GET read as a stream."""
    t0 = now()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    head = body.read(4096)
    t1 = now() - t0
    if first_only:
        body.close()
        return t1, t1, len(head)
    n = len(head)
    while chunk := body.read(MiB):
        n += len(chunk)
    return t1, now() - t0, n


# ---------------------------------------------------------------------------------- W4


def run_w4(ctx: Ctx, s: System) -> None:
    z, r = ctx.sizes, ctx.results
    bucket = ctx.bucket(s.name, "w4")
    creates: list[float] = []
    totals, scans, reads = [], [], []
    try:
        if s.name == "boto3":
            client = ctx.rig.client(direct=False, no_expect=True)
            for rep in range(z.reps):
                t_rep = now()
                prefix = f"w4-{rep}/"
                t0 = now()
                for i in range(z.small_files):
                    body = data.block(ctx.nonce("w4"), 0, z.small_size)
                    t = now()
                    client.put_object(Bucket=bucket, Key=f"{prefix}f{i:04d}", Body=body)
                    creates.append((now() - t) * 1000)
                totals.append(now() - t0)
                t0 = now()
                listed = sum(len(p.get("Contents", ())) for p in
                             client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix))
                scans.append((now() - t0) * 1000)
                if listed != z.small_files:
                    raise RuntimeError(f"listed {listed} keys, expected {z.small_files}")
                t0 = now()
                for i in range(z.small_files):
                    client.get_object(Bucket=bucket, Key=f"{prefix}f{i:04d}")["Body"].read()
                reads.append(now() - t0)
                if now() - t_rep > SLOW_REP and rep < z.reps - 1:
                    r.note(s.name, f"W4: one run only ({now() - t_rep:.0f} s per run)")
                    break
        else:
            with s.mount(bucket, ctx.rig.proxy.endpoint) as m:
                for rep in range(z.reps):
                    t_rep = now()
                    d = m.path / f"w4-{rep}"
                    os.mkdir(d)
                    bodies = [data.block(ctx.nonce("w4"), 0, z.small_size) for _ in range(z.small_files)]
                    t0 = now()
                    for i, body in enumerate(bodies):
                        t = now()
                        fd = os.open(d / f"f{i:04d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                        _write_all(fd, body)
                        os.close(fd)
                        creates.append((now() - t) * 1000)
                    totals.append(now() - t0)
                    t0 = now()
                    count = 0
                    with os.scandir(d) as it:
                        for entry in it:
                            entry.stat()
                            count += 1
                    scans.append((now() - t0) * 1000)
                    if count != z.small_files:
                        raise RuntimeError(f"scandir saw {count} entries, expected {z.small_files}")
                    t0 = now()
                    for i, body in enumerate(bodies):
                        with open(d / s.read_name(f"f{i:04d}"), "rb") as f:
                            if f.read() != body:
                                raise RuntimeError(f"{d}/f{i:04d}: wrong bytes read back")
                    reads.append(now() - t0)
                    if now() - t_rep > SLOW_REP and rep < z.reps - 1:
                        r.note(s.name, f"W4: one run only ({now() - t_rep:.0f} s per run)")
                        break
        r.put("W4.create", s.name, percentile(creates, 50), creates)
        r.put("W4.create_all", s.name, median(totals), totals)
        r.put("W4.scan", s.name, median(scans), scans)
        r.put("W4.read", s.name, median(reads), reads)
    finally:
        _forget(ctx, s, bucket)


# ---------------------------------------------------------------------------------- W6


def run_w6(ctx: Ctx, s: System) -> None:
    z, r = ctx.sizes, ctx.results
    bucket = ctx.bucket(s.name, "w6")
    files = [SeedFile("small", ctx.nonce("w6s"), z.w6_small), SeedFile("big", ctx.nonce("w6b"), z.w6_big)]
    try:
        s.seed(bucket, files)
        for f, key in zip(files, ("W6.small", "W6.big")):
            ttfb = []
            marked = False
            for _ in range(z.reps):
                if s.name == "boto3":
                    t1, _, _ = _get_stream(ctx.rig.client(direct=False), bucket, f.name, first_only=True)
                else:
                    with s.mount(bucket, ctx.rig.proxy.endpoint) as m:
                        marked |= not ctx.cold()
                        t1 = ttfb_only(m.path / s.read_name(f.name))
                ttfb.append(t1 * 1000)
            r.put(key, s.name, median(ttfb), ttfb, marked and s.name != "boto3")
    finally:
        _forget(ctx, s, bucket)


# ---------------------------------------------------------------------------------- W7


def _ls(path: Path, expect: int) -> float:
    t0 = now()
    done = subprocess.run(["ls", "-l", "--color=never", str(path)], capture_output=True, text=True, timeout=3600)
    took = now() - t0
    if done.returncode != 0:
        raise RuntimeError(f"ls -l {path}: {done.stderr.strip()}")
    lines = len(done.stdout.splitlines()) - 1  # the "total" line
    if lines != expect:
        raise RuntimeError(f"ls -l {path} listed {lines} entries, expected {expect}")
    return took


def run_w7(ctx: Ctx, s: System) -> None:
    z, r = ctx.sizes, ctx.results
    bucket = ctx.bucket(s.name, "w7")
    files = [SeedFile(f"w7/f{i:05d}", ctx.nonce(f"w7-{i}"), 64) for i in range(z.w7_files)]
    try:
        t0 = now()
        if s.name == "relayfs":
            made, uploaded = _seed_relayfs_dir(s, bucket, files)
            r.note(s.name, f"W7 set-up (not in the table): creating {len(files):,} files of 64 B through a mount "
                           f"straight to moto took {made:.0f} s, their uploads finished {uploaded:.0f} s after the last close")
        elif s.name == "native":
            (s.mount(bucket, "").path / "w7").mkdir(exist_ok=True)
            s.seed(bucket, files)
        else:
            s.seed(bucket, files)
        log.info("%s W7: %d files seeded in %.1f s", s.name, len(files), now() - t0)
        if s.name == "boto3":
            client = ctx.rig.client(direct=False)
            t0 = now()
            listed = sum(len(p.get("Contents", ())) for p in
                         client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="w7/"))
            r.put("W7.first", s.name, now() - t0)
            if listed != z.w7_files:
                raise RuntimeError(f"listed {listed} keys, expected {z.w7_files}")
            r.note(s.name, "W7: one paginated ListObjectsV2 (1,000 keys a page) through the proxy")
            return
        marked = not ctx.cold()
        with s.mount(bucket, ctx.rig.proxy.endpoint) as m:
            if s.name != "native":
                r.put("W7.mount", s.name, m.mount_seconds)
            first = _ls(m.path / "w7", z.w7_files)
            r.put("W7.first", s.name, first, marked=marked)
            reps = z.reps
            if first > SLOW_REP and reps > 1:  # rclone HEADs every object for every ls -l
                reps = 1
                r.note(s.name, f"W7: one cold and one warm ls -l, not {z.reps} (the first took {first:.0f} s)")
            cold, warm = [], []
            for _ in range(reps):
                marked |= not ctx.cold()
                cold.append(_ls(m.path / "w7", z.w7_files))
                warm.append(_ls(m.path / "w7", z.w7_files))
            r.put("W7.cold", s.name, median(cold), cold, marked)
            r.put("W7.warm", s.name, median(warm), warm)
    finally:
        _forget(ctx, s, bucket)


def _seed_relayfs_dir(s: System, bucket: str, files: list[SeedFile]) -> tuple[float, float]:
    """RelayFS's W7 state: the folder made through a mount straight to moto, all durable.

    Returns the seconds the creates took and how long the uploads ran on after them.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .systems import RelayFS

    assert isinstance(s, RelayFS)
    with s.mount(bucket, s.rig.direct) as m:
        (m.path / "w7").mkdir()
        t0 = now()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda f: data.write_file(m.path / f.name, f.nonce, f.size), files))
        t1 = now()
        s.wait(m)
        log.info("relayfs W7 seed: %d creates in %.1f s, uploads done %.1f s after the last close",
                 len(files), t1 - t0, now() - t1)
        return t1 - t0, now() - t1


# ------------------------------------------------------------- RSS, CPU and interference


def run_big(ctx: Ctx, s: System) -> None:
    """Write a big file and read a cold one at once; watch the daemon and a cached file."""
    z, r = ctx.sizes, ctx.results
    bucket = ctx.bucket(s.name, "big")
    cold_nonce, new_nonce, hot_nonce = ctx.nonce("bigcold"), ctx.nonce("bignew"), ctx.nonce("hot")
    try:
        s.seed(bucket, [SeedFile("big-cold", cold_nonce, z.big)])
        with s.mount(bucket, ctx.rig.proxy.endpoint) as m:
            assert m.pid is not None
            hot_path = m.path / "hot"

            data.write_file(hot_path, hot_nonce, MiB)
            if wait_durable(s, m, bucket, "hot", MiB, timeout=600) is None:
                raise RuntimeError("the 1 MiB hot file did not become durable")
            hot_read = m.path / s.read_name("hot")
            read_file(hot_read, hot_nonce)  # cached now: in the page cache and the system's own
            idle = _sample(hot_path, hot_read, z.idle_samples, None, 0.005)
            before = proc_sample(m.pid)
            hwm_reset = reset_hwm(m.pid)
            env = clean_env({"PYTHONPATH": str(SCRIPTS)})
            t_start = now()
            writer = subprocess.Popen(
                [sys.executable, "-m", "relaybench.loadgen", "write", str(m.path / "big-new"), str(z.big), new_nonce],
                stdout=subprocess.PIPE, text=True, env=env)
            assert writer.stdout is not None
            line = writer.stdout.readline()
            writer.wait()
            if not line.startswith("closed"):
                raise RuntimeError(f"the writer failed (exit {writer.returncode})")
            reader = subprocess.Popen(
                [sys.executable, "-m", "relaybench.loadgen", "read", str(m.path / s.read_name("big-cold")), cold_nonce],
                stdout=subprocess.PIPE, text=True, env=env)
            state = {"durable": None}

            def busy() -> bool:
                if state["durable"] is None and s.is_durable(m, bucket, "big-new", z.big):
                    state["durable"] = now()
                return reader.poll() is None or state["durable"] is None

            t_busy = now()
            busy_lat = _sample(hot_path, hot_read, z.busy_samples, busy, 0.01)
            t_busy = now() - t_busy
            assert reader.stdout is not None
            out = reader.stdout.read().split()
            reader.wait()
            if len(out) != 4 or out[0] != "done":
                raise RuntimeError(f"the cold reader failed (exit {reader.returncode})")
            n, secs, ok = int(out[1]), float(out[2]), out[3] == "1"
            if n != z.big or not ok:
                raise RuntimeError(f"cold read of big-cold: {n} bytes, stamps ok={ok}")
            t_dur = state["durable"] or wait_durable(s, m, bucket, "big-new", z.big)
            if t_dur is None:
                raise RuntimeError("big-new did not become durable")
            after = proc_sample(m.pid)
        if before is None or after is None:
            raise RuntimeError("the daemon went away during the phase")
        r.put("RSS.peak", s.name, after.hwm_mib,
              note="" if hwm_reset else "VmHWM could not be reset: covers the whole mount's life")
        r.put("RSS.cpu", s.name, (after.cpu_s - before.cpu_s) / (2 * z.big / GiB))
        r.put("RSS.upload", s.name, z.big / MiB / max(1e-9, t_dur - t_start))
        r.put("RSS.read", s.name, n / MiB / secs)
        if not busy_lat["stat"]:
            raise RuntimeError("no busy samples: the load was over before sampling began")
        for what in ("stat", "read"):
            i99, b99 = percentile(idle[what], 99), percentile(busy_lat[what], 99)
            r.put(f"IF.{what}_idle", s.name, i99, idle[what])
            r.put(f"IF.{what}_busy", s.name, b99, busy_lat[what])
            r.put(f"IF.{what}_ratio", s.name, b99 / i99 if i99 else float("nan"))
        r.note(s.name, f"IF: {len(idle['stat'])} idle samples and {len(busy_lat['stat'])} busy ones "
                       f"over {t_busy:.0f} s, of each")
    finally:
        _forget(ctx, s, bucket)


def _sample(stat_path: Path, read_path: Path, count: int, keep_going: Any, interval: float) -> dict[str, list[float]]:
    """Latencies (µs) of ``stat`` and of a 4 KiB read of a cached file, alternating.

    Before each read the file's pages are dropped (``POSIX_FADV_DONTNEED``) and readahead
    is off (``POSIX_FADV_RANDOM``), so the read reaches the file system's daemon instead of
    the kernel's page cache: it measures whether the daemon answers promptly, which is what
    a blocked event loop would spoil. ``keep_going`` (checked every 10 samples) ends the
    busy sampling once the load is over; ``interval`` spaces the pairs so that busy sampling
    covers the whole load rather than its first seconds.
    """
    out: dict[str, list[float]] = {"stat": [], "read": []}
    size = os.stat(read_path).st_size
    rnd = random.Random(11)
    fd = os.open(read_path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for i in range(count):
            if keep_going is not None and i % 10 == 0 and not keep_going():
                break
            t = time.perf_counter_ns()
            os.stat(stat_path)
            out["stat"].append((time.perf_counter_ns() - t) / 1000)
            off = rnd.randrange(0, max(1, size // 4096)) * 4096
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            t = time.perf_counter_ns()
            os.pread(fd, 4096, off)
            out["read"].append((time.perf_counter_ns() - t) / 1000)
            time.sleep(interval)
    finally:
        os.close(fd)
    return out


# ------------------------------------------------------------------------- the rig itself


def run_rig_check(ctx: Ctx) -> list[str]:
    """Check the link before trusting it, and measure what moto's GETs cost by themselves.

    A tiny request should cost one round trip (2 × delay); a single GET stream should run
    near the cap; a ranged GET straight to moto shows moto's own cost with the range patch
    and without it (``x-bench-stock-range``), in the same run.
    """
    rig, z = ctx.rig, ctx.sizes
    bucket = ctx.bucket("rig", "check")
    lines = []
    try:
        direct = rig.client()
        direct.put_object(Bucket=bucket, Key="tiny", Body=b"x")
        direct.upload_fileobj(data.PatternReader("rig", z.size), bucket, "obj",
                              Config=TransferConfig(multipart_chunksize=64 * MiB, multipart_threshold=64 * MiB))
        proxied = rig.client(direct=False)
        proxied.head_object(Bucket=bucket, Key="tiny")  # connect first: keep-alive is part of the rig
        heads = []
        for _ in range(7):
            t = now()
            proxied.head_object(Bucket=bucket, Key="tiny")
            heads.append((now() - t) * 1000)
        _, el, n = _get_stream(proxied, bucket, "obj")
        ranged = {}
        for stock in (False, True):
            client = rig.client()
            if stock:
                client.meta.events.register(
                    "before-call.s3.GetObject",
                    lambda params, **_: params["headers"].__setitem__("x-bench-stock-range", "1"))
            times = []
            for i in range(5):
                t = now()
                client.get_object(Bucket=bucket, Key="obj", Range=f"bytes={MiB}-{2 * MiB - 1}")["Body"].read()
                times.append((now() - t) * 1000)
            ranged[stock] = median(times)
        ctx.results.rig_check = {
            "head_ms": median(heads),
            "expected_head_ms": 2 * rig.delay_ms,
            "single_get_mib_s": n / MiB / el,
            "cap_mib_s": rig.bandwidth_mbps * 1e6 / MiB,
            "moto_ranged_get_patched_ms": ranged[False],
            "moto_ranged_get_stock_ms": ranged[True],
        }
        lines.append(f"link check: HEAD of a 1-byte object {median(heads):.1f} ms through the proxy "
                     f"(one round trip is {2 * rig.delay_ms:g} ms); one GET stream of {human(z.size)} "
                     f"{n / MiB / el:.1f} MiB/s (cap {rig.bandwidth_mbps * 1e6 / MiB:.1f} MiB/s)")
        lines.append(f"moto's own cost of a 1 MiB ranged GET of a {human(z.size)} object, straight to moto: "
                     f"{ranged[False]:.1f} ms with the range patch, {ranged[True]:.1f} ms stock "
                     "(stock copies the whole object per GET)")
    finally:
        rig.drop_bucket(bucket)
    return lines
