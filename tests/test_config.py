"""Unit tests of configuration: defaults <- TOML <- RELAYFS_* <- flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayfs.config import ConfigError, load_config, parse_size


def test_sizes() -> None:
    assert parse_size("64MiB") == 64 * 1024 * 1024
    assert parse_size("1G") == 1024**3
    assert parse_size(4096) == 4096
    with pytest.raises(ConfigError):
        parse_size("lots")


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('l3 = "s3://from-file"\nl1_bytes = "1MiB"\nupload_concurrency = 2\n')
    env = {"RELAYFS_L1_BYTES": "2MiB", "RELAYFS_UPLOAD_CONCURRENCY": "3"}
    cfg = load_config(f, {"upload_concurrency": 5}, env)
    assert cfg.l3 == "s3://from-file"
    assert cfg.l1_bytes == 2 * 1024 * 1024
    assert cfg.upload_concurrency == 5


def test_defaults_need_no_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(None, {}, {})
    assert cfg.l3.startswith("file://" + str(tmp_path))
    assert str(cfg.cache).startswith(str(tmp_path / ".cache" / "relayfs"))


def test_bad_settings_are_one_line_errors(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("no_such_key = 1\n")
    with pytest.raises(ConfigError, match="no_such_key"):
        load_config(f, {}, {})
    with pytest.raises(ConfigError, match="upload_concurrency"):
        load_config(None, {"upload_concurrency": "many"}, {})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", {}, {})
