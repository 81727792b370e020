"""The L3 rig: patched moto in its own process, shaping proxies in theirs, S3 clients, buckets.

Every system reaches L3 through a proxy (``endpoint``). Set-up and inspection (seeding
objects, waiting for an object to be complete, emptying buckets) go straight to moto
(``direct``), so they neither cost minutes of shaped transfer nor show up in the proxy's
request counts of the system being measured.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
ACCESS_KEY = "testing"  # moto accepts any credentials; tests/s3server.py uses these
SECRET_KEY = "testing"
REGION = "us-east-1"
SCRIPTS = Path(__file__).resolve().parent.parent

# The environment every S3 client the benchmark starts gets: the moto credentials and
# nothing from the developer's own AWS set-up (as tests/conftest.py does for tests).
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": "/nonexistent/relayfs-bench/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/relayfs-bench/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
    # no ~/.config/relayfs/config.toml of the developer's may change the mounts' settings
    "XDG_CONFIG_HOME": "/nonexistent/relayfs-bench/config",
}
AWS_ENV_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_CA_BUNDLE")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ with the moto credentials in and every other AWS_* setting out.

    AWS_CA_BUNDLE goes too: it is set on these machines, rclone 1.60 refuses to start while
    it is set (LoadCustomCABundleError), and the rig speaks plain HTTP anyway.
    """
    env = {k: v for k, v in os.environ.items() if k not in AWS_ENV_UNSET and not k.startswith("RELAYFS_")}
    env.update(AWS_ENV)
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def s3_client(endpoint: str, *, pool: int = 32, no_expect: bool = False) -> Any:
    """A boto3 S3 client as RelayFS builds one (path style, checksums only when required).

    ``no_expect`` drops the ``Expect: 100-continue`` header botocore adds to every PUT with a
    file-like body: on this link it costs one extra round trip per PUT (80 ms instead of
    40 ms for a small one), which is botocore's choice, not the link's.
    """
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=pool,
            read_timeout=300,
        ),
    )
    if no_expect:
        def drop_expect(params: dict[str, Any], **_: Any) -> None:
            params.get("headers", {}).pop("Expect", None)

        client.meta.events.register_last("before-call.s3", drop_expect)
    return client


def _child_env() -> dict[str, str]:
    return clean_env({"PYTHONPATH": str(SCRIPTS), "PYTHONUNBUFFERED": "1"})


@dataclass
class ProxyProc:
    """One running shaping proxy."""

    proc: subprocess.Popen[str]
    port: int
    control: int
    delay_ms: float
    bandwidth_mbps: float
    per_conn_mbps: float

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _ask(self, cmd: str) -> str:
        with socket.create_connection((HOST, self.control), timeout=10) as s:
            s.sendall(cmd.encode() + b"\n")
            f = s.makefile("r")
            return f.readline().strip()

    def reset(self) -> None:
        self._ask("reset")

    def outage(self, down: bool) -> None:
        """Cut every connection and refuse new ones (an unreachable L3), or end that."""
        self._ask("down" if down else "up")

    def stats(self) -> dict[str, Any]:
        return json.loads(self._ask("stats"))

    def describe(self) -> str:
        cap = f"{self.bandwidth_mbps:g} MB/s shared per direction" if self.bandwidth_mbps else "no bandwidth cap"
        if self.per_conn_mbps:
            cap += f", {self.per_conn_mbps:g} MB/s per connection"
        return f"{self.delay_ms:g} ms each way, {cap}"


@dataclass
class Rig:
    """moto plus its proxies; ``close()`` ends them all."""

    delay_ms: float
    bandwidth_mbps: float
    per_conn_mbps: float
    connect_rtt: bool
    workdir: Path
    moto: subprocess.Popen[bytes] | None = None
    moto_port: int = 0
    proxy: ProxyProc | None = None  # the shared-cap link every system uses
    wan: ProxyProc | None = None  # the same plus a per-connection cap, for extra W2 rows
    notes: list[str] = field(default_factory=list)
    _log: Any = None

    @property
    def direct(self) -> str:
        return f"http://{HOST}:{self.moto_port}"

    def start(self) -> None:
        self._log = open(self.workdir / "moto.log", "wb")
        for _attempt in range(5):
            port = free_port()
            self.moto = subprocess.Popen(
                [sys.executable, "-m", "relaybench.motoserver", "--port", str(port)],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=_child_env(),
            )
            if self._wait_answering(f"http://{HOST}:{port}/"):
                self.moto_port = port
                break
        else:
            raise RuntimeError(f"moto would not start; see {self.workdir / 'moto.log'}")
        log.info("moto (patched, objects in RAM) pid %d on port %d", self.moto.pid, self.moto_port)
        self.proxy = self._start_proxy(0.0)
        if self.per_conn_mbps > 0:
            self.wan = self._start_proxy(self.per_conn_mbps)
        self.notes += [
            "moto patches (benchmark only, scripts/relaybench/motoserver.py): HTTP/1.1 keep-alive "
            "(stock moto closes the connection after every answer); ranged GETs read only the asked-for "
            "bytes (stock moto copies the whole object per GET); HEAD ?versionId=null on an unversioned "
            "bucket answered as S3 does (stock moto's 400 makes rclone 1.60 upload multipart files twice); "
            "multipart completion joins the parts once (memory only).",
            f"link: {self.proxy.describe()}; per chunk, pipelined; a new connection "
            + ("pays one round trip" if self.connect_rtt else "costs no extra round trip") + ".",
        ]

    def _wait_answering(self, url: str, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.moto is not None and self.moto.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    r.read()
                return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def _start_proxy(self, per_conn: float) -> ProxyProc:
        cmd = [sys.executable, "-m", "relaybench.proxy", "--backend-port", str(self.moto_port),
               "--delay-ms", str(self.delay_ms), "--bandwidth-mbps", str(self.bandwidth_mbps),
               "--per-conn-mbps", str(per_conn)]
        if self.connect_rtt:
            cmd.append("--connect-rtt")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log,
                                text=True, env=_child_env())
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the proxy did not start; see {self.workdir / 'moto.log'}")
        ports = json.loads(line)
        p = ProxyProc(proc, ports["port"], ports["control"], self.delay_ms, self.bandwidth_mbps, per_conn)
        log.info("proxy pid %d on port %d: %s", proc.pid, p.port, p.describe())
        return p

    def close(self) -> None:
        for p in (self.wan, self.proxy):
            if p is not None:
                p.proc.terminate()
                try:
                    p.proc.wait(10)
                except subprocess.TimeoutExpired:
                    p.proc.kill()
        if self.moto is not None:
            self.moto.terminate()
            try:
                self.moto.wait(10)
            except subprocess.TimeoutExpired:
                self.moto.kill()
                self.moto.wait(10)
        if self._log is not None:
            self._log.close()

    # -- buckets

    def client(self, *, direct: bool = True, **kw: Any) -> Any:
        assert self.proxy is not None
        return s3_client(self.direct if direct else self.proxy.endpoint, **kw)

    def new_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def drop_bucket(self, name: str) -> None:
        """Empty and delete a bucket so moto gives its RAM back (objects live in RAM)."""
        c = self.client()
        try:
            for page in c.get_paginator("list_objects_v2").paginate(Bucket=name):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
                if keys:
                    c.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
            for page in c.get_paginator("list_multipart_uploads").paginate(Bucket=name):
                for u in page.get("Uploads", ()):
                    c.abort_multipart_upload(Bucket=name, Key=u["Key"], UploadId=u["UploadId"])
            c.delete_bucket(Bucket=name)
        except Exception as e:  # a leftover bucket costs RAM, not correctness
            log.warning("could not drop bucket %s: %s", name, e)

    def object_size(self, bucket: str, key: str) -> int | None:
        try:
            return int(self.client().head_object(Bucket=bucket, Key=key)["ContentLength"])
        except Exception:
            return None


def make_workdir(base: str | None) -> Path:
    return Path(tempfile.mkdtemp(prefix="relaybench-", dir=base))
