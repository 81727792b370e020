"""SPEC "Bad input and faults": hostile or foreign bucket content is skipped with a log line and
nothing escapes the mount point.

One mount writes real content; boto3 then adds, next to it, keys RelayFS never wrote: foreign
keys everywhere, namespace events that climb out of the mount or carry undecodable names,
events that are not JSON, clashes, and version records that lie. A second mount with an empty
cache rebuilds from that bucket: it must show exactly the real content, name every skipped key
in a WARNING, create nothing outside its mount point and cache dir, and keep serving.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from relayfs.store import layout
from mount import relayfs, sh

MiB = 1024 * 1024
ORIGIN = "0badc0de"


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under a mount except .jobs: folders map to None, files to their bytes."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".":
            dirnames.remove(".jobs")
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = None
        for f in filenames:
            out[os.path.normpath(os.path.join(rel, f))] = (Path(dirpath) / f).read_bytes()
    return out


def record(fid: str, number: int, data: bytes, **override: Any) -> bytes:
    """A version record as RelayFS writes it, with fields replaced by ``override``."""
    body: dict[str, Any] = {
        "format": 1, "file_id": fid, "num": number, "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data), "mtime_ns": time.time_ns(), "chunk_size": MiB,
        "chunks": [hashlib.sha256(data[i:i + MiB]).hexdigest() for i in range(0, max(len(data), 1), MiB)],
        "origin": ORIGIN,
    }
    body.update(override)
    return json.dumps(body).encode()


def event(op: str, path: Any, **fields: Any) -> bytes:
    return json.dumps({"format": 1, "op": op, "path": path, "mtime_ns": time.time_ns(), **fields}).encode()


def test_hostile_keys_are_skipped_and_nothing_escapes(make_mount, bucket: str, s3_server) -> None:  # type: ignore[no-untyped-def]
    a = make_mount(f"s3://{bucket}")
    big = os.urandom(MiB + 4321)
    sh("mkdir -p docs/sub keep && echo one > docs/a.txt && echo two > docs/a.txt/latest && echo k > keep/k.txt", cwd=a.path)
    (a.path / "big.bin").write_bytes(big)
    a.wait()
    good = snapshot(a.path)
    client = s3_server.client()
    events = [ev for o in client.list_objects_v2(Bucket=bucket, Prefix="ns/")["Contents"]
              for _, ev in layout.ns_events(o["Key"], client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())]
    fid_a = next(ev.file_id for ev in events if ev.op == "mkfile" and ev.path == "docs/a.txt")
    a.stop()

    b = make_mount(f"s3://{bucket}", start=False)
    sentinel = b.root / "sentinel"  # next to the mount point: must stay empty
    sentinel.mkdir()
    etc_name = f"/etc/relayfs-hostile-{uuid.uuid4().hex[:8]}"
    skipped: list[str] = []  # every key the mount must skip with a WARNING naming it

    def put(key: str, body: bytes = b"x") -> None:
        client.put_object(Bucket=bucket, Key=key, Body=body)
        skipped.append(key)

    # keys RelayFS never writes, at the top level and under each of its prefixes
    for key in (
        "README.txt", "/abs-key", "a//b", "\u202egnp.exe", "ns/notes.txt", "ns/../../etc/x",
        "ns/0000000000001-ZZZZZZZZ-00000001.json", "ns/sub/0000000000001-0badc0de-00000001.json",
        "records/readme", f"records/{fid_a}/v1.json", f"records/{fid_a}/v0000000001.json.bak",
        f"records/{fid_a}/x/v0000000001.json", "records/\x01\x1b[31mred", "blobs/readme",
        f"blobs/zz/{'ab' * 32}", f"blobs/ab/{'ab' * 32}.tmp", f"blobs/cd/{'ab' * 32}",
    ):
        put(key)

    # namespace events with valid keys (after the real ones) and hostile bodies
    seq = iter(range(1, 10_000))
    ms = int(time.time() * 1000) + 1000
    bad_events: list[bytes] = [
        event("mkdir", "../escape"),
        event("mkdir", "../sentinel/escape"),
        event("mkfile", str(sentinel / "abs"), file_id=uuid.uuid4().hex),
        event("mkdir", etc_name),
        event("mkdir", "a/../../b"),
        event("mkdir", "docs/../../sentinel/up"),
        event("rename", "docs", to="../sentinel/docs"),
        event("rename", "keep", to="/tmp/relayfs-hostile"),
        event("mkdir", "x" * 256),
        event("mkdir", "nul\u0000name"),
        event("mkdir", "lone\udcffsurrogate"),
        b'{"format":1,"op":"mkdir","path":"raw\xff\xfebytes","mtime_ns":1}',
        event("mkdir", "trail/"), event("mkdir", "/lead"), event("mkdir", "a//b"), event("mkdir", "."),
        event("mkdir", "x/./y"), event("mkdir", "back\\slash"), event("mkdir", ""),
        event("mkdir", 123), event("mkdir", ["list"]), event("mkdir", {"path": "dict"}), event("mkdir", None),
        event("mkdir", "hugetime", mtime_ns=10**30), event("mkdir", "negtime", mtime_ns=-5),
        event("mkdir", "booltime", mtime_ns=True), event("explode", "boom"),
        event("mkfile", "badid.txt", file_id="xyz"), event("mkfile", "noid.txt"),
        b'{"format": 1, "op": "mkdir", "path": "broken"', b"\x00\x01garbage", b"[]", b"null", b'"mkdir"', b"",
        b"[" * 100_000,
        # clashes with the real content
        event("mkfile", "docs", file_id=uuid.uuid4().hex),
        event("mkfile", "docs/a.txt", file_id=uuid.uuid4().hex),
        event("mkdir", "docs/a.txt"),
        event("mkdir", "docs/a.txt/inner"),
        event("mkfile", "keep/k.txt/v9", file_id=uuid.uuid4().hex),
        event("mkdir", ".jobs"),
        event("mkfile", "dupe.txt", file_id=fid_a),
        event("rename", "keep", to=".jobs"),
        event("rename", "keep", to="docs"),
        event("rename", "keep/k.txt", to="docs/sub"),
        event("rename", "docs", to="docs/sub/inside"),
        event("rename", "nothing", to="something"),
        event("rmdir", "docs"),
        event("unlink", "docs"),
        event("rmdir", "keep/k.txt"),
        event("rmdir", "never-there"),
    ]
    for body in bad_events:
        put(f"ns/{ms:013d}-{ORIGIN}-{next(seq):08d}.json", body)

    # version records that lie (docs/a.txt holds v1 and v2)
    a1 = b"one\n"
    bad_records = {
        9: record(fid_a, 8, a1),  # names another version
        10: record(fid_a, 10, a1, sha256="z" * 64),
        11: record(fid_a, 11, a1, chunks=[]),
        12: record(fid_a, 12, a1, chunks=["not-a-sha"]),
        13: b'{"file_id": "',
        14: record(fid_a, 14, b"bytes nobody uploaded"),  # its blob is missing
        15: record(fid_a, 15, a1, sha256=hashlib.sha256(big).hexdigest()),  # big.bin's blob, wrong size
        16: record(fid_a, 16, a1, mtime_ns=10**30),
        17: record(fid_a, 17, a1, num="17"),
        18: b"[]",
        19: record(fid_a, 19, a1, chunk_size=0),
        20: record(fid_a, 20, a1, chunk_size=2**40),
        21: record(uuid.uuid4().hex, 21, a1),  # names another file
    }
    for num, body in bad_records.items():
        put(f"records/{fid_a}/v{num:010d}.json", body)
    put(f"records/{uuid.uuid4().hex}/v0000000001.json", record("0" * 32, 1, a1))  # no such file
    orphan = uuid.uuid4().hex
    put(f"records/{orphan}/v0000000001.json", record(orphan, 1, a1))  # a file no event made
    b.start()

    assert snapshot(b.path) == good  # the real content, with its bytes, and nothing else
    assert list(sentinel.iterdir()) == []
    assert sorted(p.name for p in b.root.iterdir()) == ["cache", "mnt", "sentinel"]
    assert not os.path.exists(etc_name) and not os.path.exists("/tmp/relayfs-hostile")
    cached = [name for _, dirs, files in os.walk(b.cache) for name in dirs + files]
    assert not [n for n in cached if re.search(r"escape|abs|hostile|sentinel|up$", n)], cached
    warnings = [line for line in b.log.read_text().splitlines() if " WARNING " in line]
    missing = [key for key in skipped if not any(repr(key) in line for line in warnings)]
    assert not missing, f"no WARNING names {missing}"
    assert all("\x1b" not in line and "\x01" not in line for line in b.log.read_text().splitlines())
    assert not re.search(r"\b(ERROR|CRITICAL)\b|Traceback", b.log.read_text())
    print(f"{len(skipped)} hostile keys skipped ({len(bad_events)} events, {len(bad_records) + 2} records)")

    # and the mount keeps serving: new versions, new files, uploads
    sh("echo three > docs/a.txt/latest && echo fresh > keep/new.txt && mkdir docs/sub/more", cwd=b.path)
    assert (b.path / "docs" / "a.txt" / "latest").read_text() == "three\n"
    assert (b.path / "docs" / "a.txt" / "v1").read_text() == "one\n"
    assert (b.path / "keep" / "new.txt" / "v1").read_text() == "fresh\n"
    b.wait()
    assert "reachable" in relayfs("status", str(b.path)).stdout
    c = make_mount(f"s3://{bucket}")  # and a third machine sees both the old and the new
    assert snapshot(c.path) == snapshot(b.path)
