"""Figures, the table, the ratios and the JSON file.

Every row names its unit and which way is better; the table prints each figure with its
unit, a second table prints each system's ratio to ``native`` and ``boto3`` (figure ÷
reference), and the last column of the first gives relayfs ÷ the best peer (rclone, s3fs)
with the word "better" or "worse", so no reader has to remember which way a row points.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

PEERS = ("rclone", "s3fs")
MARK = "†"  # the figure needed drop_caches and could not have it


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    better: str  # "lower", "higher", or "" (not ranked)
    group: str


@dataclass
class Figure:
    value: float | None = None
    samples: list[float] = field(default_factory=list)
    marked: bool = False
    error: str | None = None
    note: str = ""


class Results:
    def __init__(self, rows: list[Row], systems: list[str]) -> None:
        self.rows = rows
        self.systems = systems
        self.cells: dict[tuple[str, str], Figure] = {}
        self.notes: list[str] = []
        self.system_notes: dict[str, list[str]] = {s: [] for s in systems}
        self.unavailable: dict[str, str] = {}
        self.proxy: dict[str, dict[str, Any]] = {}
        self.rig_check: dict[str, float] = {}
        self.errors: list[str] = []
        self._by_key = {r.key: r for r in rows}

    def row(self, key: str) -> Row:
        return self._by_key[key]

    def put(self, key: str, system: str, value: float, samples: list[float] | None = None,
            marked: bool = False, note: str = "") -> None:
        if key not in self._by_key:
            raise KeyError(f"unknown row {key!r}")
        self.cells[(key, system)] = Figure(value, list(samples or [value]), marked, None, note)

    def fail(self, group: str, system: str, message: str) -> None:
        """Every row of ``group`` not yet filled for ``system`` shows ERROR."""
        self.errors.append(f"{system} {group}: {message}")
        for r in self.rows:
            if r.group == group and (r.key, system) not in self.cells:
                self.cells[(r.key, system)] = Figure(error=message)

    def note(self, system: str, text: str) -> None:
        self.system_notes.setdefault(system, []).append(text)

    # -- rendering

    def cell(self, key: str, system: str) -> str:
        if system in self.unavailable:
            return "n/a"
        fig = self.cells.get((key, system))
        if fig is None:
            return "–"
        if fig.error is not None:
            return "ERROR"
        assert fig.value is not None
        return fmt(fig.value, self.row(key).unit) + (f" {MARK}" if fig.marked else "")

    def value(self, key: str, system: str) -> float | None:
        fig = self.cells.get((key, system))
        if system in self.unavailable or fig is None or fig.error is not None or fig.value is None:
            return None
        if math.isnan(fig.value):
            return None
        return fig.value

    def versus_peer(self, key: str) -> str:
        row = self.row(key)
        mine = self.value(key, "relayfs")
        if mine is None or not row.better:
            return "–"
        peers = [(p, self.value(key, p)) for p in PEERS if p in self.systems]
        peers = [(p, v) for p, v in peers if v is not None]
        if not peers:
            return "no peer ran"
        pick = min if row.better == "lower" else max
        name, best = pick(peers, key=lambda pv: pv[1])
        if best == 0:
            return f"{name} 0"
        ratio = mine / best
        good = ratio <= 1 if row.better == "lower" else ratio >= 1
        return f"{ratio_fmt(ratio)} {name}, {'better' if good else 'worse'}"

    def ratio_cell(self, key: str, system: str) -> str:
        mine = self.value(key, system)
        if mine is None:
            return "–"
        parts = []
        for ref in ("native", "boto3"):
            if ref == system or ref not in self.systems:
                continue
            base = self.value(key, ref)
            if base:
                parts.append(f"{ratio_fmt(mine / base)} {ref}")
        return ", ".join(parts) or "–"

    def shown_rows(self, groups: set[str]) -> list[Row]:
        return [r for r in self.rows if r.group in groups]

    def table(self, groups: set[str]) -> str:
        header = ["workload", *self.systems, "relayfs vs best peer"]
        body = [[r.label + _arrow(r), *[self.cell(r.key, s) for s in self.systems], self.versus_peer(r.key)]
                for r in self.shown_rows(groups)]
        return _render(header, body)

    def ratio_table(self, groups: set[str]) -> str:
        others = [s for s in self.systems if s != "native"]
        header = ["workload (figure ÷ reference)", *others]
        body = []
        for r in self.shown_rows(groups):
            cells = [self.ratio_cell(r.key, s) for s in others]
            if r.better and any(c != "–" for c in cells):  # rows with no reference figure say nothing here
                body.append([r.label + _arrow(r), *cells])
        return _render(header, body)

    def to_json(self, meta: dict[str, Any]) -> dict[str, Any]:
        return {
            **meta,
            "systems": self.systems,
            "unavailable": self.unavailable,
            "rows": [asdict(r) for r in self.rows],
            "figures": {
                r.key: {s: asdict(self.cells[(r.key, s)]) for s in self.systems if (r.key, s) in self.cells}
                for r in self.rows
            },
            "notes": self.notes,
            "system_notes": self.system_notes,
            "proxy_requests": self.proxy,
            "rig_check": self.rig_check,
            "errors": self.errors,
        }

    def write_json(self, path: str, meta: dict[str, Any]) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(meta), f, indent=2, default=str)


def _arrow(r: Row) -> str:
    return {"lower": " ↓", "higher": " ↑"}.get(r.better, "")


def fmt(v: float, unit: str) -> str:
    if math.isnan(v):
        return "nan"
    a = abs(v)
    if a >= 100:
        s = f"{v:,.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    elif a >= 1:
        s = f"{v:.2f}"
    elif a == 0:
        s = "0"
    else:
        s = f"{v:.2g}" if a < 0.01 else f"{v:.3f}"
    return f"{s}×" if unit == "×" else f"{s} {unit}"


def ratio_fmt(r: float) -> str:
    if r >= 100:
        return f"{r:,.0f}×"
    if r >= 10:
        return f"{r:.1f}×"
    if r >= 0.1:
        return f"{r:.2f}×"
    return f"{r:.2g}×"


def _render(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(widths[i]) for i, h in enumerate(header)) + " |",
             "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"]
    for row in body:
        cells = [c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
