"""Security defaults: the mount is private to its user unless ``--allow-other``, the cache dir
is mode 0700, S3 credentials set as settings never show up in logs, ``relayfs status``,
``.jobs/`` or the cache, and a config file holding them that others can read is refused.

Other users are played by ``nobody`` through ``setpriv``; the mounts live in a folder that
``nobody`` may traverse, so only RelayFS itself decides what it may see.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from mount import Mount, poll, relayfs, sh
from relayfs.config import MASK, ConfigError, load_config

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *cmd], capture_output=True, text=True, timeout=30)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def public_mount(s3_server, bucket: str) -> Iterator[Callable[..., Mount]]:  # type: ignore[no-untyped-def]
    """Mounts under a folder of /tmp that other users may traverse (pytest's tmp is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="relayfs-sec-", dir="/tmp"))
    os.chmod(root, 0o755)
    mounts: list[Mount] = []

    def make(*extra: str, start: bool = True) -> Mount:
        m = Mount(root / f"m{len(mounts)}", f"s3://{bucket}", s3_server.endpoint, extra)
        os.chmod(m.root, 0o755)
        mounts.append(m)
        if start:
            m.start()
        return m

    try:
        yield make
    finally:
        problems: list[str] = []
        for m in mounts:
            m.stop()
            problems += m.errors()
        shutil.rmtree(root, ignore_errors=True)
        assert not problems, problems


def test_other_users_are_kept_out_unless_allow_other(public_mount) -> None:  # type: ignore[no-untyped-def]
    m = public_mount()
    sh("mkdir d && echo hello > d/f.txt", cwd=m.path)
    assert sorted(os.listdir(m.path)) == [".jobs", "d"]  # its own user sees everything
    for cmd in (["ls", str(m.path)], ["stat", str(m.path / "d")], ["cat", str(m.path / "d" / "f.txt" / "v1")],
                ["ls", str(m.path / ".jobs")]):
        done = as_nobody(*cmd)
        assert done.returncode != 0 and "Permission denied" in done.stderr, (cmd, done.stderr)
    m.stop()

    m.extra = ["--allow-other"]
    m.start()
    done = as_nobody("ls", str(m.path / "d"))
    assert done.returncode == 0 and done.stdout.split() == ["f.txt"], done.stderr
    assert as_nobody("cat", str(m.path / "d" / "f.txt" / "v1")).stdout == "hello\n"
    # seeing is not owning: the mounting user's folders keep their modes
    done = as_nobody("sh", "-c", f"echo x > {m.path / 'd' / 'new.txt'}")
    assert done.returncode != 0 and "Permission denied" in done.stderr
    assert sorted(os.listdir(m.path / "d")) == ["f.txt"]


def test_cache_dir_is_private(public_mount) -> None:  # type: ignore[no-untyped-def]
    m = public_mount()  # the CLI creates the cache dir
    sh("echo secret-data > f.txt", cwd=m.path)
    assert mode(m.cache) == 0o700
    assert mode(m.cache / "control.sock") == 0o600
    for sub in ("blobs", "work", "thaw"):
        assert mode(m.cache / sub) == 0o700, sub
    for target in (m.cache, m.cache / "daemon.log", m.cache / "catalog.db"):
        done = as_nobody("cat" if target.is_file() else "ls", str(target))
        assert done.returncode != 0 and "Permission denied" in done.stderr, target
    m.stop()
    os.chmod(m.cache, 0o755)  # loosened behind RelayFS's back: the next mount tightens it
    m.start()
    assert mode(m.cache) == 0o700


def job_texts(m: Mount) -> list[str]:
    """What every ``.jobs/`` entry reads as now."""
    return [(m.path / ".jobs" / j).read_text() for j in sorted(os.listdir(m.path / ".jobs"))]


def _secrets() -> tuple[str, str]:
    token = uuid.uuid4().hex.upper()
    return f"AKIARELAYFS{token[:9]}", f"relayfs-secret-{uuid.uuid4().hex}"


def _without_aws_credentials() -> dict[str, str]:
    """The test environment minus the moto credentials: only RelayFS's settings can work."""
    return {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}


def _assert_never_shown(m: Mount, env: dict[str, str], s3_server, secrets: tuple[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Use the mount (including an L3 outage, so jobs carry errors) and look everywhere."""
    s3_server.stop()
    try:
        sh("mkdir d && echo one > d/a.txt && echo two > d/a.txt/latest", cwd=m.path)
        (m.path / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
        retrying = poll(lambda: [t for t in job_texts(m) if "state: retrying" in t], "a job to retry")
        assert "last_error: \n" not in retrying[0]  # it carries L3's error text
        shown = [*retrying, relayfs("status", "--json", str(m.path), env=env).stdout,
                 relayfs("status", str(m.path), env=env).stdout,
                 relayfs("jobs", str(m.path), env=env).stdout]
    finally:
        s3_server.start()
    relayfs("wait", str(m.path), "--timeout", "120", env=env, timeout=180)
    shown += [relayfs("status", "--json", str(m.path), env=env).stdout,
              relayfs("versions", str(m.path / "d" / "a.txt"), env=env).stdout,
              relayfs("jobs", str(m.path), env=env).stdout]
    shown += job_texts(m)
    cmdline = Path(f"/proc/{m.pid()}/cmdline").read_bytes().decode(errors="replace")
    relayfs("umount", str(m.path), env=env)
    everything = "\n".join(shown) + cmdline
    cache_files = [p for p in m.cache.rglob("*") if p.is_file() and not p.is_socket()]
    assert any(p.name == "catalog.db" for p in cache_files) and m.log in cache_files
    for secret in secrets:
        assert secret not in everything
        for path in cache_files:  # daemon.log, catalog.db and its WAL, blobs
            assert secret.encode() not in path.read_bytes(), path


def test_credentials_from_env_never_appear(make_mount, s3_server, bucket: str) -> None:  # type: ignore[no-untyped-def]
    key, secret = _secrets()
    env = dict(_without_aws_credentials(), RELAYFS_S3_ACCESS_KEY_ID=key, RELAYFS_S3_SECRET_ACCESS_KEY=secret)
    m = make_mount(f"s3://{bucket}", start=False)
    relayfs("mount", *m.args(), env=env)  # it mounts: the settings reached boto3
    _assert_never_shown(m, env, s3_server, (key, secret))


def test_credentials_from_a_private_config_file_never_appear(make_mount, s3_server, bucket: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key, secret = _secrets()
    conf = tmp_path / "relayfs.toml"
    conf.write_text(f'[s3]\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"\n')
    os.chmod(conf, 0o600)
    env = _without_aws_credentials()
    m = make_mount(f"s3://{bucket}", start=False)
    relayfs("mount", *m.args(), "--config", str(conf), env=env)
    _assert_never_shown(m, env, s3_server, (key, secret))


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o620])
def test_config_file_with_secrets_that_others_can_read_is_refused(tmp_path: Path, loose: int) -> None:
    key, secret = _secrets()
    conf = tmp_path / "relayfs.toml"
    conf.write_text(f's3_access_key_id = "{key}"\ns3_secret_access_key = "{secret}"\n')
    os.chmod(conf, loose)
    (tmp_path / "m").mkdir()
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAYFS_", "XDG_"))}
    for how in (["--config", str(conf)], []):  # an explicit file, and RELAYFS_CONFIG
        done = relayfs("mount", str(tmp_path / "m"), "--cache-dir", str(tmp_path / "c"), *how, check=False,
                       env=dict(env, HOME=str(home), **({} if how else {"RELAYFS_CONFIG": str(conf)})))
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert str(conf) in lines[0] and f"{loose:04o}" in lines[0] and "chmod 600" in lines[0], lines[0]
        assert key not in done.stderr + done.stdout and secret not in done.stderr + done.stdout
        assert not os.path.ismount(tmp_path / "m")
    os.chmod(conf, 0o600)
    assert load_config(conf, {}, {}).s3_secret_access_key == secret


def test_credential_settings_are_masked(tmp_path: Path) -> None:
    key, secret = _secrets()
    cfg = load_config(None, {}, {"RELAYFS_S3_ACCESS_KEY_ID": key, "RELAYFS_S3_SECRET_ACCESS_KEY": secret})
    assert (cfg.s3_access_key_id, cfg.s3_secret_access_key) == (key, secret)
    shown = cfg.shown()
    assert shown["s3_access_key_id"] == shown["s3_secret_access_key"] == MASK
    assert key not in repr(cfg) + str(shown) and secret not in repr(cfg) + str(shown)
    assert load_config(None, {}, {}).shown()["s3_secret_access_key"] is None
    with pytest.raises(ConfigError, match="set together") as info:
        load_config(None, {}, {"RELAYFS_S3_SECRET_ACCESS_KEY": secret})
    assert secret not in str(info.value)
    plain = tmp_path / "plain.toml"  # a readable config file without secrets is fine
    plain.write_text('l1_bytes = "1MiB"\n')
    os.chmod(plain, 0o644)
    assert load_config(plain, {}, {}).l1_bytes == 1024 * 1024
