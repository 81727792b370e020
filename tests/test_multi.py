"""Several workstations on one bucket: real mounts with their own cache dirs on one moto
server, standing for separate machines that share nothing but the bucket."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from mount import Mount, poll, relayfs, sh

POLL = "1"  # seconds between polls in these tests


@pytest.fixture
def quick_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYFS_POLL_SECONDS", POLL)


def read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def versions(m: Mount, name: str) -> dict[int, str]:
    """Version number -> contents of every version of ``name`` this mount shows."""
    out = {}
    for v in (m.path / name).iterdir():
        if re.fullmatch(r"v\d+", v.name):
            out[int(v.name[1:])] = v.read_text()
    return out


def settle(mounts: list[Mount]) -> None:
    """Every upload done, then every mount polled once more."""
    for m in mounts:
        relayfs("wait", str(m.path), timeout=300)
    for m in mounts:
        relayfs("refresh", str(m.path))


def test_changes_propagate_within_the_poll_interval(make_mount, bucket: str, quick_poll) -> None:  # type: ignore[no-untyped-def]
    a, b = make_mount(f"s3://{bucket}"), make_mount(f"s3://{bucket}")
    sh("mkdir -p docs && echo one > docs/f.txt", cwd=a.path)
    relayfs("wait", str(a.path))
    t0 = time.monotonic()
    poll(lambda: read(b.path / "docs" / "f.txt" / "latest") == "one\n", "b to see a's new file", 30)
    first = time.monotonic() - t0
    sh("echo two > docs/f.txt/latest", cwd=a.path)
    relayfs("wait", str(a.path))
    t0 = time.monotonic()
    poll(lambda: read(b.path / "docs" / "f.txt" / "latest") == "two\n", "b to see a's new version", 30)
    second = time.monotonic() - t0
    assert versions(b, "docs/f.txt") == {1: "one\n", 2: "two\n"}
    print(f"propagation after the upload landed: new file {first:.2f} s, new version {second:.2f} s (poll every {POLL} s)")
    # and the other way round, with renames and deletes
    sh("mkdir d2 && echo x > d2/g.txt && mv docs/f.txt docs/renamed.txt", cwd=b.path)
    relayfs("wait", str(b.path))
    poll(lambda: read(a.path / "docs" / "renamed.txt" / "v2") == "two\n", "a to see b's rename", 30)
    assert not (a.path / "docs" / "f.txt").exists() and read(a.path / "d2" / "g.txt" / "latest") == "x\n"
    sh("rm docs/renamed.txt/v1 && rm -r d2", cwd=b.path)
    relayfs("wait", str(b.path))
    poll(lambda: not (a.path / "d2").exists() and not (a.path / "docs" / "renamed.txt" / "v1").exists(),
         "a to see b's deletes", 30)
    assert versions(a, "docs/renamed.txt") == {2: "two\n"}
    assert sorted(p.name for p in a.path.iterdir()) == sorted(p.name for p in b.path.iterdir()) == [".jobs", "docs"]


def test_concurrent_commits_from_three_mounts_keep_every_content_once(make_mount, bucket: str, quick_poll) -> None:  # type: ignore[no-untyped-def]
    mounts = [make_mount(f"s3://{bucket}") for _ in range(3)]
    sh("echo start > shared.txt", cwd=mounts[0].path)
    relayfs("wait", str(mounts[0].path))
    for m in mounts[1:]:
        poll(lambda m=m: read(m.path / "shared.txt" / "latest") == "start\n", "every mount to see the file", 30)
    written: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(i: int, m: Mount) -> None:
        try:
            for k in range(4):
                text = f"mount {i} commit {k}\n"
                (m.path / "shared.txt" / "latest").write_text(text)
                with lock:
                    written.append(text)
                time.sleep(0.05)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i, m)) for i, m in enumerate(mounts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    settle(mounts)
    expected = sorted(["start\n", *written])

    def agreed() -> list[dict[int, str]] | None:
        seen = [versions(m, "shared.txt") for m in mounts]
        return seen if all(sorted(s.values()) == expected for s in seen) and seen[0] == seen[1] == seen[2] else None

    seen = poll(agreed, "every mount to hold every committed content once, under the same numbers", 60)
    assert len(set(seen[0])) == len(expected)  # unique numbers, each content exactly once
    newest = seen[0][max(seen[0])]
    for m in mounts:
        assert read(m.path / "shared.txt" / "latest") == newest
    renumbered = [line for m in mounts for line in m.log.read_text().splitlines() if "committed by another workstation first" in line]
    print(f"{len(written)} concurrent commits from 3 mounts, {len(renumbered)} renumbered: {sorted(seen[0])}")


def test_rename_racing_a_write_keeps_both(make_mount, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RELAYFS_POLL_SECONDS", "0")  # each side acts before it has seen the other
    a, b = make_mount(f"s3://{bucket}"), make_mount(f"s3://{bucket}")
    sh("echo v1 > f.txt", cwd=a.path)
    relayfs("wait", str(a.path))
    relayfs("refresh", str(b.path))
    assert read(b.path / "f.txt" / "latest") == "v1\n"
    sh("mv f.txt g.txt", cwd=a.path)
    sh("echo v2 > f.txt/latest", cwd=b.path)
    settle([a, b])
    for m in (a, b):
        assert not (m.path / "f.txt").exists(), m.path
        assert versions(m, "g.txt") == {1: "v1\n", 2: "v2\n"}, m.path


def test_offline_mount_works_from_its_cache_and_catches_up(make_mount, bucket: str, proxy, quick_poll, fast_retry) -> None:  # type: ignore[no-untyped-def]
    a = make_mount(f"s3://{bucket}")
    b = make_mount(f"s3://{bucket}", endpoint=proxy.endpoint)
    sh("echo one > f.txt && echo kept > cached.txt", cwd=a.path)
    relayfs("wait", str(a.path))
    poll(lambda: read(b.path / "f.txt" / "latest") == "one\n", "b to see a's file", 30)
    assert read(b.path / "cached.txt" / "v1") == "kept\n"  # now in b's cache
    proxy.reset()  # b's network is gone
    b.stop()
    b.start()  # and it starts anyway, from its cache
    assert "L3 is unreachable" in b.log.read_text()
    assert read(b.path / "cached.txt" / "v1") == "kept\n"
    sh("echo offline > f.txt/latest && mkdir made-offline", cwd=b.path)
    sh("echo online > f.txt/latest && echo new > new.txt", cwd=a.path)  # a takes v2 meanwhile
    relayfs("wait", str(a.path))
    assert versions(b, "f.txt") == {1: "one\n", 2: "offline\n"}  # b's own v2, not yet resolved
    proxy.clear()  # back online
    settle([b, a])

    def caught_up() -> bool:
        return all(versions(m, "f.txt") == {1: "one\n", 2: "online\n", 3: "offline\n"}
                   and read(m.path / "new.txt" / "latest") == "new\n" and (m.path / "made-offline").is_dir()
                   for m in (a, b))

    poll(caught_up, "both mounts to agree: a's v2, b's renumbered v3, and each other's new entries", 60)
    assert read(b.path / "f.txt" / "latest") == "offline\n"
    log = b.log.read_text()
    assert re.search(r"f\.txt: v2 was committed by another workstation first; this version is now v3", log), log[-3000:]
    notes = [j.read_text() for j in (b.path / ".jobs").iterdir()]
    assert any("path: /f.txt/v3" in n and "note: renumbered from v2" in n for n in notes), notes


def test_a_bulk_copy_reaches_the_others_in_few_feed_objects(make_mount, bucket: str, s3_server, proxy, quick_poll, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """200 new files are 400 events (a new file, then its version once landed); on a slow
    link they travel in batches, and every one of them arrives."""
    proxy.latency(0.1)
    a = make_mount(f"s3://{bucket}", endpoint=proxy.endpoint)
    b = make_mount(f"s3://{bucket}")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(200):
        (src / f"f{i:03d}.txt").write_text(f"file {i}\n")
    sh(f"cp -r {src} bulk", cwd=a.path)
    relayfs("wait", str(a.path), timeout=600)
    keys = [o["Key"] for page in s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="ns/")
            for o in page.get("Contents", ())]
    assert len(keys) <= 200, f"{len(keys)} feed objects for 401 events"

    def arrived() -> bool:
        names = sorted(p.name for p in (b.path / "bulk").iterdir()) if (b.path / "bulk").is_dir() else []
        return len(names) == 200 and all(read(b.path / "bulk" / n / "latest") == f"file {int(n[1:4])}\n" for n in names)

    poll(arrived, "b to see all 200 files with their contents", 120)
    print(f"200 files: 401 events in {len(keys)} feed objects")
