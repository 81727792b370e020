"""The ``relayfs`` command as a user types it: help, mount failures, the no-account default,
configuration precedence, versions/status/rollback, and an umount that waits."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mount import Mount, relayfs, sh
from s3server import free_port

SUBCOMMANDS = (
    "mount", "umount", "status", "jobs", "wait", "versions", "rollback", "prune", "refresh", "config", "fsck",
    "install-service",
)
COMMANDS = (*SUBCOMMANDS, "config show")  # every command a user can ask --help of


def one_line_failure(done: subprocess.CompletedProcess[str], *patterns: str) -> str:
    """A failed command: non-zero exit, one line on stderr matching every pattern."""
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for p in patterns:
        assert re.search(p, lines[0], re.IGNORECASE), lines[0]
    return lines[0]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The test environment with HOME moved and no RELAYFS_* or XDG_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAYFS_", "XDG_"))}
    env["HOME"] = str(home)
    env.update(extra)
    return env


def status(path: Path, env: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
    return json.loads(relayfs("status", "--json", str(path), env=env).stdout)


def log_errors(log: Path) -> list[str]:
    if not log.exists():
        return []
    return [l for l in log.read_text().splitlines() if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", l)]


@contextlib.contextmanager
def mounted(mountpoint: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[dict]:  # type: ignore[type-arg]
    """``relayfs mount`` with the given arguments; unmounts (and checks the log) afterwards."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    relayfs("mount", str(mountpoint), *args, env=env)
    log = None
    try:
        st = status(mountpoint, env)
        log = Path(st["cache_dir"]) / "daemon.log"
        yield st
    finally:
        if os.path.ismount(mountpoint):
            relayfs("umount", str(mountpoint), env=env)
    assert log is not None and not log_errors(log), log_errors(log)


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(OSError):  # a zombie nobody reaped yet has exited too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    return True


# ----------------------------------------------------------------------------- help


def test_help_lists_every_command() -> None:
    out = relayfs("--help").stdout
    for cmd in SUBCOMMANDS:
        assert re.search(rf"^\s+{cmd}\s", out, re.MULTILINE), f"{cmd} missing from --help"
    assert relayfs("-h").stdout == out


@pytest.mark.parametrize("cmd", COMMANDS)
def test_subcommand_help(cmd: str) -> None:
    done = relayfs(*cmd.split(), "--help")
    assert done.returncode == 0 and not done.stderr
    assert done.stdout.startswith("Usage:")
    assert cmd in done.stdout.splitlines()[0]
    description, _, examples = done.stdout.partition("Examples:")
    assert len(description.split("\n\n", 1)[1].split()) >= 15  # a paragraph saying what it does
    shown = [line.strip() for line in examples.split("\n\n")[0].splitlines() if line.strip()]
    assert shown and all(line.startswith(("relayfs ", "sudo relayfs ", "RELAYFS_")) for line in shown), shown
    assert all(cmd in line for line in shown)


def test_usage_errors_are_one_line_with_status_2() -> None:
    for args in (("nope",), ("versions",), ("status", "--bogus"), ("config", "nope"), ("jobs", "--interval", "0")):
        done = relayfs(*args, check=False)
        assert done.returncode == 2, args
        one_line_failure(done, r"^relayfs: ", r"\(see: .*--help\)$")


def test_fsck_help() -> None:
    out = relayfs("fsck", "--help").stdout
    assert "Examples:" in out and "relayfs fsck ~/" in out
    assert "Exits 0 when" in out


# ----------------------------------------------------------------------------- mount failures


def test_mount_missing_bucket(tmp_path: Path, s3_server) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "m").mkdir()
    done = relayfs(
        "mount", str(tmp_path / "m"), "--l3", "s3://no-such-bucket", "--s3-endpoint", s3_server.endpoint,
        "--cache-dir", str(tmp_path / "c"), check=False,
    )
    one_line_failure(done, "no-such-bucket", "does not exist")
    assert not os.path.ismount(tmp_path / "m")


def test_mount_without_credentials(tmp_path: Path, s3_server, bucket: str) -> None:  # type: ignore[no-untyped-def]
    # moto accepts any key pair, so a wrong secret cannot be provoked; no credentials can.
    (tmp_path / "m").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    done = relayfs(
        "mount", str(tmp_path / "m"), "--l3", f"s3://{bucket}", "--s3-endpoint", s3_server.endpoint,
        "--cache-dir", str(tmp_path / "c"), check=False, env=env,
    )
    one_line_failure(done, "credentials")
    assert not os.path.ismount(tmp_path / "m")


def test_mount_unreachable_endpoint(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    done = relayfs(
        "mount", str(tmp_path / "m"), "--l3", "s3://some-bucket", "--s3-endpoint", f"http://127.0.0.1:{free_port()}",
        "--cache-dir", str(tmp_path / "c"), check=False,
    )
    one_line_failure(done, "reach|connect")
    assert not os.path.ismount(tmp_path / "m")


def test_mount_point_missing(tmp_path: Path, bucket: str, s3_server) -> None:  # type: ignore[no-untyped-def]
    done = relayfs(
        "mount", str(tmp_path / "nope"), "--l3", f"s3://{bucket}", "--s3-endpoint", s3_server.endpoint,
        "--cache-dir", str(tmp_path / "c"), check=False,
    )
    one_line_failure(done, "does not exist")
    assert not (tmp_path / "nope").exists()


def test_mount_point_busy(mnt: Mount, tmp_path: Path) -> None:
    done = relayfs(
        "mount", str(mnt.path), "--l3", mnt.l3, "--s3-endpoint", mnt.endpoint or "",
        "--cache-dir", str(tmp_path / "other-cache"), check=False,
    )
    one_line_failure(done, "busy")
    sh("echo still > a.txt", cwd=mnt.path)  # the first mount is untouched
    assert sh("cat a.txt/v1", cwd=mnt.path).stdout == "still\n"


def test_cache_dir_in_use(mnt: Mount, tmp_path: Path) -> None:
    (tmp_path / "m2").mkdir()
    done = relayfs(
        "mount", str(tmp_path / "m2"), "--l3", mnt.l3, "--s3-endpoint", mnt.endpoint or "",
        "--cache-dir", str(mnt.cache), check=False,
    )
    one_line_failure(done, "in use", str(mnt.pid()))
    assert not os.path.ismount(tmp_path / "m2")
    sh("echo fine > a.txt", cwd=mnt.path)
    assert sh("cat a.txt/v1", cwd=mnt.path).stdout == "fine\n"


# ----------------------------------------------------------------------------- defaults and config


def test_embedded_default_needs_no_s3(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(home)
    mnt = tmp_path / "relay"
    with mounted(mnt, env=env) as st:
        assert st["cache_dir"].startswith(str(home / ".cache" / "relayfs"))
        sh(f"echo hi > {mnt}/a.txt")
        assert sh(f"cat {mnt}/a.txt/v1").stdout == "hi\n"
        jobs = sh(f"ls {mnt}/.jobs").stdout.split()
        assert jobs
        uploads = [j for j in jobs if "kind: upload" in (mnt / ".jobs" / j).read_text()]
        assert len(uploads) == 1
        assert "path: /a.txt/v1" in (mnt / ".jobs" / uploads[0]).read_text()
        relayfs("wait", str(mnt), "--timeout", "60", env=env)
        sha = os.getxattr(mnt / "a.txt" / "v1", "user.relayfs.sha256").decode()
    assert not os.path.ismount(mnt)
    store = home / ".local" / "share" / "relayfs" / "store"
    assert (store / "blobs" / sha[:2] / sha).read_bytes() == b"hi\n"  # the stand-in L3


def test_config_precedence_flag_over_env_over_toml(tmp_path: Path) -> None:
    home = tmp_path / "home"
    conf = home / ".config" / "relayfs" / "config.toml"
    conf.parent.mkdir(parents=True)
    store = tmp_path / "store"
    conf.write_text(
        f'l3 = "{store.as_uri()}"\nl1_bytes = "1MiB"\ncache_dir = "{tmp_path / "c-toml"}"\nupload_concurrency = 2\n'
    )
    mnt = tmp_path / "m"
    with mounted(mnt, env=clean_env(home)) as st:
        assert (st["l1_budget"], st["cache_dir"]) == (1024 * 1024, str(tmp_path / "c-toml"))
        assert str(store) in st["l3"]
    env = clean_env(home, RELAYFS_L1_BYTES="2MiB", RELAYFS_CACHE_DIR=str(tmp_path / "c-env"))
    with mounted(mnt, env=env) as st:
        assert (st["l1_budget"], st["cache_dir"]) == (2 * 1024 * 1024, str(tmp_path / "c-env"))
        assert str(store) in st["l3"]  # the file still supplies what env and flags leave unset
    with mounted(mnt, "--l1-bytes", "3MiB", "--cache-dir", str(tmp_path / "c-flag"), env=env) as st:
        assert (st["l1_budget"], st["cache_dir"]) == (3 * 1024 * 1024, str(tmp_path / "c-flag"))
    # an explicit --config file replaces the default one
    other = tmp_path / "other.toml"
    other.write_text(f'l3 = "{store.as_uri()}"\nl1_bytes = "5MiB"\ncache_dir = "{tmp_path / "c-other"}"\n')
    with mounted(mnt, "--config", str(other), env=clean_env(home)) as st:
        assert (st["l1_budget"], st["cache_dir"]) == (5 * 1024 * 1024, str(tmp_path / "c-other"))


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "m").mkdir()
    bad = tmp_path / "bad.toml"
    bad.write_text('l1_bytes = "lots"\n')
    done = relayfs("mount", str(tmp_path / "m"), "--config", str(bad), check=False, env=clean_env(home))
    one_line_failure(done, "l1_bytes")
    done = relayfs("mount", str(tmp_path / "m"), check=False, env=clean_env(home, RELAYFS_UPLOAD_CONCURRENCY="0"))
    one_line_failure(done, "upload_concurrency")
    assert not os.path.ismount(tmp_path / "m")


# ----------------------------------------------------------------------------- versions, status, rollback


def _keys(s3_server, bucket: str, prefix: str) -> set[str]:  # type: ignore[no-untyped-def]
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def test_versions_and_status(mnt: Mount) -> None:
    sh("mkdir d && echo one > d/f.txt && echo two > d/f.txt/latest && echo three > d/f.txt/latest", cwd=mnt.path)
    lines = relayfs("versions", str(mnt.path / "d" / "f.txt")).stdout.splitlines()
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1]) for r in rows] == [("v1", "4"), ("v2", "4"), ("v3", "6")]
    for r in rows:
        sha = os.getxattr(mnt.path / "d" / "f.txt" / r[0], "user.relayfs.sha256").decode()
        assert sha.startswith(r[4])
    # a version's path, and a relative path, name the same file (state and tier may move on)
    for other in (
        relayfs("versions", str(mnt.path / "d" / "f.txt" / "v2")),
        relayfs("versions", "f.txt", cwd=str(mnt.path / "d")),
    ):
        assert [line.split()[:5] for line in other.stdout.splitlines()[1:]] == [r[:5] for r in rows]
    one_line_failure(relayfs("versions", str(mnt.path / "d"), check=False), "not a versioned file")
    one_line_failure(relayfs("versions", "/tmp", check=False), "not inside a RelayFS mount")

    st = status(mnt.path / "d")
    assert st["mountpoint"] == str(mnt.path)
    assert st["cache_dir"] == str(mnt.cache)
    assert (st["folders"], st["files"], st["versions"]) == (1, 1, 3)
    assert st["pid"] == mnt.pid()
    text = relayfs("status", str(mnt.path)).stdout
    assert str(mnt.path) in text and "1 folders, 1 files, 3 versions" in text
    mnt.wait()
    assert "reachable" in relayfs("status", str(mnt.path)).stdout
    assert all(r.split()[5] == "durable" for r in relayfs("versions", str(mnt.path / "d" / "f.txt")).stdout.splitlines()[1:])


def test_rollback_commits_a_copy_without_uploading_bytes(mnt: Mount, s3_server) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(200_000)
    (mnt.path / "f.bin").write_bytes(data)
    (mnt.path / "f.bin" / "latest").write_bytes(b"second")
    mnt.wait()
    bucket = mnt.l3.removeprefix("s3://")
    blobs_before = _keys(s3_server, bucket, "blobs/")
    records_before = _keys(s3_server, bucket, "records/")

    out = relayfs("rollback", str(mnt.path / "f.bin"), "v1").stdout
    assert "v3" in out
    v3 = mnt.path / "f.bin" / "v3"
    assert v3.read_bytes() == data
    assert (mnt.path / "f.bin" / "latest").read_bytes() == data
    assert (mnt.path / "f.bin" / "v2").read_bytes() == b"second"  # nothing else changed
    sha = os.getxattr(mnt.path / "f.bin" / "v1", "user.relayfs.sha256")
    assert os.getxattr(v3, "user.relayfs.sha256") == sha
    relayfs("wait", str(mnt.path), "--timeout", "60")
    assert _keys(s3_server, bucket, "blobs/") == blobs_before  # no bytes uploaded again
    new_records = _keys(s3_server, bucket, "records/") - records_before
    assert len(new_records) == 1 and next(iter(new_records)).endswith("/v0000000003.json")
    assert os.getxattr(v3, "user.relayfs.state") == b"durable"

    # a bare number works too; unknown versions and folders are refused in one line
    assert "v4" in relayfs("rollback", "f.bin", "2", cwd=str(mnt.path)).stdout
    assert (mnt.path / "f.bin" / "v4").read_bytes() == b"second"
    one_line_failure(relayfs("rollback", str(mnt.path / "f.bin"), "v9", check=False))
    sh("mkdir dir", cwd=mnt.path)
    one_line_failure(relayfs("rollback", str(mnt.path / "dir"), "v1", check=False), r"^relayfs: /dir is not a versioned file$")
    assert sorted(os.listdir(mnt.path / "f.bin")) == ["latest", "v1", "v2", "v3", "v4"]


def test_umount_returns_after_the_daemon_exited(mnt: Mount) -> None:
    sh("echo bye > a.txt", cwd=mnt.path)
    pid = status(mnt.path)["pid"]
    assert not pid_gone(pid)
    relayfs("umount", str(mnt.path))
    assert pid_gone(pid)  # at once, no polling: umount waited for it
    assert not os.path.ismount(mnt.path)
    one_line_failure(relayfs("status", str(mnt.path), check=False), "not inside a RelayFS mount")
    # and the same mount point mounts again with the data in place
    mnt.start()
    assert sh("cat a.txt/v1", cwd=mnt.path).stdout == "bye\n"


def test_umount_of_a_plain_directory_fails(tmp_path: Path) -> None:
    one_line_failure(relayfs("umount", str(tmp_path), check=False))
