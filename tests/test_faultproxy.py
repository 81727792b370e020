"""The fault proxy itself: forwards faithfully, and injects each fault it promises."""

from __future__ import annotations

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ConnectionClosedError, ReadTimeoutError

from faultproxy import FaultProxy


@pytest.fixture
def proxy(s3_server):
    p = FaultProxy(backend_port=int(s3_server.endpoint.rsplit(":", 1)[1]))
    yield p
    p.close()


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
