"""The first thing a user does: write a file, read its version back, see the upload."""

from mount import sh


def test_echo_then_cat_v1(mnt):
    sh("echo hi > a.txt", cwd=mnt.path)
    assert sh("cat a.txt/v1", cwd=mnt.path).stdout == "hi\n"
    assert sh("ls .jobs", cwd=mnt.path).stdout.split()
    mnt.wait()
    keys = [o["Key"] for o in _objects(mnt)]
    assert any(k.startswith("blobs/") for k in keys)


def _objects(mnt):
    import boto3

    bucket = mnt.l3.removeprefix("s3://")
    s3 = boto3.client("s3", endpoint_url=mnt.endpoint)
    return s3.list_objects_v2(Bucket=bucket).get("Contents", [])
