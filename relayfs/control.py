"""The control socket: how ``relayfs status/jobs/versions/rollback/umount`` reach a mount.

The daemon listens on ``<cache>/control.sock`` (mode 0600, in the 0700 cache dir). The
mount's root answers the extended attribute ``user.relayfs.control`` with that path, so a
client finds the daemon from any path inside the mount. One request per connection: a
JSON object on one line, answered by one JSON line (``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CONTROL_XATTR = "user.relayfs.control"
SUN_PATH_MAX = 107  # bytes a sockaddr_un path may hold (108 with its NUL)


class ControlError(Exception):
    """The daemon could not be reached or refused the request; str() is one line."""


def find_mount(path: str | os.PathLike[str]) -> tuple[Path, str]:
    """The RelayFS mount point holding ``path``, and ``path`` relative to it."""
    p = Path(os.path.abspath(path))
    probe = p
    while True:
        if os.path.ismount(probe):
            try:
                os.getxattr(probe, CONTROL_XATTR)
            except OSError:
                raise ControlError(f"{path} is not inside a RelayFS mount") from None
            rel = os.path.relpath(p, probe)
            return probe, "" if rel == "." else rel
        if probe.parent == probe:
            raise ControlError(f"{path} is not inside a RelayFS mount")
        probe = probe.parent


def socket_of(mountpoint: Path) -> str:
    try:
        return os.getxattr(mountpoint, CONTROL_XATTR).decode()
    except OSError as e:
        raise ControlError(f"cannot reach the RelayFS daemon of {mountpoint}: {e.strerror}") from None


@contextlib.contextmanager
def address(sock_path: str) -> Iterator[str]:
    """A name for ``sock_path`` that fits in a sockaddr_un, to bind or connect with.

    A short path is used as is; a longer one (a deep cache dir) is reached through an open
    descriptor of its folder, ``/proc/self/fd/N/control.sock``, valid until the block ends.
    """
    if len(os.fsencode(sock_path)) <= SUN_PATH_MAX:
        yield sock_path
        return
    fd = os.open(os.path.dirname(sock_path), os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(sock_path)}"
    finally:
        os.close(fd)


def request(sock_path: str, op: str, timeout: float | None = 30.0, **args: Any) -> dict[str, Any]:
    """Send one request to a daemon and return its answer (raises ControlError).

    ``timeout`` None waits as long as the daemon works (``fsck`` hashes the whole cache).
    """
    msg = json.dumps({"op": op, **args}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            with address(sock_path) as addr:
                s.connect(addr)
            s.sendall(msg)
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        raise ControlError(f"cannot reach the RelayFS daemon at {sock_path}: {e}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError("the RelayFS daemon sent an unreadable answer") from None
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error", "request failed")))
    return answer
