"""The fault proxy itself: forwards faithfully, injects each fault it promises, and in storj
mode refuses what Storj's gateway refuses."""

from __future__ import annotations

import base64
import hashlib
from collections import Counter

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ConnectionClosedError, ReadTimeoutError

from faultproxy import FaultProxy


def client(endpoint: str):
    cfg = botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=2, connect_timeout=2)
    return boto3.client("s3", endpoint_url=endpoint, config=cfg)


def test_forwards_and_counts(proxy, bucket) -> None:
    s3 = client(proxy.endpoint)
    s3.put_object(Bucket=bucket, Key="k", Body=b"x" * 100_000)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x" * 100_000
    assert proxy.counts["PUT"] == 1 and proxy.counts["GET"] == 1


def test_injects_errors_resets_and_short_answers(proxy, bucket) -> None:
    s3 = client(proxy.endpoint)
    s3.put_object(Bucket=bucket, Key="k", Body=b"y" * 100_000)
    proxy.fail(500, method="GET", count=1)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    proxy.reset(count=1)
    with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
        s3.head_object(Bucket=bucket, Key="k")
    proxy.cut_short(method="GET", count=1)
    with pytest.raises(Exception):
        s3.get_object(Bucket=bucket, Key="k")["Body"].read()
    proxy.stall(5, count=1)
    with pytest.raises((ReadTimeoutError, ConnectionClosedError)):
        s3.head_object(Bucket=bucket, Key="k")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"y" * 100_000


def test_drop_answer_lets_the_server_act_but_the_client_never_hears(proxy, bucket, s3_server) -> None:
    s3 = client(proxy.endpoint)
    proxy.drop_answer(method="PUT", count=1)
    with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
        s3.put_object(Bucket=bucket, Key="k", Body=b"z" * 1000)
    assert s3_server.client().get_object(Bucket=bucket, Key="k")["Body"].read() == b"z" * 1000


# -- storj mode: what Storj's S3 gateway refuses ------------------------------------------
MiB = 1024 * 1024


@pytest.fixture
def storj(s3_server):
    """A proxy in storj mode that does not throttle unless a test asks it to."""
    p = FaultProxy(backend_port=int(s3_server.endpoint.rsplit(":", 1)[1]), mode="storj", write_interval=0.0)
    yield p
    p.close()


def careful_client(endpoint: str):
    """What the Storj preset does: checksums only when an operation requires them."""
    cfg = botocore.config.Config(
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
        retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=10, connect_timeout=2,
    )
    return boto3.client("s3", endpoint_url=endpoint, config=cfg)


def md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def refused(call, *args, **kwargs) -> tuple[int, str]:
    """(HTTP status, S3 error code) a call fails with; the test fails if it succeeds."""
    with pytest.raises(ClientError) as e:
        call(*args, **kwargs)
    return e.value.response["ResponseMetadata"]["HTTPStatusCode"], e.value.response["Error"]["Code"]


def test_storj_mode_refuses_boto3_default_checksums(storj, bucket, s3_server) -> None:
    s3_server.client().put_object(Bucket=bucket, Key="there", Body=b"x")
    s3 = client(storj.endpoint)  # boto3's defaults: CRC32 checksum headers, checksum mode on GET
    assert refused(s3.put_object, Bucket=bucket, Key="k", Body=b"x" * 1000) == (400, "ChecksumsUnsupported")
    upload = s3_server.client().create_multipart_upload(Bucket=bucket, Key="big")["UploadId"]
    assert refused(s3.upload_part, Bucket=bucket, Key="big", UploadId=upload, PartNumber=1, Body=b"p") == (
        400, "ChecksumsUnsupported")
    assert refused(s3.get_object, Bucket=bucket, Key="there") == (400, "ChecksumsUnsupported")
    assert storj.client_errors() == Counter({"ChecksumsUnsupported": 3})
    assert "k" not in {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_storj_mode_accepts_when_required_with_content_md5(storj, bucket) -> None:
    s3 = careful_client(storj.endpoint)
    s3.put_object(Bucket=bucket, Key="k", Body=b"x" * 1000, ContentMD5=md5(b"x" * 1000))
    s3.put_object(Bucket=bucket, Key="new", Body=b"n", ContentMD5=md5(b"n"), IfNoneMatch="*")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x" * 1000
    assert s3.head_object(Bucket=bucket, Key="new")["ContentLength"] == 1
    assert storj.refusals == Counter()


def test_storj_mode_answers_501_to_if_none_match_other_than_star(storj, bucket) -> None:
    s3 = careful_client(storj.endpoint)
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"x", ContentMD5=md5(b"x"))["ETag"]
    assert refused(s3.put_object, Bucket=bucket, Key="k2", Body=b"y", ContentMD5=md5(b"y"), IfNoneMatch=etag) == (
        501, "NotImplemented")
    assert refused(s3.get_object, Bucket=bucket, Key="k", IfNoneMatch=etag) == (501, "NotImplemented")
    assert storj.client_errors() == Counter({"NotImplemented": 2})


def test_storj_mode_refuses_a_small_part_that_is_not_the_last(storj, bucket, s3_server) -> None:
    s3 = careful_client(storj.endpoint)

    def upload(key: str, sizes: list[int]) -> tuple[str, list[dict[str, object]]]:
        upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        parts = []
        for number, size in enumerate(sizes, 1):
            body = bytes([number]) * size
            etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body,
                                  ContentMD5=md5(body))["ETag"]
            parts.append({"ETag": etag, "PartNumber": number})
        return upload_id, parts

    small, parts = upload("small", [MiB, MiB])
    assert storj.parts[small] == {1: MiB, 2: MiB}
    assert refused(s3.complete_multipart_upload, Bucket=bucket, Key="small", UploadId=small,
                   MultipartUpload={"Parts": parts}) == (400, "EntityTooSmall")
    s3.abort_multipart_upload(Bucket=bucket, Key="small", UploadId=small)
    good, parts = upload("good", [5 * MiB, 1])  # only the last part may be small
    s3.complete_multipart_upload(Bucket=bucket, Key="good", UploadId=good, MultipartUpload={"Parts": parts})
    assert s3_server.client().head_object(Bucket=bucket, Key="good")["ContentLength"] == 5 * MiB + 1
    assert storj.completed == [("good", [5 * MiB, 1])]
    assert storj.client_errors() == Counter({"EntityTooSmall": 1})


def test_storj_mode_throttles_writes_of_one_name(storj, bucket) -> None:
    s3 = careful_client(storj.endpoint)
    storj.write_interval = 3600.0  # any second write of a name comes "too soon"
    s3.put_object(Bucket=bucket, Key="k", Body=b"1", ContentMD5=md5(b"1"))
    assert refused(s3.put_object, Bucket=bucket, Key="k", Body=b"2", ContentMD5=md5(b"2")) == (503, "SlowDown")
    assert refused(s3.delete_object, Bucket=bucket, Key="k") == (503, "SlowDown")
    assert refused(s3.create_multipart_upload, Bucket=bucket, Key="k") == (503, "SlowDown")
    s3.put_object(Bucket=bucket, Key="other", Body=b"3", ContentMD5=md5(b"3"))  # another name is fine
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"1"  # reads are never throttled
    storj.write_interval = 0.0  # time has passed
    s3.put_object(Bucket=bucket, Key="k", Body=b"4", ContentMD5=md5(b"4"))
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"4"
    assert storj.refusals == Counter({"SlowDown": 3}) and storj.client_errors() == Counter()
