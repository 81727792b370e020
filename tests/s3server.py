"""A real S3 endpoint for tests: moto's standalone server in its own process.

Tests talk to it over HTTP exactly as RelayFS talks to S3; nothing is patched in-process.

Outages are simulated by a small TCP gate in front of moto: ``stop()`` closes the public port
and resets every open connection, ``start()`` opens it again on the same port. The moto process
keeps running behind the gate, so buckets and objects written before an outage are still there
after it -- restarting moto itself would silently wipe its in-memory state. ``close()`` ends
everything for good.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import boto3
import botocore.config

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def free_port() -> int:
    """A port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _reset(sock: socket.socket) -> None:
    """Drop a connection like a crashed server would: RST, and wake any thread reading it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)  # a blocked recv() would otherwise never return
    with contextlib.suppress(OSError):
        sock.close()


class _Gate:
    """A TCP forwarder from a public port to moto that can be closed and reopened."""

    def __init__(self, port: int, backend_port: int) -> None:
        self.port = port
        self.backend_port = backend_port
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._thread: threading.Thread | None = None

    @property
    def is_open(self) -> bool:
        return self._listener is not None

    def open(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:
            try:
                listener.bind((HOST, self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    listener.close()
                    raise
                time.sleep(0.1)
        listener.listen(128)
        listener.settimeout(0.1)  # lets the accept loop notice close() promptly
        self._listener = listener
        self._thread = threading.Thread(
            target=self._accept_loop, args=(listener,), name=f"s3gate-{self.port}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Refuse new connections and reset every open one."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            _reset(conn)

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                backend = socket.create_connection((HOST, self.backend_port))
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns.update((client, backend))
            threading.Thread(target=self._serve, args=(client, backend), daemon=True).start()

    def _serve(self, client: socket.socket, backend: socket.socket) -> None:
        """Forward both ways until both sides are done, then forget the pair."""
        answer = threading.Thread(target=self._pump, args=(backend, client), daemon=True)
        answer.start()
        self._pump(client, backend)
        answer.join()
        with self._lock:
            self._conns.discard(client)
            self._conns.discard(backend)
        client.close()
        backend.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):  # a reset by close() ends the pump too
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)  # pass the half-close on


class S3Server:
    """moto's S3 server behind a stoppable port. ``endpoint`` stays the same for its lifetime."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        self._backend_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._gate: _Gate | None = None

    # -- lifecycle

    @property
    def running(self) -> bool:
        """True while the public endpoint accepts connections."""
        return self._gate is not None and self._gate.is_open

    def start(self) -> None:
        """Launch moto on first use, then (re)open the public port; returns once S3 answers."""
        if self._proc is None or self._proc.poll() is not None:
            self._launch_backend()
        if self._gate is None:
            self._gate = _Gate(self.port, self._backend_port)
        self._gate.open()
        self._wait_until_answering(self.endpoint)

    def stop(self) -> None:
        """Simulate an outage: connections are refused and open ones reset; data is kept."""
        if self._gate is not None:
            self._gate.close()

    def close(self) -> None:
        """End the moto process and the gate for good (all data is lost)."""
        self.stop()
        self._gate = None
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _launch_backend(self) -> None:
        if self._log_file is None:
            # A file, not a pipe: a pipe nobody reads would eventually block moto.
            self._log_file = tempfile.NamedTemporaryFile(
                prefix="moto-server-", suffix=".log", delete=False
            )
        for _attempt in range(5):
            port = free_port()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            try:
                self._wait_until_answering(f"http://{HOST}:{port}")
            except RuntimeError:
                if self._proc.poll() is None:
                    raise
                continue  # most likely someone took the port between free_port() and bind
            self._backend_port = port
            if self._gate is not None:
                self._gate.backend_port = port
            log.info("moto server pid %d on port %d (log %s)", self._proc.pid, port, self._log_file.name)
            return
        raise RuntimeError(f"moto server would not start; see {self._log_file.name}")

    def _wait_until_answering(self, url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._proc.returncode}")
            try:
                with urllib.request.urlopen(url + "/", timeout=2) as response:
                    response.read()
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer means it is serving
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{url} did not answer within {START_TIMEOUT:.0f}s")

    # -- conveniences

    def client(self) -> Any:
        """A plain boto3 S3 client for this server, for test set-up and inspection."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 2, "mode": "standard"},
            ),
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name
