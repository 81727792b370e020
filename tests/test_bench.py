"""The benchmark script runs and prints its table (scripts/bench.py, scripts/relaybench/).

It runs ``--quick`` once, as a user would, in its own process: moto and the shaping proxy
start inside it, RelayFS mounts through its CLI. Nothing here asserts a timing: figures on
a shared CI machine mean nothing, and the script's job in the suite is only to prove it
works. The peers (rclone, s3fs) get a second, shorter run only where Debian's packages are
already installed, so the suite neither needs them nor installs them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench.py"
GROUPS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "RSS", "IF")
FIGURE = re.compile(r"^-?[\d,]+(\.\d+)?(e-?\d+)? ?(s|ms|µs|MiB/s|MiB|s/GiB|×)( †)?$")


def run_bench(tmp_path: Path, *args: str, timeout: float) -> tuple[str, str, dict]:
    out_json = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out_json), "--workdir", str(tmp_path), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )
    assert done.returncode == 0, f"bench exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr[-6000:]}"
    assert "ERROR" not in done.stdout, done.stdout
    assert "ERROR" not in done.stderr, done.stderr[-6000:]
    return done.stdout, done.stderr, json.loads(out_json.read_text())


def main_table(stdout: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the first table (the one that starts with "| workload |")."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| workload "))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return header, rows


def check_table(stdout: str, systems: list[str], groups: tuple[str, ...], everywhere: str | None) -> None:
    header, rows = main_table(stdout)
    assert header[0] == "workload" and header[-1] == "relayfs vs best peer", header
    assert header[1:-1] == systems, header
    seen = {row[0].split()[0] for row in rows}
    assert seen == set(groups), f"workload rows {sorted(seen)}, expected {sorted(groups)}"
    for row in rows:
        assert len(row) == len(header), row
        for cell in row[1:-1]:
            assert cell == "–" or FIGURE.match(cell), f"not a figure with a unit: {cell!r} in {row}"
    for col, name in enumerate(systems, start=1):
        figures = [row[col] for row in rows if FIGURE.match(row[col])]
        assert figures, f"no figures in the {name} column"
        if name == everywhere:  # the system every row is about has a figure in every row
            missing = [row[0] for row in rows if not FIGURE.match(row[col]) and "(reference)" not in row[0]]
            assert not missing, f"{name} has no figure for: {missing}"


def check_targets(stdout: str) -> None:
    """Every target is printed with this run's figure and a verdict; only the comparison
    with the peers may be unmeasured (no peer ran)."""
    lines = stdout.splitlines()
    start = lines.index("| target | this run | |")
    body = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        body.append([c.strip() for c in line.strip("|").split("|")])
    assert len(body) >= 14, body
    for target, figure, verdict in body:
        assert verdict in ("met", "NOT met", "not measured"), (target, verdict)
        if "rclone" not in target:
            assert verdict != "not measured", f"{target}: {figure}"
            assert re.search(r"[0-9]", figure), (target, figure)


def test_bench_quick_runs_and_prints_every_row(tmp_path: Path) -> None:
    systems = ["native", "boto3", "relayfs"]
    stdout, _, figures = run_bench(tmp_path, "--systems", ",".join(systems), timeout=1200)
    check_table(stdout, systems, GROUPS, everywhere="relayfs")
    assert "Ratios:" in stdout and "cold state:" in stdout
    assert "moto patches" in stdout  # the traps of BENCHMARKS.md: what was done about them
    check_targets(stdout)
    relayfs_notes = stdout[stdout.index("- relayfs: cold state:"):]
    assert re.search(r"through the proxy: [0-9,]+ requests .*; 0 sent `Expect: 100-continue`", relayfs_notes), \
        relayfs_notes[:400]  # every PUT goes without waiting a round trip for "100 Continue"
    assert figures["systems"] == systems and not figures["errors"]
    assert figures["figures"]["W1.close"]["relayfs"]["value"] > 0


@pytest.mark.skipif(not (shutil.which("rclone") and shutil.which("s3fs")),
                    reason="Debian's rclone and s3fs are not installed (scripts/bench.py installs them itself)")
def test_bench_quick_runs_the_peers(tmp_path: Path) -> None:
    systems = ["rclone", "s3fs"]
    stdout, _, figures = run_bench(tmp_path, "--systems", ",".join(systems), "--only", "W1,W2,W3", timeout=900)
    check_table(stdout, systems, ("W1", "W2", "W3"), everywhere=None)
    assert not figures["unavailable"], figures["unavailable"]


def test_pollbench_reports_poll_cost_per_bucket_size() -> None:
    """The poll-cost benchmark runs and prints one row per bucket size; an idle poll is one
    LIST request whatever the size (a count, not a time: nothing here asserts on speed)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "pollbench.py"), "--sizes", "50,400", "--reps", "1"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    rows = [line for line in done.stdout.splitlines() if re.match(r"^\| [0-9,]+ \|", line)]
    assert [r.split("|")[1].strip() for r in rows] == ["50", "400"], done.stdout
    for row in rows:
        idle = row.split("|")[4]
        assert re.fullmatch(r" 1 requests, [0-9]+ ms ", idle), row
        after = row.split("|")[5]
        assert int(after.split()[0]) >= 10 + 2, row  # a LIST, the new events (batched) and the 10 records
    assert "ERROR" not in done.stderr, done.stderr[-4000:]
