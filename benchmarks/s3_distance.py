"""S3 at a real distance: moto's server behind a proxy that adds a fixed delay to every request.

moto on loopback answers in about a millisecond, so the suite never sees what a round trip costs. A same-region
S3 request takes around 20 ms; the proxy (pg_backup_dagster_tests/s3_proxy.py, the fault proxy of the S3 tests)
sleeps that long before relaying each one, and counts them. It also checks and echoes SHA256 checksums as S3
does (moto only stores them), so the tool makes the requests it would make against S3.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from pg_backup_dagster.storage.s3 import make_client
from pg_backup_dagster_tests.helpers import free_port, moto_command, wait_until_up
from pg_backup_dagster_tests.s3_proxy import FaultProxy, running_proxy

DEFAULT_LATENCY_S = 0.020
_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench-key-id",
    "AWS_SECRET_ACCESS_KEY": "bench-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class DistantS3:
    """A bucket on moto reached through the latency proxy; `target(name)` is a backup target URL in it."""

    bucket: str
    proxy: FaultProxy
    moto: psutil.Process

    def server_cpu_seconds(self) -> float:
        """CPU the S3 side has used so far: moto's process and this one (the proxy's threads run here). On a
        2-core machine it competes with the backup, which real S3 would not."""
        return sum(sum(p.cpu_times()[:2]) for p in (self.moto, psutil.Process()))

    def target(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"

    @property
    def requests(self) -> int:
        return self.proxy.requests


@contextmanager
def distant_s3(work: Path, latency: float = DEFAULT_LATENCY_S) -> Iterator[DistantS3]:
    """moto's server and the proxy, with the environment pointing boto3 (here and in child processes) at it."""
    port = free_port()
    with open(work / "moto.log", "wb") as out:
        moto = subprocess.Popen(moto_command(port), stdout=out, stderr=subprocess.STDOUT)
    saved = {name: os.environ.get(name) for name in [*_CREDENTIALS, "AWS_ENDPOINT_URL"]}
    try:
        wait_until_up(f"http://127.0.0.1:{port}", moto)
        with running_proxy(f"http://127.0.0.1:{port}", latency, aws_checksums=True) as proxy:
            os.environ.update({**_CREDENTIALS, "AWS_ENDPOINT_URL": proxy.url})
            bucket = f"bench-{uuid.uuid4().hex[:12]}"
            make_client().create_bucket(Bucket=bucket)
            yield DistantS3(bucket, proxy, psutil.Process(moto.pid))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        moto.terminate()
        moto.wait(timeout=10)
