"""What each kind of L3 needs from the S3 client: endpoint, part size and parallelism.

Kept apart from ``l3`` (which imports boto3) so that reading the configuration stays cheap.
Every multipart upload holds at most ``transfer_threads`` parts in memory and at most
``upload_concurrency`` uploads run at once, so a provider's worst case is
``upload_concurrency * transfer_threads * part_size`` bytes of part buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Provider:
    """Defaults an explicit setting (``s3_endpoint``, ``part_size``, ...) always overrides."""

    name: str
    endpoint: str | None  # None: boto3's own (AWS), or s3_endpoint
    part_size: int
    transfer_threads: int
    upload_concurrency: int


# Any S3-compatible store: 8 MiB parts, 4 uploads of 4 parts each: 128 MiB of buffers at most.
S3 = Provider("s3", None, 8 * MiB, 4, 4)

# Storj's gateway stores each part as segments of up to 64 MiB, so 64 MiB parts make one
# segment each (smaller parts multiply segments, and fees). With parts that large, 2 uploads
# of 2 parts each keep the buffers at 256 MiB at most, and two parts in flight per upload
# still keep a workstation uplink busy.
STORJ = Provider("storj", "https://gateway.storjshare.io", 64 * MiB, 2, 2)

PROVIDERS: dict[str, Provider] = {p.name: p for p in (S3, STORJ)}
