"""A RelayFS mount driven the way a user drives it: through the ``relayfs`` CLI.

``Mount.start()`` runs ``relayfs mount`` (which returns once the mount answers),
``Mount.stop()`` runs ``relayfs umount``. The daemon's log is kept per mount; ``errors()``
returns its ERROR lines and tracebacks, minus the ones a test says it expects, so a test
fails when the daemon logged an error nobody expected.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")

RELAYFS = [sys.executable, "-m", "relayfs"]


def relayfs(*args: str, check: bool = True, timeout: float = 120, env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the relayfs CLI; raise with its output when ``check`` and it fails."""
    done = subprocess.run([*RELAYFS, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and done.returncode != 0:
        raise AssertionError(f"relayfs {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def sh(cmd: str, cwd: str | os.PathLike[str] | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a shell command line as a user would type it."""
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{cmd!r} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def poll(check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """Return ``check()`` once it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


class Mount:
    """One mount point with its own cache dir, on a given L3."""

    def __init__(self, root: Path, l3: str, endpoint: str | None = None, extra: Sequence[str] = ()) -> None:
        self.root = root
        self.path = root / "mnt"
        self.cache = root / "cache"
        self.l3 = l3
        self.endpoint = endpoint
        self.extra = list(extra)
        self.expected_errors: list[str] = []
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def log(self) -> Path:
        return self.cache / "daemon.log"

    def args(self) -> list[str]:
        out = [str(self.path), "--cache-dir", str(self.cache), "--l3", self.l3, "--log-level", "DEBUG"]
        if self.endpoint:
            out += ["--s3-endpoint", self.endpoint]
        return out + self.extra

    def start(self) -> None:
        relayfs("mount", *self.args())

    def stop(self) -> None:
        if os.path.ismount(self.path):
            relayfs("umount", str(self.path))

    def pid(self) -> int:
        return int((self.cache / "lock").read_text().strip())

    def kill9(self) -> None:
        """Crash the daemon and clean up the dead mount, as a user would after a crash."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)

    def wait(self, path: str = "", timeout: float = 60) -> None:
        """Block until every job (under ``path``) is durable in L3."""
        relayfs("wait", str(self.path / path), "--timeout", str(timeout), timeout=timeout + 30)

    def expect_error(self, pattern: str) -> None:
        """Declare an ERROR log line this test provokes on purpose (a regex)."""
        self.expected_errors.append(pattern)

    def errors(self) -> list[str]:
        if not self.log.exists():
            return []
        lines = self.log.read_text(errors="replace").splitlines()
        bad = [l for l in lines if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", l)]
        return [l for l in bad if not any(re.search(p, l) for p in self.expected_errors)]
