"""Unit tests of configuration: defaults <- TOML <- RELAYFS_* <- flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayfs.config import ConfigError, load_config, parse_size

MiB = 1024 * 1024


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


def test_storj_preset_from_url_or_provider(tmp_path: Path) -> None:
    """storj:// and [l3] provider = "storj" both mean Storj's gateway with 64 MiB parts."""
    by_url = load_config(None, {"l3": "storj://bkt/team"}, {})
    f = tmp_path / "c.toml"
    f.write_text('[l3]\nurl = "s3://bkt/team"\nprovider = "storj"\n')
    by_file = load_config(f, {}, {})
    by_env = load_config(None, {"l3": "s3://bkt/team"}, {"RELAYFS_L3_PROVIDER": "Storj"})
    for cfg in (by_url, by_file, by_env):
        assert cfg.l3_provider == "storj"
        assert cfg.s3_endpoint == "https://gateway.storjshare.io"
        assert (cfg.part_size, cfg.transfer_threads, cfg.upload_concurrency) == (64 * MiB, 2, 2)
    assert by_file.l3 == "s3://bkt/team"


def test_plain_s3_keeps_its_defaults_and_explicit_settings_win(tmp_path: Path) -> None:
    s3 = load_config(None, {"l3": "s3://bkt", "s3_endpoint": "http://127.0.0.1:9000"}, {})
    assert (s3.l3_provider, s3.s3_endpoint) == ("s3", "http://127.0.0.1:9000")
    assert (s3.part_size, s3.transfer_threads, s3.upload_concurrency) == (8 * MiB, 4, 4)
    mine = load_config(
        None,
        {"l3": "storj://bkt", "s3_endpoint": "http://127.0.0.1:7777", "part_size": "16MiB", "upload_concurrency": 6},
        {"RELAYFS_TRANSFER_THREADS": "3"},
    )
    assert mine.s3_endpoint == "http://127.0.0.1:7777"  # a self-hosted gateway, or a test proxy
    assert (mine.part_size, mine.transfer_threads, mine.upload_concurrency) == (16 * MiB, 3, 6)
    local = load_config(None, {"l3": "file:///tmp/store"}, {})
    assert (local.l3_provider, local.s3_endpoint, local.part_size) == ("", None, 8 * MiB)


@pytest.mark.parametrize(
    ("l3", "provider", "message"),
    [
        ("s3://bkt", "backblaze", r"l3_provider: unknown provider 'backblaze' \(expected one of: s3, storj\)"),
        ("file:///tmp/store", "storj", r"l3_provider 'storj' needs l3 = \"s3://"),
        ("storj://bkt", "s3", r"contradicts l3 'storj://bkt'"),
    ],
)
def test_bad_provider_is_a_one_line_error(l3: str, provider: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, {"l3": l3, "l3_provider": provider}, {})
    assert "\n" not in str(e.value)


def test_a_relative_cache_dir_is_made_absolute(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, {"cache_dir": "c", "l3": "file:///tmp/x"}, environ={})
    assert cfg.cache == tmp_path / "c"  # the control socket is found from any directory
