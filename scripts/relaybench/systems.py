"""The systems side by side, behind one small interface.

* ``native``: a plain directory on local disk, the limit for local work;
* ``boto3``: boto3 (its transfer manager for big objects) through the same proxy, the limit
  for transfers; it has no files, so workloads call its ``s3_*`` figures directly;
* ``relayfs``: ``relayfs mount`` on the bucket through the proxy, a fresh ``--cache-dir``
  for every cold start;
* ``rclone``: Debian's ``rclone mount`` (S3 remote, ``--vfs-cache-mode full``, default 5 s
  write-back);
* ``s3fs``: Debian's s3fs-fuse with ``use_cache`` and path-style requests.

A file system is used through ``mount()``, which returns a ``Mounted`` (its data directory,
the daemon's pid for RSS and CPU readings, and how to stop it). ``seed()`` puts files in L3
the way that system's cold state must be produced, straight to moto (not through the
proxy): peers read objects put with boto3; RelayFS reads versions it wrote itself, since an
object put straight into the bucket is not a RelayFS version.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from boto3.s3.transfer import TransferConfig

from . import data
from .measure import now, poll_until, run_quiet
from .rig import ACCESS_KEY, REGION, SECRET_KEY, Rig, clean_env

log = logging.getLogger(__name__)

MiB = 1024 * 1024
ALL_SYSTEMS = ("native", "boto3", "relayfs", "rclone", "s3fs")
RELAYFS = [sys.executable, "-m", "relayfs"]


@dataclass
class Mounted:
    """One mount (or, for native, one directory) of one bucket."""

    path: Path
    pid: int | None
    cache: Path | None
    mount_seconds: float
    stop: Callable[[], None]
    stopped: bool = False

    def close(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.stop()

    def __enter__(self) -> "Mounted":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SeedFile:
    name: str
    nonce: str
    size: int


def _fuse_unmount(path: Path, proc: subprocess.Popen[bytes] | None, timeout: float = 120) -> None:
    """Unmount a FUSE mount and wait for its daemon; lazily and by force if it will not go."""
    done = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, text=True)
    if done.returncode != 0 and os.path.ismount(path):
        log.warning("fusermount3 -u %s: %s; unmounting lazily", path, done.stderr.strip())
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)
    if proc is not None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("daemon pid %d still running %.0f s after unmount; terminating it", proc.pid, timeout)
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


class System:
    """What every system offers the workloads."""

    name = ""
    is_fs = True
    has_daemon = True
    cold_how = ""

    def __init__(self, rig: Rig, workdir: Path) -> None:
        self.rig = rig
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._n = 0
        self.problems: list[str] = []  # daemon errors and the like, for the report

    def _next(self, what: str) -> Path:
        self._n += 1
        p = self.workdir / f"{what}{self._n}"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def unavailable(self) -> str | None:
        """None when the system can run here, else the reason it cannot."""
        return None

    def mount(self, bucket: str, endpoint: str) -> Mounted:
        raise NotImplementedError

    def read_name(self, name: str) -> str:
        """The path (in the data directory) to read back a file written as ``name``."""
        return name

    def is_durable(self, mounted: Mounted, bucket: str, name: str, size: int) -> bool:
        """True once the file written as ``name`` is complete in L3."""
        return self.rig.object_size(bucket, name) == size

    def seed(self, bucket: str, files: list[SeedFile]) -> None:
        """Put ``files`` in L3 (straight to moto), as this system's cold state needs them."""
        client = self.rig.client(pool=16)
        cfg = TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB, max_concurrency=4)

        def put(f: SeedFile) -> None:
            if f.size <= 64 * MiB:
                client.put_object(Bucket=bucket, Key=f.name, Body=b"".join(data.blocks(f.nonce, f.size)))
            else:
                client.upload_fileobj(data.PatternReader(f.nonce, f.size), bucket, f.name, Config=cfg)

        if len(files) == 1:
            put(files[0])
        else:
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(put, files))


class Native(System):
    """A plain directory on the local disk: no L3, no daemon."""

    name = "native"
    has_daemon = False
    cold_how = "files written to local disk and fsync'ed; cold = drop_caches"

    def _dir(self, bucket: str) -> Path:
        p = self.workdir / bucket
        p.mkdir(parents=True, exist_ok=True)
        return p

    def mount(self, bucket: str, endpoint: str) -> Mounted:
        return Mounted(self._dir(bucket), None, None, 0.0, lambda: None)

    def is_durable(self, mounted: Mounted, bucket: str, name: str, size: int) -> bool:
        return True

    def seed(self, bucket: str, files: list[SeedFile]) -> None:
        d = self._dir(bucket)
        for f in files:
            data.write_file(d / f.name, f.nonce, f.size, fsync=len(files) < 50)
        os.sync()

    def forget(self, bucket: str) -> None:
        shutil.rmtree(self.workdir / bucket, ignore_errors=True)


class Boto3(System):
    """boto3 itself: the figures a program talking S3 directly would see."""

    name = "boto3"
    is_fs = False
    has_daemon = False
    cold_how = "objects put straight to moto; every GET is cold (no cache)"


class RelayFS(System):
    name = "relayfs"
    cold_how = (
        "written through a RelayFS mount straight to moto, `relayfs wait`, unmounted; read through "
        "a new mount with an empty --cache-dir (empty L1 and L2) after drop_caches, as NAME/v1"
    )

    def __init__(self, rig: Rig, workdir: Path, log_level: str = "INFO") -> None:
        super().__init__(rig, workdir)
        self.log_level = log_level

    def unavailable(self) -> str | None:
        done = subprocess.run([*RELAYFS, "--help"], capture_output=True, text=True, env=clean_env())
        if done.returncode != 0:
            return f"`python -m relayfs --help` failed: {done.stderr.strip()[-300:]}"
        return None

    def mount(self, bucket: str, endpoint: str, cache: Path | None = None) -> Mounted:
        mnt = self._next("mnt")
        cache = cache or self._next("cache")
        args = [*RELAYFS, "mount", str(mnt), "--cache-dir", str(cache), "--l3", f"s3://{bucket}",
                "--s3-endpoint", endpoint, "--log-level", self.log_level]
        t0 = now()
        run_quiet(args, timeout=900, env=clean_env())
        took = now() - t0
        pid = int((cache / "lock").read_text().split()[0])

        def stop() -> None:
            done = subprocess.run([*RELAYFS, "umount", str(mnt)], capture_output=True, text=True,
                                  env=clean_env(), timeout=300)
            if done.returncode != 0:
                log.warning("relayfs umount %s: %s", mnt, (done.stderr or done.stdout).strip())
                self.problems.append(f"`relayfs umount` failed: {(done.stderr or done.stdout).strip()[-200:]}")
                _fuse_unmount(mnt, None)
            self._collect_errors(cache)
            shutil.rmtree(cache, ignore_errors=True)

        return Mounted(mnt, pid, cache, took, stop)

    def _collect_errors(self, cache: Path) -> None:
        logfile = cache / "daemon.log"
        if not logfile.exists():
            return
        for line in logfile.read_text(errors="replace").splitlines():
            if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", line):
                self.problems.append(f"daemon log: {line.strip()[:300]}")

    def read_name(self, name: str) -> str:
        return f"{name}/v1"

    def is_durable(self, mounted: Mounted, bucket: str, name: str, size: int) -> bool:
        try:
            return os.getxattr(mounted.path / name / "v1", "user.relayfs.state") == b"durable"
        except OSError:
            return False

    def wait(self, mounted: Mounted, timeout: float = 3600) -> None:
        run_quiet([*RELAYFS, "wait", str(mounted.path), "--timeout", str(timeout)], timeout=timeout + 60,
                  env=clean_env())

    def seed(self, bucket: str, files: list[SeedFile]) -> None:
        with self.mount(bucket, self.rig.direct) as m:
            if len(files) > 50:  # many small files: write them from a pool, as a tool would
                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(lambda f: data.write_file(m.path / f.name, f.nonce, f.size), files))
            else:
                for f in files:
                    data.write_file(m.path / f.name, f.nonce, f.size)
            t0 = now()
            self.wait(m)
            log.info("relayfs seed: %d files durable in moto %.1f s after the last close", len(files), now() - t0)


def _install(packages: list[str]) -> str | None:
    """apt-get install the missing Debian packages; None on success, else why not."""
    if os.geteuid() != 0:
        return f"not root, cannot apt-get install {' '.join(packages)}"
    log.info("installing from Debian: %s", " ".join(packages))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(["apt-get", "install", "-y", "-q", *packages], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        done = subprocess.run(["apt-get", "install", "-y", "-q", *packages], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return f"apt-get install {' '.join(packages)} failed: {done.stderr.strip()[-300:]}"
    return None


_install_lock = threading.Lock()
_installed: dict[str, str | None] = {}


def ensure_installed(binary: str, package: str) -> str | None:
    with _install_lock:
        if shutil.which(binary):
            return None
        if package not in _installed:
            _installed[package] = _install([package])
        if _installed[package] is None and not shutil.which(binary):
            return f"{package} installed but {binary} is not on PATH"
        return _installed[package]


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except Exception:
        return "unknown version"


class _PeerMount(System):
    """A peer whose daemon runs in the foreground as our child, so its pid is known."""

    def _start(self, cmd: list[str], mnt: Path, logfile: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], float]:
        t0 = now()
        out = open(logfile, "ab")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()
        if poll_until(lambda: os.path.ismount(mnt) or proc.poll() is not None, 60) is None or proc.poll() is not None:
            with contextlib.suppress(Exception):
                proc.kill()
            tail = logfile.read_text(errors="replace")[-600:] if logfile.exists() else ""
            raise RuntimeError(f"{self.name} did not mount: {tail.strip()}")
        return proc, now() - t0


class Rclone(_PeerMount):
    name = "rclone"
    cold_how = "objects put straight to moto; read through a new `rclone mount` with an empty --cache-dir after drop_caches"

    def unavailable(self) -> str | None:
        why = ensure_installed("rclone", "rclone")
        if why is None:
            self.version = _version(["rclone", "version"])
        return why

    def _config(self, endpoint: str) -> Path:
        conf = self.workdir / "rclone.conf"
        conf.write_text(
            "[bench]\ntype = s3\nprovider = Other\nenv_auth = false\n"
            f"access_key_id = {ACCESS_KEY}\nsecret_access_key = {SECRET_KEY}\n"
            f"endpoint = {endpoint}\nregion = {REGION}\nforce_path_style = true\nno_check_bucket = true\n"
        )
        conf.chmod(0o600)
        return conf

    def mount(self, bucket: str, endpoint: str) -> Mounted:
        mnt = self._next("mnt")
        cache = self._next("cache")
        conf = self._config(endpoint)
        logfile = self.workdir / "rclone.log"
        cmd = ["rclone", "mount", f"bench:{bucket}", str(mnt), "--config", str(conf), "--vfs-cache-mode", "full",
               "--cache-dir", str(cache), "--log-file", str(logfile), "--log-level", "NOTICE"]
        proc, took = self._start(cmd, mnt, logfile, clean_env())  # clean_env drops AWS_CA_BUNDLE

        def stop() -> None:
            _fuse_unmount(mnt, proc)
            shutil.rmtree(cache, ignore_errors=True)

        return Mounted(mnt, proc.pid, cache, took, stop)


class S3fs(_PeerMount):
    name = "s3fs"
    cold_how = "objects put straight to moto; read through a new s3fs mount with an empty use_cache dir after drop_caches"

    def unavailable(self) -> str | None:
        why = ensure_installed("s3fs", "s3fs")
        if why is None:
            self.version = _version(["s3fs", "--version"])
        return why

    def mount(self, bucket: str, endpoint: str) -> Mounted:
        mnt = self._next("mnt")
        cache = self._next("cache")
        passwd = self.workdir / "passwd"
        passwd.write_text(f"{ACCESS_KEY}:{SECRET_KEY}\n")
        passwd.chmod(0o600)
        logfile = self.workdir / "s3fs.log"
        opts = (f"passwd_file={passwd},url={endpoint},use_path_request_style,use_cache={cache},"
                f"endpoint={REGION},umask=0022,dbglevel=warn")
        cmd = ["s3fs", bucket, str(mnt), "-f", "-o", opts]
        proc, took = self._start(cmd, mnt, logfile, clean_env())

        def stop() -> None:
            _fuse_unmount(mnt, proc)
            shutil.rmtree(cache, ignore_errors=True)

        return Mounted(mnt, proc.pid, cache, took, stop)


CLASSES: dict[str, type[System]] = {"native": Native, "boto3": Boto3, "relayfs": RelayFS, "rclone": Rclone, "s3fs": S3fs}


def make(name: str, rig: Rig, workdir: Path, relayfs_log_level: str = "INFO") -> System:
    if name == "relayfs":
        return RelayFS(rig, workdir, relayfs_log_level)
    return CLASSES[name](rig, workdir)


def wait_durable(system: System, mounted: Mounted, bucket: str, name: str, size: int,
                 timeout: float = 3600) -> float | None:
    """perf_counter time at which ``name`` was first seen complete in L3, None on timeout."""
    interval = 0.02 if system.name == "relayfs" else 0.05
    return poll_until(lambda: system.is_durable(mounted, bucket, name, size), timeout, interval)

