"""Shared fixtures. S3 tests run against a real moto server process over HTTP (tests/s3server.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from faultproxy import FaultProxy
from s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server

# Environment for the whole test session. boto3's default credential chain (used by S3Store
# and inherited by any subprocess a test starts) then finds the moto credentials, and nothing
# from the developer's own AWS set-up leaks in: a stray AWS_PROFILE or AWS_ENDPOINT_URL, or a
# real ~/.aws/credentials, would otherwise change which endpoint or identity tests use.
_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": "/nonexistent/relayfs-tests/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/relayfs-tests/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",  # never wait on the instance-metadata service
}
_AWS_ENV_UNSET = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CA_BUNDLE",  # only matters for https; the moto server speaks plain http
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--crash-rounds", type=int, default=20, help="rounds of the kill -9 test (test_crash.py)")
    parser.addoption("--crash-seed", type=int, default=None, help="replay test_crash.py's random choices")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto server for the session. ``stop()``/``start()`` simulate an outage and keep data."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in _AWS_ENV.items():
            mp.setenv(name, value)
        for name in _AWS_ENV_UNSET:
            mp.delenv(name, raising=False)
        server = S3Server()
        server.start()
        try:
            yield server
        finally:
            server.close()


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket per test, so tests never see each other's keys."""
    if not s3_server.running:
        s3_server.start()  # a previous test may have left an outage in place
    return s3_server.create_bucket(f"relayfs-test-{uuid.uuid4().hex[:16]}")


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A fault proxy in front of the test server; point a mount at ``proxy.endpoint``."""
    p = FaultProxy(backend_port=int(s3_server.endpoint.rsplit(":", 1)[1]))
    yield p
    p.close()


@pytest.fixture
def fast_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short job backoff for mounts started after this (the CLI hands os.environ to the daemon)."""
    monkeypatch.setenv("RELAYFS_RETRY_BASE_SECONDS", "0.2")
    monkeypatch.setenv("RELAYFS_RETRY_MAX_SECONDS", "1")


# -- mounts -------------------------------------------------------------------------------
from mount import Mount  # noqa: E402


@pytest.fixture
def make_mount(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator:
    """Factory for mounts on the test server (or any L3 URL); all are unmounted at the end
    and the test fails if a daemon logged an error the test did not declare."""
    mounts: list[Mount] = []

    def make(l3: str, *, endpoint: str | None = "", start: bool = True, extra: tuple[str, ...] = ()) -> Mount:
        root = tmp_path_factory.mktemp("mount")
        m = Mount(root, l3, s3_server.endpoint if endpoint == "" else endpoint, extra)
        mounts.append(m)
        if start:
            m.start()
        return m

    yield make
    problems = []
    for m in mounts:
        try:
            m.stop()
        except AssertionError as e:
            problems.append(str(e))
        problems += m.errors()
    assert not problems, "daemon logged unexpected errors:\n" + "\n".join(problems)


@pytest.fixture
def mnt(make_mount, bucket: str) -> Mount:
    """A RelayFS mount on a fresh bucket of the test S3 server."""
    return make_mount(f"s3://{bucket}")
