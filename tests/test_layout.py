"""Unit tests of the bucket layout and the checks that refuse hostile input."""

from __future__ import annotations

import json

import pytest

from relayfs import errors
from relayfs.store import layout

SHA = "c" * 64


def test_names() -> None:
    assert layout.check_name("ok.txt".encode()) == "ok.txt"
    with pytest.raises(errors.NameTooLong):
        layout.check_name(b"x" * 256)
    for bad in (b"", b".", b"..", b"a/b", b"a\0b", b"\xff\xfe"):
        with pytest.raises(errors.InvalidName):
            layout.check_name(bad)
    assert layout.version_number("v12") == 12
    assert layout.version_number("v1x") is None


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../b", "a//b", "a\\b", ""])
def test_hostile_paths_refused(path: str) -> None:
    with pytest.raises(layout.BadRecord):
        layout.check_path(path)


def test_record_round_trip_and_validation() -> None:
    rec = layout.VersionRecord("f" * 32, 3, SHA, 10, 99, layout.CHUNK_SIZE, (SHA,), "abcd1234")
    assert layout.VersionRecord.from_json(rec.to_json()) == rec
    with pytest.raises(layout.BadRecord):
        layout.VersionRecord.from_json(b'{"file_id": "x"}')
    wrong_chunks = rec.to_json().replace(b'"size":10', b'"size":5000000')
    with pytest.raises(layout.BadRecord):
        layout.VersionRecord.from_json(wrong_chunks)


def test_events_refuse_escapes() -> None:
    ok = layout.NsEvent("rename", "a", to="b/c")
    assert layout.NsEvent.from_json(ok.to_json()).to == "b/c"
    for body in (b'{"op":"mkdir","path":"../up"}', b'{"op":"rename","path":"a","to":"/abs"}',
                 b'{"op":"explode","path":"a"}', b"not json"):
        with pytest.raises(layout.BadRecord):
            layout.NsEvent.from_json(body)


def test_keys_parse_and_sort_by_time() -> None:
    fid = "1" * 32
    assert layout.parse_record_key(layout.record_key(fid, 7)) == (fid, 7, False)
    assert layout.parse_record_key(layout.tombstone_key(fid, 7)) == (fid, 7, True)
    with pytest.raises(layout.BadRecord):
        layout.parse_record_key("records/../x")
    early, late = layout.ns_key("abcd0123", 9, now=1.0), layout.ns_key("abcd0123", 1, now=2.0)
    assert early < late and layout.is_ns_key(early)
    assert layout.blob_key(SHA) == f"blobs/cc/{SHA}"


def test_bucket_content_is_never_coerced() -> None:
    """A number, list or null cannot become a name, nor a string a number; JSON nested past
    the parser's depth, out-of-range times and absurd chunk sizes are refused, not crashes."""
    for body in (b'{"op":"mkdir","path":123}', b'{"op":"mkdir","path":["a"]}', b'{"op":"mkdir","path":null}',
                 b'{"op":"mkdir","path":"a","mtime_ns":"5"}', b'{"op":"mkdir","path":"a","mtime_ns":true}',
                 b'{"op":"mkdir","path":"a","mtime_ns":1e30}', b'{"op":"mkdir","path":"a","mtime_ns":-1}',
                 b'{"op":"mkdir","path":"a","mtime_ns":100000000000000000000000000}', b"[" * 100_000, b"[]", b"\xff"):
        with pytest.raises(layout.BadRecord):
            layout.NsEvent.from_json(body)
    rec = layout.VersionRecord("f" * 32, 3, SHA, 10, 99, layout.CHUNK_SIZE, (SHA,), "abcd1234")
    for old, new in ((b'"num":3', b'"num":"3"'), (b'"num":3', b'"num":3.0'), (b'"mtime_ns":99', b'"mtime_ns":1' + b"0" * 30),
                     (b'"chunk_size":1048576', b'"chunk_size":0'), (b'"chunk_size":1048576', b'"chunk_size":1099511627776'),
                     (b'"origin":"abcd1234"', b'"origin":7')):
        assert old in rec.to_json()
        with pytest.raises(layout.BadRecord):
            layout.VersionRecord.from_json(rec.to_json().replace(old, new))
    assert layout.is_blob_key(layout.blob_key(SHA))
    for key in (f"blobs/dd/{SHA}", f"blobs/cc/{SHA}.tmp", "blobs/cc/x", f"blobs/{SHA}"):
        assert not layout.is_blob_key(key)


def test_version_events_name_a_landed_record_and_restamp_keeps_identity() -> None:
    fid = "a" * 32
    ev = layout.NsEvent("version", "docs/f.txt", file_id=fid, num=3)
    assert layout.NsEvent.from_json(ev.to_json()) == ev
    for bad in ({"num": 0}, {"num": -1}, {"file_id": "x"}):
        body = {"format": 1, "op": "drop", "path": "f", "file_id": fid, "num": 2, **bad}
        with pytest.raises(layout.BadRecord):
            layout.NsEvent.from_json(json.dumps(body).encode())
    key = layout.ns_key("0123abcd", 42, now=1.5)
    later = layout.ns_restamp(key, 1_800_000_000_000)
    assert layout.is_ns_key(later) and later > key and layout.ns_ms(later) == 1_800_000_000_000
    assert layout.ns_identity(key) == layout.ns_identity(later) == "0123abcd-00000042"
    assert layout.ns_after(1500) < key < layout.ns_after(1501)


def test_a_batch_of_events_is_one_object_and_a_regrouped_retry_applies_each_event_once() -> None:
    from relayfs.bucket import feed_events

    fid = "b" * 32
    singles = [(7, layout.NsEvent("mkdir", "d").to_json()), (8, layout.NsEvent("mkfile", "d/f", file_id=fid).to_json()),
               (9, layout.NsEvent("version", "d/f", file_id=fid, num=1).to_json())]
    first = layout.ns_key("0123abcd", 7, now=10.0)
    got = layout.ns_events(first, layout.ns_batch(singles[:2]))
    assert [(layout.event_identity(label), ev.op) for label, ev in got] == [("0123abcd-00000007", "mkdir"), ("0123abcd-00000008", "mkfile")]
    # the answer to that PUT was lost; the retry, stamped later, carries one event more
    retry = layout.ns_restamp(first, 20_000)
    other = layout.ns_key("99999999", 1, now=15.0)
    bodies = {first: layout.ns_batch(singles[:2]), retry: layout.ns_batch(singles), other: layout.NsEvent("mkdir", "e").to_json()}
    events = feed_events([retry, other, first], bodies)
    assert [ev.path for _, ev in events] == ["d", "d/f", "e", "d/f"]  # key order; each event once
    assert [ev.op for _, ev in events][-1] == "version"
    assert feed_events([retry, other], bodies, own="0123abcd") == [(other, layout.NsEvent("mkdir", "e"))]
    for bad in (b'{"format":2,"events":[]}', b'{"format":2,"events":[{"seq":6,"op":"mkdir","path":"x"}]}',
                b'{"format":2,"events":[{"seq":8,"op":"mkdir","path":"x"},{"seq":8,"op":"mkdir","path":"y"}]}',
                b'{"format":2,"events":"no"}'):
        with pytest.raises(layout.BadRecord):
            layout.ns_events(first, bad)
