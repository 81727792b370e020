"""The systemd units: `relayfs install-service` writes them, `systemd-analyze verify` accepts
them, and the unit's ExecStart speaks sd_notify the way Type=notify needs (READY=1 only once
the mount serves requests; STOPPING=1 and a clean unmount and exit 0 on SIGTERM)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mount import relayfs

UNITS = Path(__file__).resolve().parent.parent / "systemd"
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


def _install(dest: Path, *args: str) -> str:
    done = relayfs("install-service", "--dest", str(dest), *args)
    assert "enable --now" in done.stdout
    return done.stdout


def _verify(unit: Path, *, user: bool, runtime: Path) -> None:
    # XDG_RUNTIME_DIR lets --user verify run outside a login session (as in a container).
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    cmd = ["systemd-analyze", "verify", "--man=no", *(["--user"] if user else []), str(unit)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=unit.parent, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{out}"
    bad = [l for l in out.splitlines() if re.search(r"Unknown|Invalid|Failed|ignoring|not executable|bad unit", l, re.I)]
    assert not bad, f"{cmd} complained:\n{out}"


def _exec_start(unit: Path) -> list[str]:
    lines = [l for l in unit.read_text().splitlines() if l.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(lines[0].removeprefix("ExecStart="))]


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    d = tmp_path / "runtime"
    d.mkdir(mode=0o700)
    return d


def test_user_unit_installs_and_verifies(tmp_path: Path, runtime: Path) -> None:
    dest = tmp_path / "user"
    out = _install(dest)
    assert "systemctl --user" in out
    unit = dest / "relayfs.service"
    text = unit.read_text()
    assert "@" not in text.replace("relayfs@", ""), text  # no @PLACEHOLDER@ left
    for setting in ("Type=notify", "NotifyAccess=main", "Restart=on-failure", "KillSignal=SIGTERM"):
        assert setting in text.splitlines()
    argv = _exec_start(unit)
    assert Path(argv[0]).is_absolute() and os.access(argv[0], os.X_OK)
    assert argv[-3:] == ["mount", "--foreground", "%h/RelayFS"]
    _verify(unit, user=True, runtime=runtime)


def test_user_unit_with_mountpoint_and_dry_run(tmp_path: Path, runtime: Path) -> None:
    where = tmp_path / "my relay"
    dest = tmp_path / "user"
    _install(dest, "--mountpoint", str(where))
    argv = _exec_start(dest / "relayfs.service")
    assert argv[-1] == str(where)
    _verify(dest / "relayfs.service", user=True, runtime=runtime)
    dry = relayfs("install-service", "--dry-run", "--dest", str(tmp_path / "dry"))
    assert "ExecStart=" in dry.stdout and not (tmp_path / "dry").exists()


def test_system_template_installs_and_verifies(tmp_path: Path, runtime: Path) -> None:
    dest = tmp_path / "system"
    out = _install(dest, "--system", "--mountpoint", "/mnt/data")
    assert "systemctl enable --now relayfs@mnt-data.service" in out
    unit = dest / "relayfs@.service"
    text = unit.read_text()
    assert not re.search(r"@[A-Z]+@", text), text
    argv = _exec_start(unit)
    assert Path(argv[0]).is_absolute()
    assert argv[-1] == "%f" and "--foreground" in argv
    assert argv[argv.index("--config-if-exists") + 1] == "/etc/relayfs/%i.toml"
    _verify(unit, user=False, runtime=runtime)
    _verify(dest / "relayfs@mnt-data.service", user=False, runtime=runtime)  # an instance of the template


def test_verify_catches_a_broken_unit(tmp_path: Path, runtime: Path) -> None:
    """The verify check above means something: a bad setting makes it fail."""
    dest = tmp_path / "user"
    _install(dest)
    unit = dest / "relayfs.service"
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    with pytest.raises(AssertionError):
        _verify(unit, user=True, runtime=runtime)


def _recv(sock: socket.socket, deadline: float) -> str | None:
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        return sock.recv(4096).decode()
    except socket.timeout:
        return None


def test_exec_start_notifies_ready_after_serving_and_stops_on_sigterm(
    tmp_path: Path, s3_server, bucket: str
) -> None:
    dest = tmp_path / "user"
    _install(dest)
    argv = _exec_start(dest / "relayfs.service")
    assert argv[-1] == "%h/RelayFS"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cache = tmp_path / "cache"
    argv = argv[:-1] + [str(mnt), "--cache-dir", str(cache), "--l3", f"s3://{bucket}",
                        "--s3-endpoint", s3_server.endpoint, "--log-level", "DEBUG"]
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    env = dict(os.environ, NOTIFY_SOCKET=str(notify), XDG_CONFIG_HOME=str(tmp_path / "config"))
    env.pop("RELAYFS_READY_FD", None)
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
    try:
        messages: list[str] = []
        deadline = time.monotonic() + 60
        while "READY=1" not in messages:
            assert proc.poll() is None, f"daemon exited {proc.returncode}:\n{log.read_text()}"
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for READY=1 (got {messages}):\n{log.read_text()}")
            msg = _recv(sock, min(deadline, time.monotonic() + 0.5))
            if msg is not None:
                messages += msg.split("\n")
                if "READY=1" in messages:
                    # The moment systemd hears READY=1, the mount must already serve requests.
                    assert os.path.ismount(mnt)
                    os.stat(mnt)
                    os.listdir(mnt)
        assert "STOPPING=1" not in messages
        (mnt / "hello.txt").write_text("hi\n")  # it really serves

        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while "STOPPING=1" not in messages:
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for STOPPING=1 (got {messages}):\n{log.read_text()}")
            msg = _recv(sock, min(deadline, time.monotonic() + 0.5))
            if msg is not None:
                messages += msg.split("\n")
        assert proc.wait(timeout=60) == 0, log.read_text()
        assert not os.path.ismount(mnt)
        errors = [l for l in log.read_text().splitlines() if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", l)]
        assert not errors, log.read_text()
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
