"""One Config value, built from defaults <- TOML file <- RELAYFS_* environment <- flags.

Every setting has one name used everywhere: the TOML key, the upper-cased environment
variable with a ``RELAYFS_`` prefix, and the CLI flag with dashes (``cache_dir`` /
``RELAYFS_CACHE_DIR`` / ``--cache-dir``). S3 credentials come from boto3's usual chain
(environment, ``~/.aws``) unless ``s3_access_key_id``/``s3_secret_access_key`` are set (TOML or
environment only: a flag would show them in ``ps``). Those two are masked wherever settings
are shown, and a config file holding them must not be readable by group or others.

A TOML table flattens into its keys: ``[l3] provider = "storj"`` is ``l3_provider``, and
``[l3] url = "s3://..."`` is ``l3`` itself (TOML allows no ``l3 = ...`` beside an ``[l3]`` table).
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .store.providers import PROVIDERS, S3

MiB = 1024 * 1024
GiB = 1024 * MiB

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": MiB, "g": GiB, "t": 1024 * GiB}


class ConfigError(ValueError):
    """A setting that cannot be used; the message is one line naming the setting."""


def parse_size(value: Any, name: str = "size") -> int:
    """Accept 1048576, "1048576", "64MiB", "1G", "512k" (binary units)."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a size, got {value!r}")
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ConfigError(f"{name}: cannot read {value!r} as a size (try 256MiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def default_store_url() -> str:
    """The embedded default L3: a local directory, so a first mount needs no account."""
    data = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return (data / "relayfs" / "store").as_uri()


def _default_cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "relayfs"


def default_config_file() -> Path:
    config = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return config / "relayfs" / "config.toml"


@dataclass
class Config:
    """Effective settings of one mount (or one SDK store)."""

    l3: str = field(default_factory=default_store_url)
    l3_provider: str = ""  # "s3" or "storj"; "": what the l3 URL's scheme says
    cache_dir: Path | None = None  # None: derived from l3 under ~/.cache/relayfs/
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_read_timeout: float = 60.0  # seconds an S3 answer may stall before the request is retried
    s3_access_key_id: str | None = field(default=None, repr=False)  # None: boto3's chain
    s3_secret_access_key: str | None = field(default=None, repr=False)
    # 0: the provider's default (relayfs/store/providers.py): 8 MiB, 4, 4; Storj 64 MiB, 2, 2
    part_size: int = 0
    transfer_threads: int = 0
    upload_concurrency: int = 0
    l1_bytes: int = 256 * MiB
    l2_bytes: int = 20 * GiB
    jobs_keep_seconds: float = 3600.0
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    poll_seconds: float = 10.0  # how often L3 is asked for versions other clients wrote; 0: never
    allow_other: bool = False
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        self._apply_provider()
        if self.cache_dir is None:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.l3).strip("_")[-100:]
            self.cache_dir = _default_cache_root() / slug
        self.cache_dir = Path(os.path.abspath(Path(self.cache_dir).expanduser()))  # the daemon and CLI may differ in cwd

    def _apply_provider(self) -> None:
        """Settle ``l3_provider`` and fill what was left unset from its preset.

        ``storj://B/P`` and ``s3://B/P`` with provider storj both mean Storj's gateway; an
        explicit ``s3_endpoint`` (a self-hosted gateway, a test proxy) still wins, as do
        explicit part size and concurrency settings.
        """
        name = self.l3_provider.strip().lower()
        if name and name not in PROVIDERS:
            raise ConfigError(
                f"l3_provider: unknown provider {self.l3_provider!r} (expected one of: {', '.join(PROVIDERS)})"
            )
        scheme = urllib.parse.urlsplit(self.l3).scheme.lower()
        if scheme == "storj":
            if name not in ("", "storj"):
                raise ConfigError(f"l3_provider: {name!r} contradicts l3 {self.l3!r} (a storj:// URL is Storj)")
            name = "storj"
        elif name and scheme != "s3":
            raise ConfigError(f"l3_provider {name!r} needs l3 = \"s3://BUCKET[/PREFIX]\", not {self.l3!r}")
        elif scheme == "s3":
            name = name or "s3"
        self.l3_provider = name  # "" for a local directory
        preset = PROVIDERS.get(name, S3)
        self.s3_endpoint = self.s3_endpoint or preset.endpoint
        self.part_size = self.part_size or preset.part_size
        self.transfer_threads = self.transfer_threads or preset.transfer_threads
        self.upload_concurrency = self.upload_concurrency or preset.upload_concurrency

    @property
    def cache(self) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir

    def shown(self) -> dict[str, Any]:
        """The settings as plain values, safe to print: credentials are masked."""
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}
        for name in SECRETS:
            if out[name] is not None:
                out[name] = MASK
        return out


SECRETS = ("s3_access_key_id", "s3_secret_access_key")
MASK = "********"


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_SIZES = {"part_size", "l1_bytes", "l2_bytes"}
_INTS = {"transfer_threads", "upload_concurrency"}
_FLOATS = {"poll_seconds", "jobs_keep_seconds", "retry_base_seconds", "retry_max_seconds", "s3_read_timeout"}
_BOOLS = {"allow_other"}


def _coerce(name: str, value: Any) -> Any:
    if name in _SIZES:
        return parse_size(value, name)
    try:
        if name in _INTS:
            out = int(value)
            if out < 1:
                raise ConfigError(f"{name}: must be at least 1, got {value!r}")
            return out
        if name in _FLOATS:
            return float(value)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if name in _BOOLS:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if name == "cache_dir":
        return Path(str(value)).expanduser()
    return str(value)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
            mode = os.fstat(f.fileno()).st_mode
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):  # [l3] endpoint = ... reads as l3_endpoint style keys
            for sub, subval in value.items():
                flat[f"{key}_{sub}"] = subval
        else:
            flat[key] = value
    if "l3_url" in flat:  # TOML itself refuses it beside a plain l3 = ...
        flat["l3"] = flat.pop("l3_url")
    unknown = sorted(set(flat) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting {unknown[0]!r}")
    if any(name in flat for name in SECRETS) and mode & 0o077:
        raise ConfigError(
            f"config file {path} holds S3 credentials but group or others can access it "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
    return flat


def load_config(
    config_file: str | os.PathLike[str] | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Merge defaults, the TOML file, ``RELAYFS_*`` variables and flags (None = unset)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or env.get("RELAYFS_CONFIG")
    if path:
        values.update(_read_toml(Path(path).expanduser()))
    elif default_config_file().exists():
        values.update(_read_toml(default_config_file()))
    for name in _FIELDS:
        raw = env.get(f"RELAYFS_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = raw
    for name, value in (flags or {}).items():
        if value is not None:
            if name not in _FIELDS:
                raise ConfigError(f"unknown setting {name!r}")
            values[name] = value
    if bool(values.get(SECRETS[0])) != bool(values.get(SECRETS[1])):
        raise ConfigError("s3_access_key_id and s3_secret_access_key must be set together")
    return Config(**{k: _coerce(k, v) for k, v in values.items()})
