"""Clocks, statistics, the page cache and /proc: what every workload measures with."""

from __future__ import annotations

import logging
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
_TICK = os.sysconf("SC_CLK_TCK")


def now() -> float:
    return time.perf_counter()


def median(values: Iterable[float]) -> float:
    vals = list(values)
    return statistics.median(vals) if vals else float("nan")


def percentile(values: Iterable[float], pct: float) -> float:
    """Nearest-rank percentile: p99 of 2000 samples is the 1980th smallest, a real sample."""
    vals = sorted(values)
    if not vals:
        return float("nan")
    rank = max(1, min(len(vals), int(-(-pct * len(vals) // 100))))
    return vals[rank - 1]


class DropCaches:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``, or a record that it could not be done.

    Needs root. When it is not possible every figure that relies on it is marked in the
    table instead of silently measuring a warm cache as cold.
    """

    def __init__(self) -> None:
        self.works = os.access(DROP_CACHES, os.W_OK)
        self.reason = "" if self.works else f"{DROP_CACHES} is not writable (not root?)"

    def __call__(self) -> bool:
        if not self.works:
            return False
        os.sync()
        try:
            DROP_CACHES.write_text("3\n")
        except OSError as e:
            self.works = False
            self.reason = f"writing {DROP_CACHES} failed: {e.strerror}"
            log.warning("drop_caches: %s; cold figures from now on are marked", self.reason)
            return False
        return True


@dataclass
class ProcSample:
    """One reading of a process: CPU seconds used so far and peak RSS (VmHWM) so far."""

    cpu_s: float
    hwm_mib: float
    rss_mib: float


def proc_sample(pid: int) -> ProcSample | None:
    """CPU (user+system, all threads) and memory of ``pid``; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    cpu = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15 of stat)
    mem = {}
    for line in status.splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            name, value = line.split(":", 1)
            mem[name] = int(value.split()[0]) / 1024
    return ProcSample(cpu, mem.get("VmHWM", 0.0), mem.get("VmRSS", 0.0))


def reset_hwm(pid: int) -> bool:
    """Reset the peak-RSS mark so VmHWM covers only what follows (``echo 5 > clear_refs``)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5\n")
        return True
    except OSError:
        return False


def poll_until(check: Callable[[], object], timeout: float, interval: float = 0.02) -> float | None:
    """Call ``check`` until it is truthy; the perf_counter time it first was, None on timeout."""
    deadline = now() + timeout
    while True:
        if check():
            return now()
        if now() > deadline:
            return None
        time.sleep(interval)


def read_file(path: str | os.PathLike[str], nonce: str | None = None, first: int = 4096,
              bufsize: int = MiB) -> tuple[float, float, int, bool]:
    """Read a whole file sequentially: (seconds to first byte, total seconds, bytes, stamps ok).

    The clock starts before ``open()``: a cold open (lookup, listing, thaw start) is part
    of what a user waits for. The first read asks for ``first`` bytes, then 1 MiB reads
    follow into one reused buffer, so Python allocates nothing per read.
    """
    buf = bytearray(bufsize)
    view = memoryview(buf)
    ok = True
    t0 = now()
    fd = os.open(path, os.O_RDONLY)
    try:
        head = os.read(fd, first)
        ttfb = now() - t0
        if nonce is not None:
            from .data import check

            ok = check(nonce, 0, head)
        total = len(head)
        while True:
            # align to blocks after the small first read so stamps can be checked
            want = bufsize - (total % bufsize)
            n = os.readv(fd, [view[:want]])
            if n == 0:
                break
            if nonce is not None and total % bufsize == 0:
                from .data import check

                ok = ok and check(nonce, total, view[:n])
            total += n
        elapsed = now() - t0
    finally:
        os.close(fd)
    return ttfb, elapsed, total, ok


def ttfb_only(path: str | os.PathLike[str], first: int = 4096) -> float:
    """Seconds from open() to the first ``first`` bytes, then close."""
    t0 = now()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.read(fd, first)
        return now() - t0
    finally:
        os.close(fd)


def run_quiet(cmd: list[str], timeout: float = 120, env: dict[str, str] | None = None,
              check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-800:]}")
    return done
