"""The performance targets RelayFS sets itself, each checked against this run's figures.

Every target is a ratio of two figures measured in the same run (or a figure against a
bound derived from the link's settings), printed with "met", "NOT met" or "not measured".
"""

from __future__ import annotations

from dataclasses import dataclass

from .report import PEERS, Results, ratio_fmt


@dataclass
class Check:
    target: str
    figure: str
    met: bool | None  # None: not measured in this run


def _ratio(r: Results, key: str, system: str, ref_key: str, ref_system: str) -> float | None:
    a, b = r.value(key, system), r.value(ref_key, ref_system)
    if a is None or not b:
        return None
    return a / b


def _at_most(target: str, value: float | None, bound: float, what: str) -> Check:
    if value is None:
        return Check(target, "not measured", None)
    return Check(target, f"{ratio_fmt(value)} {what}", value <= bound)


def _at_least(target: str, value: float | None, bound: float, what: str) -> Check:
    if value is None:
        return Check(target, "not measured", None)
    return Check(target, f"{ratio_fmt(value)} {what}", value >= bound)


def checks(r: Results, rtt_ms: float, l1_budget_mib: float, per_conn_mbps: float) -> list[Check]:
    out: list[Check] = []
    behind, compared = [], 0
    for row in r.rows:
        if row.group not in {"W1", "W2", "W3", "W4", "W5", "W6", "W7"} or not row.better:
            continue
        mine = r.value(row.key, "relayfs")
        peers = [v for v in (r.value(row.key, p) for p in PEERS) if v is not None]
        if mine is None or not peers:
            continue
        compared += 1
        best = min(peers) if row.better == "lower" else max(peers)
        if (mine > best) if row.better == "lower" else (mine < best):
            behind.append(row.key)
    if compared:
        figure = f"ahead on {compared - len(behind)} of {compared} rows"
        if behind:
            figure += "; behind on " + ", ".join(behind)
        out.append(Check("ahead of rclone and s3fs on every W1–W7 row", figure, not behind))
    else:
        out.append(Check("ahead of rclone and s3fs on every W1–W7 row", "not measured (no peer ran)", None))
    out.append(_at_most("W1: close() ≤ 1.3× native write + fsync",
                        _ratio(r, "W1.close", "relayfs", "W1.durable", "native"), 1.3, "native write + fsync"))
    out.append(_at_most("W1: the same with L3 unreachable",
                        _ratio(r, "W1.down", "relayfs", "W1.durable", "native"), 1.3, "native write + fsync"))
    bound = 3 * rtt_ms
    for key, what in (("W2.ttfb", "W2"), ("W6.small", "W6 small file"), ("W6.big", "W6 big file")):
        v = r.value(key, "relayfs")
        out.append(Check(f"{what}: time to first byte ≤ 3 round trips ({bound:g} ms)",
                         "not measured" if v is None else f"{v:.0f} ms = {v / rtt_ms:.1f} round trips",
                         None if v is None else v <= bound))
    out.append(_at_most("W6: first byte the same for the small and the big file (≤ 1.25×)",
                        _ratio(r, "W6.big", "relayfs", "W6.small", "relayfs"), 1.25, "big ÷ small"))
    out.append(_at_least("W2: cold sequential ≥ 1.5× one boto3 GET stream",
                         _ratio(r, "W2.seq", "relayfs", "W2.seq", "boto3"), 1.5, "boto3"))
    wan = r.value("W2w.seq", "relayfs")
    if wan is not None and per_conn_mbps:
        one_stream = per_conn_mbps * 1e6 / 2**20  # what one GET stream can get on that link
        out.append(_at_least(f"W2, link capped at {per_conn_mbps:g} MB/s per connection: cold sequential "
                             "≥ 1.5× one GET stream", wan / one_stream, 1.5, "one stream's cap"))
    out.append(_at_least("W3: warm ≥ 0.9× a FUSE file in the kernel's page cache",
                         _ratio(r, "W3.warm", "relayfs", "W3.fuse", "native"), 0.9, "the FUSE reference"))
    out.append(_at_least("W3: from L2 after drop_caches ≥ 0.5× native",
                         _ratio(r, "W3.drop", "relayfs", "W3.drop", "native"), 0.5, "native"))
    out.append(_at_most("W5: warm random 4 KiB p50 ≤ 2× native",
                        _ratio(r, "W5.p50", "relayfs", "W5.p50", "native"), 2.0, "native"))
    out.append(_at_least("upload to L3 ≥ 0.9× boto3's transfer manager",
                         _ratio(r, "W1.upload", "relayfs", "W1.upload", "boto3"), 0.9, "boto3"))
    rss = r.value("RSS.peak", "relayfs")
    limit = l1_budget_mib + 64
    out.append(Check(f"daemon RSS ≤ L1 budget + 64 MiB ({limit:g} MiB)",
                     "not measured" if rss is None else f"{rss:.0f} MiB", None if rss is None else rss <= limit))
    for key, what in (("IF.stat_ratio", "stat"), ("IF.read_ratio", "4 KiB read of a cached file")):
        v = r.value(key, "relayfs")
        out.append(_at_most(f"{what} p99 during a big upload and thaw ≤ 2× idle", v, 2.0, "idle"))
    return out


def render(items: list[Check]) -> str:
    lines = ["| target | this run | |", "|---|---|---|"]
    for c in items:
        verdict = "not measured" if c.met is None else ("met" if c.met else "NOT met")
        lines.append(f"| {c.target} | {c.figure} | {verdict} |")
    return "\n".join(lines)
