"""The ``relayfs`` command: parsing and printing only; the work is in the daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from . import control
from .config import Config, ConfigError, load_config


def _fail(message: str, code: int = 1) -> None:
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


def _ask(sock: str, op: str, **args: Any) -> dict[str, Any]:
    try:
        return control.request(sock, op, **args)
    except control.ControlError as e:
        _fail(str(e))
        raise AssertionError("unreachable")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """RelayFS: a tiered, versioned filesystem over Storj or any S3 store.

    Every file is a folder of immutable versions (NAME/v1, NAME/v2, NAME/latest).
    Writes land on local disk and return at close(); uploads run in the background.
    """


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--cache-dir", help="L2 cache directory [default: ~/.cache/relayfs/<store>]")
@click.option("--l3", help="s3://BUCKET[/PREFIX], storj://BUCKET[/PREFIX] or file:///PATH [default: a local directory]")
@click.option("--s3-endpoint", help="S3 endpoint URL for s3:// (e.g. http://127.0.0.1:9000)")
@click.option("--s3-region", help="S3 region name")
@click.option("--part-size", help="multipart part size, e.g. 8MiB")
@click.option("--upload-concurrency", type=int, help="uploads running at once")
@click.option("--l1-bytes", help="RAM cache budget, e.g. 256MiB")
@click.option("--l2-bytes", help="disk cache budget, e.g. 20GiB")
@click.option("--allow-other", is_flag=True, default=None, help="let other users see the mount")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config file")
@click.option(
    "--config-if-exists", type=click.Path(dir_okay=False), help="TOML config file, read only if it exists (for service units)"
)
@click.option("--foreground", "-f", is_flag=True, help="stay in the foreground and log to stderr")
def mount(mountpoint: str, config_file: str | None, config_if_exists: str | None, foreground: bool, **flags: Any) -> None:
    """Mount RelayFS at MOUNTPOINT.

    Returns once the mount is ready (or fails with the reason). Settings come from
    --config (or ~/.config/relayfs/config.toml), then RELAYFS_* variables, then flags.

    \b
    Examples:
      relayfs mount ~/relay                                  # local store, no account
      relayfs mount ~/relay --l3 storj://my-bucket           # Storj's S3 gateway
      relayfs mount ~/relay --l3 s3://b --s3-endpoint http://127.0.0.1:9000
    """
    if config_file is None and config_if_exists and os.path.exists(config_if_exists):
        config_file = config_if_exists
    cfg = _config(config_file, **flags)
    from . import daemon

    if foreground:
        daemon.setup_logging(cfg.log_level)
        sys.exit(daemon.run(cfg, mountpoint))
    cfg.cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    holder = daemon.cache_in_use(cfg.cache)
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
    ("Transport endpoint is not connected") is cleaned up too.
    """
    path = os.path.abspath(mountpoint)
    pid = None
    try:
        pid = control.request(control.socket_of(Path(path)), "status", timeout=5)["pid"]
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


@main.command()
@click.argument("path", default=".", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print the raw status as JSON")
def status(path: str, as_json: bool) -> None:
    """Show the state of the mount holding PATH: tiers, jobs, L3."""
    _, _, sock = _daemon(path)
    s = _ask(sock, "status")
    if as_json:
        import json

        click.echo(json.dumps(s, indent=2))
        return
    reach = {True: "reachable", False: f"unreachable ({s['l3_error']})", None: "not contacted yet"}[s["l3_reachable"]]
    click.echo(f"mount      {s['mountpoint']} (pid {s['pid']})")
    click.echo(f"L3         {s['l3']}: {reach}")
    click.echo(f"L1 (RAM)   {_size(s['l1_used'])} of {_size(s['l1_budget'])}")
    click.echo(f"L2 (disk)  {_size(s['l2_used'])} of {_size(s['l2_budget'])} in {s['cache_dir']}")
    click.echo(f"namespace  {s['folders']} folders, {s['files']} files, {s['versions']} versions")
    click.echo(
        f"jobs       {s['jobs_queued']} queued, {s['jobs_running']} running, {s['jobs_retrying']} retrying,"
        f" {s['jobs_failed']} failed; {_size(s['pending_bytes'])} pending"
    )


def _jobs_under(path: str) -> tuple[str, list[dict[str, Any]]]:
    _, rel, sock = _daemon(path)
    return sock, _ask(sock, "jobs", path=rel)["jobs"]


@main.command()
@click.argument("path", default=".", type=click.Path())
def jobs(path: str) -> None:
    """List background jobs (uploads, deletes, renames) under PATH."""
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

    Exits 0 when all are done, 1 if one failed, 2 on timeout.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        _, rows = _jobs_under(path)
        failed = [j for j in rows if j["state"] == "failed"]
        if failed:
            _fail(f"job {failed[0]['id']} ({failed[0]['path']}) failed: {failed[0]['last_error']}")
        if all(j["state"] == "done" for j in rows):
            return
        if deadline is not None and time.monotonic() > deadline:
            left = sum(1 for j in rows if j["state"] != "done")
            _fail(f"{left} jobs still unfinished after {timeout:.0f}s", 2)
        time.sleep(0.2)


@main.command()
@click.argument("path", type=click.Path())
def versions(path: str) -> None:
    """List the versions of the versioned file at PATH."""
    _, rel, sock = _daemon(path)
    ans = _ask(sock, "versions", path=rel)
    click.echo(f"{'VERSION':<8} {'SIZE':>10}  {'COMMITTED':<19}  {'SHA256':<12}  {'STATE':<9}  TIER")
    for v in ans["versions"]:
        when = datetime.fromtimestamp(v["mtime_ns"] / 1e9).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"v{v['version']:<7} {v['size']:>10}  {when:<19}  {v['sha256'][:12]:<12}  {v['state']:<9}  {v['tier']}")


@main.command()
@click.argument("path", type=click.Path())
@click.argument("version")
def rollback(path: str, version: str) -> None:
    """Commit a new version of PATH equal to VERSION (e.g. v2), uploading no data."""
    _, rel, sock = _daemon(path)
    ans = _ask(sock, "rollback", path=rel, version=version)
    click.echo(f"{path}: committed v{ans['version']} equal to {version if version.startswith('v') else 'v' + version}")


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
