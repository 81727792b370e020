"""Unit tests of the bucket layout and the checks that refuse hostile input."""

from __future__ import annotations

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
