"""The ``relayfs`` command: parsing and printing only; the work is in the daemon."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, NoReturn

import click

from . import config as config_module
from . import control
from .config import MASK, Config, ConfigError, default_config_file, load_config

ACTIVE = ("queued", "running", "retrying")  # job states that are still pending
BAR_WIDTH = 20


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"relayfs: {message}", err=True)
    sys.exit(code)


def _config(config_file: str | None, **flags: Any) -> Config:
    try:
        return load_config(config_file, flags)
    except ConfigError as e:
        _fail(str(e), 2)
        raise AssertionError("unreachable")


def _daemon(path: str) -> tuple[Path, str, str]:
    """(mount point, path inside it, control socket) for a path in a mount."""
    try:
        mnt, rel = control.find_mount(path)
        return mnt, rel, control.socket_of(mnt)
    except control.ControlError as e:
        _fail(str(e))
        raise AssertionError("unreachable")


def _ask(sock: str, op: str, timeout: float | None = 30.0, **args: Any) -> dict[str, Any]:
    try:
        return control.request(sock, op, timeout=timeout, **args)
    except control.ControlError as e:
        _fail(str(e))
        raise AssertionError("unreachable")


def _n(count: int, word: str) -> str:
    """``1 version``, ``2 versions``."""
    return f"{count} {word}" + ("" if count == 1 else "s")


def _size(n: float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _when(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")


def parse_duration(text: str) -> float:
    """Seconds in "30d", "12h", "90m", "45s", "2w" or a sum like "1h30m" (m is minutes)."""
    s = text.strip().lower().replace(" ", "")
    if not _DURATION_RE.fullmatch(s):
        raise ValueError(f"{text!r} is not a duration (try 30d, 12h, 90m, 45s or 1h30m)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhdw])", s))


class _Duration(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


class _Commands(click.Group):
    """The command group. A usage error is one line on stderr with exit status 2, like
    every other failure of this CLI, so scripts and logs get one readable line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise  # a bare group: its help, as click prints it
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            _fail(f"{e.format_message()} (see: {where} --help)", e.exit_code)


_Commands.group_class = _Commands  # subgroups (``config``) behave the same


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """RelayFS: a tiered, versioned filesystem over Storj or any S3 store.

    Every file is a folder of immutable versions (NAME/v1, NAME/v2, NAME/latest).
    Writes land on local disk and return at close(); uploads run in the background.
    Commands other than mount and config find their mount from PATH (default: the
    current directory), which may be any path inside the mount.

    Exit status: 0 on success, 1 when the command failed or found a problem, 2 for a
    usage error; each command's --help says what else its codes mean.

    \b
    Examples:
      relayfs mount ~/relay --l3 storj://my-bucket
      relayfs status ~/relay
      relayfs jobs --follow ~/relay
    """


_SETTING_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--cache-dir", help="L2 cache directory [default: ~/.cache/relayfs/<store>]"),
    click.option("--l3", help="s3://BUCKET[/PREFIX], storj://BUCKET[/PREFIX] or file:///PATH [default: a local directory]"),
    click.option("--s3-endpoint", help="S3 endpoint URL for s3:// (e.g. http://127.0.0.1:9000)"),
    click.option("--s3-region", help="S3 region name"),
    click.option("--part-size", help="multipart part size, e.g. 8MiB"),
    click.option("--upload-concurrency", type=int, help="uploads running at once"),
    click.option("--l1-bytes", help="RAM cache budget, e.g. 256MiB"),
    click.option("--l2-bytes", help="disk cache budget, e.g. 20GiB"),
    click.option("--allow-other", is_flag=True, default=None, help="let other users see the mount"),
    click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)),
    click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config file"),
]


def _settings_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The flags that change settings, shared by ``mount`` and ``config show`` so that
    ``config show`` with a mount's flags shows what that mount uses."""
    for option in reversed(_SETTING_OPTIONS):
        fn = option(fn)
    return fn


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@_settings_options
@click.option(
    "--config-if-exists", type=click.Path(dir_okay=False), help="TOML config file, read only if it exists (for service units)"
)
@click.option("--foreground", "-f", is_flag=True, help="stay in the foreground and log to stderr")
def mount(mountpoint: str, config_file: str | None, config_if_exists: str | None, foreground: bool, **flags: Any) -> None:
    """Mount RelayFS at MOUNTPOINT.

    Returns once the mount is ready (or fails with the reason). Settings come from
    --config (or ~/.config/relayfs/config.toml), then RELAYFS_* variables, then flags;
    `relayfs config show` with the same flags prints what they add up to. Exits 0 once
    mounted, 1 when the mount failed, 2 for a bad setting.

    \b
    Examples:
      relayfs mount ~/relay                                  # local store, no account
      relayfs mount ~/relay --l3 storj://my-bucket           # Storj's S3 gateway
      relayfs mount ~/relay --l3 s3://b --s3-endpoint http://127.0.0.1:9000
    """
    if config_file is None and config_if_exists and os.path.exists(config_if_exists):
        config_file = config_if_exists
    cfg = _config(config_file, **flags)
    from . import daemon, engine

    if foreground:
        daemon.setup_logging(cfg.log_level)
        sys.exit(daemon.run(cfg, mountpoint))
    cfg.cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    holder = engine.cache_in_use(cfg.cache)
    if holder is not None:  # say it here, not in the other mount's log
        _fail(f"cache dir {cfg.cache} is in use by another RelayFS mount (pid {holder})")
    log_path = cfg.cache / "daemon.log"
    args = [sys.executable, "-m", "relayfs", "mount", "--foreground", os.path.abspath(mountpoint)]
    if config_file:
        args += ["--config", os.path.abspath(config_file)]
    for name, value in flags.items():
        if value is not None and value is not False:
            opt = "--" + name.replace("_", "-")
            args += [opt] if value is True else [opt, str(value)]
    r, w = os.pipe()
    env = dict(os.environ, RELAYFS_READY_FD=str(w))
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(w,), env=env, start_new_session=True
        )
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        message = pipe.readline().decode().strip()
    if message == "ready":
        click.echo(f"mounted {cfg.l3} at {mountpoint} (log: {log_path})")
        return
    proc.wait(timeout=30)
    _fail(message.removeprefix("error: ") if message else f"the daemon exited with status {proc.returncode}; see {log_path}")


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--timeout", default=120.0, show_default=True, help="seconds to wait for the daemon to exit")
def umount(mountpoint: str, timeout: float) -> None:
    """Unmount MOUNTPOINT and wait for its daemon to exit.

    Pending uploads are kept and resume at the next mount. A dead mount
    ("Transport endpoint is not connected") is cleaned up too. Exits 0 once the mount
    is gone and its daemon has exited, 1 otherwise.

    \b
    Examples:
      relayfs umount ~/relay
      relayfs wait ~/relay && relayfs umount ~/relay   # after the uploads are done
    """
    path = os.path.abspath(mountpoint)
    pid = None
    try:
        pid = control.request(control.socket_of(Path(path)), "status", timeout=5, probe=False)["pid"]
    except control.ControlError:
        pass
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u", path] if tool else ["umount", path]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["unmount failed"])[-1]
        _fail(reason)
    if pid is not None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            _fail(f"unmounted, but the daemon (pid {pid}) is still running after {timeout:.0f}s")
    click.echo(f"unmounted {path}")


def _share(used: int, budget: int) -> str:
    pct = 100.0 * used / budget if budget else 0.0
    return f"{_size(used)} of {_size(budget)} ({pct:.1f}%)"


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if days else f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s"


@main.command()
@click.argument("path", default=".", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON")
def status(path: str, as_json: bool) -> None:
    """Show the state of the mount holding PATH: tiers, jobs, L3.

    L1 (RAM) and L2 (disk) usage against their budgets; pending upload bytes; jobs
    queued, running, retrying and failed; and whether L3 answers now, measured with one
    small request (its round trip is the latency shown; no answer within 5 s counts as
    unreachable, with the reason). Exits 0 when the mount answered, whatever it reports,
    and 1 when PATH is not in a mount or its daemon cannot be reached.

    \b
    Examples:
      relayfs status ~/relay
      relayfs status --json ~/relay | jq .l3_reachable
    """
    _, _, sock = _daemon(path)
    s = _ask(sock, "status")
    if as_json:
        _print_json(s)
        return
    if s["l3_reachable"] is None:
        reach = "not contacted yet"
    elif s["l3_reachable"]:
        reach = "reachable" + (f", latency {s['l3_latency_ms']:.0f} ms" if s.get("l3_latency_ms") is not None else "")
    else:
        reach = f"unreachable ({s['l3_error']})"
    click.echo(f"mount      {s['mountpoint']} (pid {s['pid']}, up {_uptime(s['uptime_seconds'])})")
    click.echo(f"L3         {s['l3']}: {reach}")
    click.echo(f"L1 (RAM)   {_share(s['l1_used'], s['l1_budget'])}")
    click.echo(f"L2 (disk)  {_share(s['l2_used'], s['l2_budget'])} in {s['cache_dir']}")
    click.echo(f"namespace  {s['folders']} folders, {s['files']} files, {s['versions']} versions")
    click.echo(
        f"jobs       {s['jobs_queued']} queued, {s['jobs_running']} running, {s['jobs_retrying']} retrying,"
        f" {s['jobs_failed']} failed; {_size(s['pending_bytes'])} pending"
    )


def _jobs_under(path: str) -> tuple[str, list[dict[str, Any]]]:
    _, rel, sock = _daemon(path)
    return sock, _ask(sock, "jobs", path=rel)["jobs"]


def _first_failure(rows: list[dict[str, Any]]) -> str | None:
    failed = [j for j in rows if j["state"] == "failed"]
    return _failure(failed[0], len(failed)) if failed else None


def _failure(first: dict[str, Any], count: int) -> str:
    more = f" (and {count - 1} more failed)" if count > 1 else ""
    return f"job {first['id']} ({first['path']}) failed: {first['last_error']}{more}"


def _amount(done: int, total: int) -> str:
    """``1.5/4.0 MiB``, or ``512.0 KiB/4.0 MiB`` when the units differ."""
    a, b = _size(done), _size(total)
    return f"{a.split()[0]}/{b}" if a.split()[1] == b.split()[1] else f"{a}/{b}"


def _progress_line(
    head: str, frac: float, tail: str, path: str, extra: str, width: int | None, longest: int = 30
) -> str:
    """``head [####----] tail  path extra``; with a terminal ``width`` it fits one line: the
    bar shrinks on a narrow terminal, then ``extra`` is cut at its end and ``path`` at its
    start (the file name and version are its informative end). ``longest`` is the longest
    path of the frame, so that every line of it gets the same bar."""
    bar = BAR_WIDTH
    if width is not None:
        fixed = len(head) + len(tail) + 6  # the spaces and brackets around the bar
        bar = max(8, min(BAR_WIDTH, width - 1 - fixed - min(longest, 50)))
        room = max(0, width - 1 - fixed - bar)
        if len(path) > room:
            path, extra = ("..." + path[len(path) - room + 3:] if room > 3 else ""), ""
        extra = extra[: room - len(path)]
    filled = int(round(min(1.0, max(0.0, frac)) * bar))
    return f"{head} [{'#' * filled}{'-' * (bar - filled)}] {tail}  {path}{extra}".rstrip()


def _job_name(j: dict[str, Any]) -> str:
    """A job's path, with its kind in front unless it is an upload."""
    return j["path"] if j["kind"] == "upload" else f"{j['kind']} {j['path']}"


class _Follow:
    """``relayfs jobs --follow``: what was drawn and reported between two polls.

    Jobs that finish while it runs get one permanent line (done or failed); the jobs
    still pending and a totals line form the live area, redrawn in place on a terminal
    (ANSI cursor-up and clear) and, when stdout is a pipe or a file, printed as plain
    lines whenever a job's state or progress changed.
    """

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.drawn = 0  # lines of the live area now on the terminal
        self.finished: set[int] = set()  # finished jobs reported, or finished before we started
        self.tracked: dict[int, dict[str, Any]] = {}  # jobs pending at some point while following
        self.sample: dict[int, tuple[float, int]] = {}  # id -> (time, bytes done) of the last poll
        self.rates: dict[int, float] = {}  # id -> bytes per second, smoothed
        self.printed: dict[Any, Any] = {}  # pipe mode: what each line said last
        self.started = False
        self.longest = 30  # the longest job name of the frame being drawn

    def update(self, rows: list[dict[str, Any]], now: float) -> tuple[list[str], list[dict[str, Any]]]:
        """Take one poll; returns the permanent lines to print and the pending jobs."""
        if not self.started:
            self.finished = {j["id"] for j in rows if j["state"] not in ACTIVE}
            self.started = True
        events: list[str] = []
        pending: list[dict[str, Any]] = []
        for j in rows:
            jid = j["id"]
            if j["state"] in ACTIVE:
                pending.append(j)
                self.tracked[jid] = j
                last = self.sample.get(jid)
                if last is not None and now > last[0] and j["state"] == "running":
                    rate = max(0.0, (j["bytes_done"] - last[1]) / (now - last[0]))
                    self.rates[jid] = rate if jid not in self.rates else 0.5 * self.rates[jid] + 0.5 * rate
                elif j["state"] != "running":
                    self.rates.pop(jid, None)
                self.sample[jid] = (now, j["bytes_done"])
            elif jid not in self.finished:
                self.finished.add(jid)
                self.tracked[jid] = j
                self.rates.pop(jid, None)
                if j["state"] == "failed":
                    events.append(f"failed {j['path']}: {j['last_error']}")
                else:
                    what = f"upload, {_size(j['bytes_total'])}" if j["kind"] == "upload" else j["kind"]
                    events.append(f"done   {j['path']} ({what})")
        return events, pending

    def job_line(self, j: dict[str, Any], width: int | None) -> str:
        rate = self.rates.get(j["id"])
        speed = f"{_size(rate)}/s" if rate is not None else ""
        total = j["bytes_total"]
        amount = _amount(j["bytes_done"], total) if total else ""
        frac = min(1.0, j["bytes_done"] / total) if total else 0.0
        path = _job_name(j)
        extra = f" (attempt {j['attempts']}: {j['last_error']})" if j["state"] == "retrying" and j["last_error"] else ""
        head = f"{j['id']:>5} {j['state']:<8}"
        tail = f"{j['percent']:>5.1f}% {amount:>15} {speed:>10}"
        return _progress_line(head, frac, tail, path, extra, width, self.longest)

    def totals(self, pending: list[dict[str, Any]], width: int | None) -> str:
        rows = list(self.tracked.values())
        total = sum(j["bytes_total"] for j in rows)
        done = sum(j["bytes_done"] for j in rows)
        states = [j["state"] for j in pending]
        n_done = sum(1 for j in rows if j["state"] == "done")
        n_failed = sum(1 for j in rows if j["state"] == "failed")
        frac = done / total if total else (0.0 if pending else 1.0)
        speed = f"{_size(sum(self.rates.get(j['id'], 0.0) for j in pending))}/s"
        counted = [(states.count(s), s) for s in ("running", "retrying", "queued")] + [(n_done, "done"), (n_failed, "failed")]
        counts = ", ".join(f"{n} {s}" for n, s in counted if n)  # the nonzero ones: it must fit a terminal's line
        tail = f"{100.0 * frac:>5.1f}% {_amount(done, total):>15} {speed:>10}"
        return _progress_line(f"{'':>5} {'total':<8}", frac, tail, "", counts, width, self.longest)

    def draw(self, events: list[str], pending: list[dict[str, Any]]) -> None:
        out: list[str] = []
        if self.tty:
            width, height = shutil.get_terminal_size((100, 24))
            if self.drawn:
                out.append(f"\x1b[{self.drawn}A\r\x1b[J")  # back to the live area's top, clear it
            out += [e + "\n" for e in events]
            self.longest = max((len(_job_name(j)) for j in pending), default=0)
            live = [self.job_line(j, width) for j in pending]
            room = max(1, height - 2)
            if len(live) > room:
                live = live[: room - 1] + [f"      ... and {_n(len(live) - room + 1, 'more job')}"]
            live.append(self.totals(pending, width))
            out += [line[: width - 1] + "\n" for line in live]
            self.drawn = len(live)
        else:
            out += [e + "\n" for e in events]
            for j in pending:
                key = (j["state"], j["bytes_done"], j["attempts"])
                if self.printed.get(j["id"]) != key:
                    self.printed[j["id"]] = key
                    out.append(self.job_line(j, None) + "\n")
            if out or "totals" not in self.printed:
                self.printed["totals"] = True
                out.append(self.totals(pending, None) + "\n")
        click.echo("".join(out), nl=False)

    def finish(self, rows: list[dict[str, Any]]) -> str:
        """Clear the live area; the closing summary line."""
        if self.tty and self.drawn:
            click.echo(f"\x1b[{self.drawn}A\r\x1b[J", nl=False)
            self.drawn = 0
        done = [j for j in self.tracked.values() if j["state"] == "done"]
        failed = sum(1 for j in rows if j["state"] == "failed")
        if not self.tracked:
            return "nothing pending" + (f"; {failed} failed" if failed else "")
        size = _size(sum(j["bytes_total"] for j in done))
        return f"nothing pending: {_n(len(done), 'job')} done ({size})" + (f", {failed} failed" if failed else "")


def _follow(path: str, interval: float) -> None:
    _, rel, sock = _daemon(path)
    view = _Follow(sys.stdout.isatty())
    while True:
        rows = _ask(sock, "jobs", path=rel)["jobs"]
        events, pending = view.update(rows, time.monotonic())
        if not pending:
            if events:
                view.draw(events, [])
            click.echo(view.finish(rows))
            failure = _first_failure(rows)
            if failure:
                _fail(failure)
            return
        view.draw(events, pending)
        time.sleep(interval)


@main.command()
@click.argument("path", default=".", type=click.Path())
@click.option("--follow", "-f", is_flag=True, help="draw live progress until nothing is pending")
@click.option(
    "--interval", type=click.FloatRange(min=0.05), default=0.5, show_default=True, metavar="SECONDS",
    help="time between updates with --follow",
)
def jobs(path: str, follow: bool, interval: float) -> None:
    """List background jobs (uploads, deletes, renames) under PATH.

    Each job is shown with its id, kind, state (queued, running, retrying, done,
    failed), progress, attempts and last error; finished jobs stay listed for a while.
    With --follow it draws a progress bar per pending job (bytes done of total, rate)
    and a totals line, redrawn in place on a terminal and printed as plain lines when
    they change otherwise, and exits once nothing under PATH is pending: 0 when no job
    there has failed, 1 when one has (like `relayfs wait`) or the mount went away.

    \b
    Examples:
      relayfs jobs ~/relay                    # every job of the mount
      relayfs jobs ~/relay/reports            # jobs of files under reports/
      relayfs jobs --follow ~/relay           # live progress bars until all are done
      relayfs jobs -f --interval 2 ~/relay > upload.log
    """
    if follow:
        _follow(path, interval)
        return
    _, rows = _jobs_under(path)
    if not rows:
        click.echo("no jobs")
        return
    click.echo(f"{'ID':>6}  {'KIND':<7} {'STATE':<9} {'PROGRESS':>8}  {'ATTEMPTS':>8}  PATH")
    for j in rows:
        err = f"  ({j['last_error']})" if j["last_error"] else ""
        click.echo(f"{j['id']:>6}  {j['kind']:<7} {j['state']:<9} {j['percent']:>7.1f}%  {j['attempts']:>8}  {j['path']}{err}")


@main.command()
@click.argument("path", default=".", type=click.Path())
@click.option("--timeout", type=float, default=None, help="give up after this many seconds (exit 2)")
def wait(path: str, timeout: float | None) -> None:
    """Block until every job under PATH is done (durable in L3).

    Exits 0 when all are done, 1 if one failed (or PATH is not in a mount), 2 on timeout.

    \b
    Examples:
      relayfs wait ~/relay                   # everything of the mount
      relayfs wait ~/relay/reports/q3.pdf    # one file's uploads
      relayfs wait --timeout 600 ~/relay && relayfs umount ~/relay
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    _, rel, sock = _daemon(path)
    while True:
        ans = _ask(sock, "pending", path=rel)
        if ans["failed"]:
            _fail(_failure(ans["failed"][0], ans["failed_count"]))
        if ans["unfinished"] == 0:
            return
        if deadline is not None and time.monotonic() > deadline:
            _fail(f"{ans['unfinished']} jobs still unfinished after {timeout:.0f}s", 2)
        time.sleep(0.2)


@main.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print the versions as JSON")
def versions(path: str, as_json: bool) -> None:
    """List the versions of the versioned file at PATH.

    One row per version, oldest first: its number, exact size in bytes, commit time,
    the first 12 hex digits of its SHA-256, its state (pending, uploading, durable) and
    the tiers holding its bytes now (L1, L2, L3). PATH may also name one of its versions
    or latest. Exits 0, or 1 when PATH is not a versioned file in a mount.

    \b
    Examples:
      relayfs versions ~/relay/reports/q3.pdf
      relayfs versions --json q3.pdf | jq '.versions[-1].sha256'
    """
    _, rel, sock = _daemon(path)
    ans = _ask(sock, "versions", path=rel)
    if as_json:
        _print_json({"path": "/" + ans["path"], "versions": ans["versions"]})
        return
    click.echo(f"{'VERSION':<8} {'SIZE':>10}  {'COMMITTED':<19}  {'SHA256':<12}  {'STATE':<9}  TIER")
    for v in ans["versions"]:
        click.echo(
            f"v{v['version']:<7} {v['size']:>10}  {_when(v['mtime_ns']):<19}  {v['sha256'][:12]:<12}  {v['state']:<9}  {v['tier']}"
        )


@main.command()
@click.argument("path", type=click.Path())
@click.argument("version")
def rollback(path: str, version: str) -> None:
    """Commit a new version of PATH equal to VERSION (e.g. v2), uploading no data.

    The new version shares the old one's bytes, which are already in L3 (or on their way
    there): only a small version record is written. Same as `cp NAME/vK NAME/latest`,
    without reading the bytes. Exits 0 once committed, 1 when PATH or VERSION does not
    exist.

    \b
    Examples:
      relayfs rollback ~/relay/reports/q3.pdf v2
      relayfs rollback q3.pdf 2             # a bare number works too
    """
    _, rel, sock = _daemon(path)
    ans = _ask(sock, "rollback", path=rel, version=version)
    click.echo(f"{path}: committed v{ans['version']} equal to {version if version.startswith('v') else 'v' + version}")


@main.command()
@click.argument("path", type=click.Path())
@click.option("--keep", type=click.IntRange(min=1), metavar="N", help="keep the N newest versions of each file")
@click.option(
    "--older-than", type=_Duration(), metavar="DURATION",
    help="remove only versions committed more than DURATION ago: 30d, 12h, 90m, 45s, 2w, 1h30m",
)
@click.option("--dry-run", "-n", is_flag=True, help="list what would be removed and change nothing")
def prune(path: str, keep: int | None, older_than: float | None, dry_run: bool) -> None:
    """Remove old versions of the file at PATH, or of every file under the folder PATH.

    This is RelayFS's only bulk delete. Give --keep N, --older-than DURATION or both: a
    version is removed only if every rule given allows it, that is, it is not among the
    N newest and it was committed more than DURATION ago (as restic keeps a snapshot
    that any of its keep rules keeps). A file's newest version is never removed, so
    latest never changes. Removed versions go as `rm NAME/vK` would: the deletes reach
    L3 as background jobs (see `relayfs wait`), and their numbers are never reused.

    Prints one line per version removed (with --dry-run: that would be removed) and a
    summary with the count and their total size (bytes that another version shares stay
    stored). Exits 0, also when nothing matched; 1 when PATH is not a file or folder in
    a mount; 2 for a missing or bad rule.

    \b
    Examples:
      relayfs prune --dry-run --keep 5 ~/relay           # what would go, everywhere
      relayfs prune --keep 5 ~/relay/reports             # 5 newest of each file
      relayfs prune --older-than 30d ~/relay/logs/app.log
      relayfs prune --keep 3 --older-than 7d ~/relay     # older than a week AND not in the 3 newest
    """
    if keep is None and older_than is None:
        raise click.UsageError("give --keep N, --older-than DURATION or both")
    _, rel, sock = _daemon(path)
    ans = _ask(sock, "prune", timeout=None, path=rel, keep=keep, older_than=older_than, dry_run=dry_run)
    gone = ans["versions"]
    verb = "would remove" if dry_run else "removed"
    for v in gone:
        click.echo(f"{verb} {v['path']} ({_size(v['size'])}, committed {_when(v['mtime_ns'])})")
    if not gone:
        click.echo("nothing to remove")
        return
    files = len({v["path"].rsplit("/", 1)[0] for v in gone})
    size = _size(sum(v["size"] for v in gone))
    tail = "; nothing changed (dry run)" if dry_run else "; the deletes reach L3 as jobs (relayfs wait)"
    click.echo(f"{verb} {_n(len(gone), 'version')} of {_n(files, 'file')}, {size}{tail}")


@main.command()
@click.argument("path", default=".", type=click.Path())
def refresh(path: str) -> None:
    """Pick up now what other clients wrote to the bucket.

    A mount looks for files, folders and versions that other mounts or SDK scripts wrote
    to the same bucket every poll_seconds (10 s by default); this asks at once, for the
    whole mount holding PATH, and prints what it found. Exits 0, or 1 when L3 cannot be
    reached or PATH is not in a mount.

    \b
    Examples:
      relayfs refresh ~/relay
      relayfs refresh && cat reports/q3.pdf/latest     # from inside the mount
    """
    _, _, sock = _daemon(path)
    counts = _ask(sock, "refresh", timeout=None)["counts"]
    skipped = f", {counts['skipped']} changes skipped (see the log)" if counts.get("skipped") else ""
    click.echo(
        f"picked up {_n(counts['events'], 'folder or file change')}, {_n(counts['versions'], 'new version')},"
        f" {_n(counts['removed'], 'removed version')}{skipped}"
    )


_PRESET_FIELDS = ("s3_endpoint", "part_size", "transfer_threads", "upload_concurrency")
_SIZE_FIELDS = ("part_size", "l1_bytes", "l2_bytes")


def _config_path(config_file: str | None) -> Path | None:
    """The TOML file ``load_config`` reads, by the same rule."""
    path = config_file or os.environ.get("RELAYFS_CONFIG")
    if path:
        return Path(path).expanduser()
    default = default_config_file()
    return default if default.exists() else None


def _sources(path: Path | None, flags: dict[str, Any], cfg: Config) -> dict[str, str]:
    """Where each setting came from: flag, env, file, preset, derived or default."""
    in_file = set(config_module._read_toml(path)) if path else set()
    out: dict[str, str] = {}
    for name in cfg.shown():
        if flags.get(name) is not None:
            out[name] = "flag --" + name.replace("_", "-")
        elif os.environ.get(f"RELAYFS_{name.upper()}"):
            out[name] = f"env RELAYFS_{name.upper()}"
        elif name in in_file:
            out[name] = "file"
        elif name in ("cache_dir", "l3_provider"):
            out[name] = "derived from l3"
        elif name in _PRESET_FIELDS and cfg.l3_provider:
            out[name] = f"{cfg.l3_provider} preset"
        else:
            out[name] = "default"
    return out


def _hide_url_password(value: Any) -> Any:
    """A URL with a password in it (https://user:secret@host) shows the mask instead."""
    if not isinstance(value, str) or "@" not in value or "://" not in value:
        return value
    parts = urllib.parse.urlsplit(value)
    if parts.password is None:
        return value
    netloc = f"{parts.username}:{MASK}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@main.group("config")
def config_group() -> None:
    """Inspect RelayFS's configuration.

    `config show` prints the settings a mount would use, merged from defaults, the TOML
    file, RELAYFS_* variables and flags, with where each came from and secrets masked.

    \b
    Examples:
      relayfs config show
      relayfs config show --l3 storj://my-bucket --json
    """


@config_group.command("show")
@_settings_options
@click.option("--json", "as_json", is_flag=True, help="print the settings, their sources and the file as JSON")
def config_show(config_file: str | None, as_json: bool, **flags: Any) -> None:
    """Print the effective configuration, with where each value came from.

    Settings are merged as `relayfs mount` merges them: defaults, then the TOML file
    (--config, $RELAYFS_CONFIG or ~/.config/relayfs/config.toml), then RELAYFS_*
    environment variables, then these flags. S3 credentials (and a password in a URL)
    are shown as ********. It shows what a mount started with the same flags would use;
    it does not ask a running mount. Exits 0, or 2 when a setting is bad.

    \b
    Examples:
      relayfs config show
      relayfs config show --config /etc/relayfs/data.toml
      RELAYFS_L1_BYTES=1GiB relayfs config show --l3 storj://my-bucket --json
    """
    cfg = _config(config_file, **flags)
    path = _config_path(config_file)
    try:
        sources = _sources(path, flags, cfg)
    except ConfigError as e:
        _fail(str(e), 2)
    shown = {name: _hide_url_password(value) for name, value in cfg.shown().items()}
    if as_json:
        _print_json({"config_file": str(path) if path else None, "settings": shown, "sources": sources})
        return
    click.echo(f"config file: {path if path else f'none ({default_config_file()} does not exist)'}")
    click.echo(f"{'SETTING':<22} {'VALUE':<40} FROM")
    for name, value in shown.items():
        if value is None:
            text = "(unset)"
        elif isinstance(value, bool):
            text = str(value).lower()
        elif name in _SIZE_FIELDS and isinstance(value, int):
            text = f"{value} ({_size(value)})"
        else:
            text = str(value)
        click.echo(f"{name:<22} {text:<40} {sources[name]}")


@main.command()
@click.argument("path", default=".", type=click.Path())
def fsck(path: str) -> None:
    """Check the cached bytes of every version under PATH; repair what L3 can.

    Every blob in the L2 cache is checked against the SHA-256 recorded for it at commit
    (each 1 MiB chunk and the whole file), and every version must have its bytes in L2 or
    in L3. A corrupt cached blob that L3 holds is fetched again from L3; one whose only
    copy is corrupt is reported with the versions using it, and its upload is stopped so
    the bad bytes never reach L3.

    Prints a one-line summary, then one line per blob that was repaired or is still wrong.
    Exits 0 when everything is (now) fine, 1 when problems are left, 2 when the check
    could not run (PATH is not in a mount, or does not exist).

    \b
    Examples:
      relayfs fsck ~/relay                 # the whole mount
      relayfs fsck ~/relay/reports/q3.pdf  # one file's versions
    """
    try:
        mnt, rel = control.find_mount(path)
        ans = control.request(control.socket_of(mnt), "fsck", timeout=None, path=rel)
    except control.ControlError as e:
        _fail(str(e), 2)
        raise AssertionError("unreachable")
    problems, repaired = ans["problems"], ans["repaired"]
    click.echo(
        f"fsck {ans['path']}: {ans['versions']} versions, {ans['blobs']} blobs ({ans['in_l2']} in L2, "
        f"{ans['only_l3']} only in L3): {len(repaired)} repaired, {len(problems)} problems left"
    )
    for f in repaired + problems:
        users = f["versions"]
        shown = ", ".join(users[:3]) + (f" and {len(users) - 3} more" if len(users) > 3 else "")
        click.echo(f"{f['kind']:<9} blob {f['sha256'][:12]}: {f['reason']} ({shown})")
    if problems:
        sys.exit(1)


_UNIT_DIR = Path(__file__).resolve().parent.parent / "systemd"


def _relayfs_command() -> str:
    """The absolute command line that runs this relayfs, quoted for a unit file."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    candidates = [argv0 if argv0 is not None and argv0.name == "relayfs" else None]
    candidates += [Path(sys.executable).parent / "relayfs"]
    found = shutil.which("relayfs")
    candidates += [Path(found) if found else None]
    for c in candidates:
        if c is not None and c.is_file() and os.access(c, os.X_OK):
            return _unit_quote(os.path.abspath(c))
    return f"{_unit_quote(sys.executable)} -m relayfs"


def _unit_quote(word: str) -> str:
    """One word of a unit-file command line: specifiers and variables escaped, quoted if needed."""
    word = word.replace("%", "%%").replace("$", "$$")
    if any(c.isspace() or c in "\\\"';" for c in word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


@main.command("install-service")
@click.option("--system", "system", is_flag=True, help="install the system template relayfs@.service (as root)")
@click.option("--mountpoint", type=click.Path(file_okay=False), help="mount point [user: ~/RelayFS]")
@click.option("--dest", type=click.Path(file_okay=False), help="directory to write the unit into")
@click.option("--dry-run", is_flag=True, help="print the unit instead of writing it")
def install_service(system: bool, mountpoint: str | None, dest: str | None, dry_run: bool) -> None:
    """Install a systemd unit that mounts RelayFS at boot (--system) or login.

    Writes relayfs.service (user unit, into ~/.config/systemd/user) or, with --system,
    the template relayfs@.service (into /etc/systemd/system; the instance is the escaped
    mount path, and settings come from /etc/relayfs/<instance>.toml if it exists), with
    the path of this relayfs filled in. It does not run systemctl: it prints the command.

    \b
    Examples:
      relayfs install-service                          # ~/RelayFS at login
      relayfs install-service --mountpoint ~/relay
      sudo relayfs install-service --system --mountpoint /mnt/data
    """
    name = "relayfs@.service" if system else "relayfs.service"
    template = _UNIT_DIR / name
    try:
        text = template.read_text()
    except OSError as e:
        _fail(f"cannot read the unit template {template}: {e.strerror}")
    text = text.replace("@RELAYFS@", _relayfs_command())
    if not system:
        where = _unit_quote(os.path.abspath(os.path.expanduser(mountpoint))) if mountpoint else "%h/RelayFS"
        text = text.replace("@MOUNTPOINT@", where)
    if dry_run:
        click.echo(text, nl=False)
    else:
        if dest is None:
            config = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
            dest = "/etc/systemd/system" if system else str(config / "systemd" / "user")
        target = Path(dest) / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        except OSError as e:
            _fail(f"cannot write {target}: {e.strerror}")
        click.echo(f"wrote {target}")
    if system:
        path = os.path.abspath(mountpoint) if mountpoint else "/mnt/data"
        escaped = subprocess.run(["systemd-escape", "--path", path], capture_output=True, text=True)
        instance = escaped.stdout.strip() if escaped.returncode == 0 else "$(systemd-escape --path " + path + ")"
        click.echo(f"next: systemctl daemon-reload && systemctl enable --now relayfs@{instance}.service")
    else:
        click.echo("next: systemctl --user daemon-reload && systemctl --user enable --now relayfs.service")


if __name__ == "__main__":
    main()
