"""Flags and the order of things: rig up, each system through each workload, one table.

Progress goes to stderr through ``logging``; the table and its notes go to stdout. The
exit status is 0 when every workload of every system that could run gave figures, 1 when
one of them failed (its cells say ERROR), 2 for bad flags or when the rig would not start.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
import time
import traceback
import uuid
from typing import Callable

from . import systems as systems_mod
from . import targets
from .measure import DropCaches
from .report import MARK, Results
from .rig import Rig, make_workdir
from .systems import ALL_SYSTEMS, System
from .workloads import Ctx, Sizes, rows, run_big, run_read, run_rig_check, run_w1, run_w4, run_w6, run_w7

log = logging.getLogger("relaybench")

GROUPS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "RSS", "IF")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench.py",
        description="RelayFS side by side with native disk, boto3, rclone and s3fs, on moto behind a shaping proxy.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes and one run each: proves the script works")
    p.add_argument("--only", default="", help=f"comma-separated workloads to run, of {','.join(GROUPS)} [all]")
    p.add_argument("--systems", default=",".join(ALL_SYSTEMS), help="comma-separated systems [%(default)s]")
    p.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay per chunk [%(default)s]")
    p.add_argument("--bandwidth-mbps", type=float, default=100.0,
                   help="MB/s per direction, shared by all connections; 0: none [%(default)s]")
    p.add_argument("--per-conn-mbps", type=float, default=25.0,
                   help="MB/s per connection for the extra W2 rows on a WAN-like link; 0: skip them [%(default)s]")
    p.add_argument("--connect-rtt", action="store_true", help="make each new connection pay one round trip")
    p.add_argument("--size-mib", type=int, default=None, help="file size of W1, W2, W3, W5 [256; --quick: 16]")
    p.add_argument("--reps", type=int, default=None, help="runs per figure, median shown [3; --quick: 1]")
    p.add_argument("--json", metavar="FILE", help="also save every figure and sample here")
    p.add_argument("--workdir", help="where temp dirs go [system temp dir]")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    p.add_argument("--relayfs-log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    args.groups = _pick(args.only, GROUPS, "workload", p) if args.only else list(GROUPS)
    args.system_list = _pick(args.systems, ALL_SYSTEMS, "system", p)
    return args


def _pick(text: str, allowed: tuple[str, ...], what: str, p: argparse.ArgumentParser) -> list[str]:
    want = [w.strip() for w in text.split(",") if w.strip()]
    lookup = {a.lower(): a for a in allowed}
    bad = [w for w in want if w.lower() not in lookup]
    if bad or not want:
        p.error(f"unknown {what} {', '.join(bad) or '(none)'}; choose from {', '.join(allowed)}")
    chosen = {lookup[w.lower()] for w in want}
    return [a for a in allowed if a in chosen]  # the table's order, whatever order was asked


def relayfs_transfer_settings() -> tuple[int, int]:
    """RelayFS's multipart part size and parts in flight for an s3:// store, from its own config."""
    from relayfs.config import Config

    cfg = Config(l3="s3://bench")
    return cfg.part_size, cfg.transfer_threads


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sizes = Sizes.quick(args.size_mib) if args.quick else Sizes(size=(args.size_mib or 256) * 1024 * 1024)
    if args.reps:
        sizes.reps = args.reps
    part, threads = relayfs_transfer_settings()
    results = Results(rows(sizes, args.per_conn_mbps, part, threads), args.system_list)
    drop = DropCaches()
    workdir = make_workdir(args.workdir)
    log.info("work directory %s", workdir)
    started = time.time()
    rig = Rig(args.delay_ms, args.bandwidth_mbps, args.per_conn_mbps, args.connect_rtt, workdir)
    check_lines: list[str] = []
    try:
        try:
            rig.start()
        except Exception as e:
            log.error("the rig would not start: %s", e)
            return 2
        ctx = Ctx(rig, sizes, drop, results, part, threads, uuid.uuid4().hex[:6])
        check_lines = run_rig_check(ctx)
        for line in check_lines:
            log.info("%s", line)
        for name in args.system_list:
            system = systems_mod.make(name, rig, workdir, args.relayfs_log_level)
            why = system.unavailable()
            if why:
                results.unavailable[name] = why
                log.warning("%s cannot run: %s", name, why)
                continue
            if getattr(system, "version", None):
                results.note(name, f"version: {system.version}")
            run_system(ctx, system, args.groups)
    finally:
        rig.close()
        if args.keep:
            log.info("work directory kept: %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.time() - started
    print_report(args, results, rig, drop, check_lines, sizes, elapsed)
    if args.json:
        results.write_json(args.json, {
            "command": "scripts/bench.py " + shlex.join(sys.argv[1:] if argv is None else argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "seconds": round(elapsed, 1),
            "sizes": vars(sizes),
            "link": {"delay_ms": args.delay_ms, "bandwidth_mbps": args.bandwidth_mbps,
                     "per_conn_mbps": args.per_conn_mbps, "connect_rtt": args.connect_rtt},
            "drop_caches": drop.works,
            "relayfs_part_size": part,
            "relayfs_transfer_threads": threads,
        })
        log.info("figures saved to %s", args.json)
    return 1 if results.errors else 0


def run_system(ctx: Ctx, system: System, groups: list[str]) -> None:
    """Each selected workload for one system; a failure fills its rows with ERROR and moves on."""
    want = set(groups)
    steps: list[tuple[str, list[str], Callable[[], None]]] = [
        ("W1", ["W1"], lambda: run_w1(ctx, system)),
        ("read", ["W2", "W3", "W5"], lambda: run_read(ctx, system, want)),
        ("W4", ["W4"], lambda: run_w4(ctx, system)),
        ("W6", ["W6"], lambda: run_w6(ctx, system)),
        ("W7", ["W7"], lambda: run_w7(ctx, system)),
        ("big", ["RSS", "IF"], lambda: run_big(ctx, system)),
    ]
    assert ctx.rig.proxy is not None
    for label, covers, step in steps:
        if not want.intersection(covers):
            continue
        if label == "big" and not system.has_daemon:
            continue
        log.info("%s: %s", system.name, label)
        ctx.rig.proxy.reset()
        t0 = time.monotonic()
        try:
            step()
        except Exception as e:
            log.error("%s %s failed: %s\n%s", system.name, label, e, traceback.format_exc())
            for g in covers:
                ctx.results.fail(g, system.name, f"{type(e).__name__}: {e}")
        finally:
            ctx.results.proxy.setdefault(system.name, {})[label] = ctx.rig.proxy.stats()
            log.info("%s: %s took %.0f s", system.name, label, time.monotonic() - t0)
    for problem in system.problems:
        ctx.results.note(system.name, problem)


def _requests_line(stats: dict[str, dict]) -> str:
    total: dict[str, int] = {}
    conns = expect = closes = 0
    for s in stats.values():
        for method, n in s["requests"].items():
            total[method] = total.get(method, 0) + n
        conns += s["connections"]
        expect += s["expect_100"]
        closes += s["conn_close_answers"]
    n = sum(total.values())
    methods = ", ".join(f"{m} {c:,}" for m, c in sorted(total.items(), key=lambda kv: -kv[1]))
    return (f"{n:,} requests ({methods}) over {conns:,} connections; {expect:,} sent "
            f"`Expect: 100-continue`; {closes:,} answers closed the connection")


def print_report(args: argparse.Namespace, results: Results, rig: Rig, drop: DropCaches,
                 check_lines: list[str], sizes: Sizes, elapsed: float) -> None:
    shown = set(args.groups)
    out = sys.stdout
    cmd = "scripts/bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out.write(f"# RelayFS benchmark: {cmd}\n\n")
    out.write(f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}, {elapsed / 60:.1f} min; "
              f"medians of {sizes.reps} run(s) unless noted; ↓ lower is better, ↑ higher is better.\n")
    for line in rig.notes + check_lines:
        out.write(f"- {line}\n")
    out.write("\n")
    out.write(results.table(shown) + "\n\n")
    ratios = results.ratio_table(shown)
    if ratios.count("\n") > 1:
        out.write("Ratios: each figure ÷ the same row's native and boto3 figures.\n\n")
        out.write(ratios + "\n\n")
    else:
        out.write("Ratios: none (no native or boto3 figure in the rows run).\n\n")
    if "relayfs" in results.systems:
        from relayfs.config import Config

        out.write("Targets: relayfs's figures against the goals it sets itself.\n\n")
        out.write(targets.render(targets.checks(results, 2 * args.delay_ms, Config().l1_bytes / 2**20, args.per_conn_mbps)) + "\n\n")
    out.write("Notes:\n")
    if not drop.works:
        out.write(f"- drop_caches: could not drop the page cache ({drop.reason}); figures marked {MARK} "
                  "were measured with whatever the page cache held.\n")
    else:
        out.write("- drop_caches: `sync; echo 3 > /proc/sys/vm/drop_caches` before every cold figure.\n")
    out.write("- boto3: PUTs without `Expect: 100-continue` (botocore adds it to file-like bodies; it costs "
              "one more round trip per PUT); W1 uses the transfer manager with RelayFS's part size and parts "
              "in flight; W2 reads one GET stream (the link's limit for one stream), the per-connection-cap "
              "W2 rows use the transfer manager's parallel ranged GETs.\n")
    out.write("- W1 upload row: relayfs from close() to durable (its upload runs after close); peers are not "
              "shown there because their close-to-durable time includes their own write-back delay (rclone: 5 s).\n")
    out.write("- IF: stat of the versioned file's folder (relayfs) or of the file (peers), and a 4 KiB pread of "
              "a 1 MiB cached file after POSIX_FADV_DONTNEED so it reaches the daemon; busy = from the writer's "
              "close() (when the cold read starts) until both the upload is durable and the cold read is done. "
              "A peer that uploads inside close() (s3fs) has only its cold read running then.\n")
    out.write("- W3 after drop_caches: relayfs may still answer from L1 (RAM, in the daemon); that is its cache.\n")
    out.write("- W3 FUSE reference: a one-file pyfuse3 filesystem serving the same bytes from memory with "
              "`keep_cache` and 60 s timeouts (`relaybench/fuseref.py`): the ceiling for any FUSE mount.\n")
    out.write("- IF stat: relayfs lets the kernel keep a folder's attributes for 1 s, so most of these stats are "
              "answered by the kernel without reaching the daemon, idle or busy.\n")
    for name in results.systems:
        if name in results.unavailable:
            out.write(f"- {name}: cannot run here: {results.unavailable[name]}\n")
            continue
        cold = systems_mod.CLASSES[name].cold_how
        out.write(f"- {name}: cold state: {cold}.\n")
        if name in results.proxy:
            out.write(f"  - through the proxy: {_requests_line(results.proxy[name])}.\n")
        for note in results.system_notes.get(name, []):
            out.write(f"  - {note}\n")
    if results.errors:
        out.write("\nFailures:\n")
        for e in results.errors:
            out.write(f"- {e}\n")
    out.flush()


def entry() -> None:
    sys.exit(main())
