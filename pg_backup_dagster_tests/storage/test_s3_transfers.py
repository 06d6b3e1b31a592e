"""Transfers at a distance: how many requests a publish costs and that they overlap, against moto over HTTP
behind the proxy, which checks and echoes SHA256 checksums the way S3 does (moto alone only stores them)."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.storage import BackupRepository, S3Storage, open_storage
from pg_backup_dagster.storage.s3 import MiB
from pg_backup_dagster_tests.s3_proxy import FaultProxy, running_proxy
from pg_backup_dagster_tests.storage.helpers import ID1, ID2, SOURCE, stage


@pytest.fixture
def s3_like(moto_endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The bucket reached through a proxy that validates checksums like S3, 50 ms per request."""
    with running_proxy(moto_endpoint, latency=0.05, aws_checksums=True) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield proxy


def _storage(bucket: str, **kw: Any) -> BackupRepository:
    storage = open_storage(f"s3://{bucket}/pfx", **kw)
    assert isinstance(storage.store, S3Storage)
    return storage


def _operations(storage: BackupRepository) -> Counter[str]:
    ops: Counter[str] = Counter()
    storage.store.client.meta.events.register("before-call.s3", lambda model, **_: ops.update([model.name]))
    return ops


def test_a_validating_store_costs_one_request_per_file(s3_like: FaultProxy, bucket: str, s3_client: Any) -> None:
    storage = _storage(bucket)
    files = {f"t{i}/data.sql": f"row {i}\n".encode() for i in range(12)}
    manifest = stage(storage, files=files)
    ops = _operations(storage)
    storage.publish(SOURCE, ID1, manifest)
    assert ops == Counter({"PutObject": len(manifest.files) + 1, "HeadObject": 1})  # files, manifest; has_backup
    body = s3_client.get_object(Bucket=bucket, Key=f"pfx/{SOURCE}/{ID1}/t3/data.sql")["Body"].read()
    assert body == b"row 3\n"


def test_files_and_parts_go_several_at_a_time(
    s3_like: FaultProxy, bucket: str, s3_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_BACKUP_S3_TRANSFERS", "4")
    storage = _storage(bucket, part_size=5 * MiB)
    big = os.urandom(16 * MiB + 7)
    manifest = stage(storage, files={"full.dump": big, **{f"f{i}.sql": b"x" * i for i in range(8)}})
    ops = _operations(storage)
    storage.publish(SOURCE, ID1, manifest)
    assert ops["UploadPart"] == 4 and ops["CompleteMultipartUpload"] == 1
    assert ops["GetObject"] == 0 and ops["HeadObject"] == 1  # confirmed by the echoed composite checksum
    assert s3_like.peak_in_flight > 1
    stored = s3_client.get_object(Bucket=bucket, Key=f"pfx/{SOURCE}/{ID1}/full.dump")["Body"].read()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(big).digest()


def test_a_file_changed_after_it_was_hashed_is_refused_by_the_store(s3_like: FaultProxy, bucket: str) -> None:
    storage = _storage(bucket)
    manifest = stage(storage, files={"roles.sql": b"CREATE ROLE app;\n"})
    (storage.staging_dir(SOURCE, ID1) / "roles.sql").write_bytes(b"CREATE ROLE bad;\n")  # same size
    with pytest.raises(BackupError, match="BadDigest"):
        storage.publish(SOURCE, ID1, manifest)
    assert storage.list_backups(SOURCE) == []


def test_a_large_file_changed_after_it_was_hashed_aborts(s3_like: FaultProxy, bucket: str, s3_client: Any) -> None:
    storage = _storage(bucket, part_size=5 * MiB)
    data = os.urandom(11 * MiB)
    manifest = stage(storage, files={"full.dump": data})
    path = storage.staging_dir(SOURCE, ID1) / "full.dump"
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(BackupError, match="changed after it was hashed"):
        storage.publish(SOURCE, ID1, manifest)
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert storage.list_backups(SOURCE) == []


def test_downloads_go_several_at_a_time(s3_like: FaultProxy, bucket: str, tmp_path: Path) -> None:
    storage = _storage(bucket)
    files = {f"t{i}/data.sql": f"row {i}\n".encode() for i in range(10)}
    storage.publish(SOURCE, ID2, stage(storage, ID2, files=files))
    s3_like.peak_in_flight = 0
    folder = storage.fetch(SOURCE, ID2, tmp_path / "copy")
    assert (folder / "t7" / "data.sql").read_bytes() == b"row 7\n"
    assert s3_like.peak_in_flight > 1


def test_transfers_setting_is_checked(s3_env: str, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_BACKUP_S3_TRANSFERS", "lots")
    with pytest.raises(BackupError, match="PG_BACKUP_S3_TRANSFERS='lots'"):
        _storage(bucket)
