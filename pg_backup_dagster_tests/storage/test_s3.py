"""S3 specifics against moto over HTTP: multipart, verification, abort on failure, clear errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.storage import BackupRepository, S3Storage, open_storage
from pg_backup_dagster.storage.s3 import MAX_PARTS, MIN_PART_SIZE, MiB, choose_part_size
from pg_backup_dagster_tests.storage.helpers import ID1, ID2, SOURCE, entry, stage

BIG = "database_full.dump"


def _storage(bucket: str, **kw: Any) -> BackupRepository:
    storage = open_storage(f"s3://{bucket}/pfx", **kw)
    assert isinstance(storage.store, S3Storage)
    return storage


def _record(storage: BackupRepository, event: str) -> list[dict[str, Any]]:
    """Parameters of every call of one S3 operation, in order (botocore event hook)."""
    calls: list[dict[str, Any]] = []
    storage.store.client.meta.events.register(f"provide-client-params.s3.{event}", lambda params, **_: calls.append(params))
    return calls


def _keys(client: Any, bucket: str) -> list[str]:
    return sorted(obj["Key"] for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def _big_files() -> dict[str, bytes]:
    return {BIG: os.urandom(12 * MiB + 123), "roles.sql": b"CREATE ROLE app;\n"}


def test_part_size_keeps_parts_under_limit() -> None:
    assert choose_part_size(1, None) == 64 * MiB
    assert choose_part_size(1, MIN_PART_SIZE) == MIN_PART_SIZE
    for size in (6 * 1024**3, 1024**4, 5 * 1024**4):
        part = choose_part_size(size, MIN_PART_SIZE)
        assert part % MiB == 0 and -(-size // part) <= MAX_PARTS
    with pytest.raises(BackupError, match="5 MiB"):
        S3Storage("bucket", part_size=1024, check=False, client=object())


def test_multipart_upload_sha256_matches_stored_object(bucket: str, s3_client: Any) -> None:
    storage = _storage(bucket, part_size=5 * MiB)
    parts = _record(storage, "UploadPart")
    puts = _record(storage, "PutObject")
    storage.publish(SOURCE, ID1, stage(storage, files=_big_files()))

    assert len(parts) == 3
    assert puts[-1]["Key"].endswith(f"{SOURCE}/{ID1}/manifest.json")  # manifest written last
    manifest = storage.read_manifest(SOURCE, ID1)
    big = next(e for e in manifest.files if e.path == BIG)
    body = s3_client.get_object(Bucket=bucket, Key=f"pfx/{SOURCE}/{ID1}/{BIG}")["Body"].read()
    assert big.sha256 == hashlib.sha256(body).hexdigest() and big.size == len(body)
    head = s3_client.head_object(Bucket=bucket, Key=f"pfx/{SOURCE}/{ID1}/{BIG}")
    assert head["Metadata"]["sha256"] == big.sha256
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_upload_failing_midway_aborts_and_leaves_nothing(
    bucket: str, s3_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = _storage(bucket, part_size=5 * MiB)
    storage.publish(SOURCE, ID1, stage(storage, files={"roles.sql": b"x"}))
    manifest = stage(storage, ID2, files=_big_files())
    reads = []

    def failing_read(fh: Any, size: int) -> bytes:
        reads.append(size)
        if len(reads) == 2:
            raise OSError("disk went away")
        return fh.read(size)

    monkeypatch.setattr(storage.store, "_read_part", failing_read)
    with pytest.raises(OSError, match="disk went away"):
        storage.publish(SOURCE, ID2, manifest)

    assert storage.list_backups(SOURCE) == [ID1]
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert not [k for k in _keys(s3_client, bucket) if ID2 in k]
    assert storage.staging_dir(SOURCE, ID2).is_dir()  # kept for a retry


def test_gc_aborts_unfinished_multipart_uploads(bucket: str, s3_client: Any) -> None:
    storage = _storage(bucket)
    key = f"pfx/{SOURCE}/{ID2}/big.dump"
    s3_client.create_multipart_upload(Bucket=bucket, Key=key)
    s3_client.create_multipart_upload(Bucket=bucket, Key="elsewhere/big.dump")
    removed = storage.gc(SOURCE, min_age=0)
    assert removed == [f"multipart upload s3://{bucket}/{key}"]
    uploads = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in uploads] == ["elsewhere/big.dump"]  # not under our prefix: untouched


def test_verify_falls_back_to_download_without_server_checksum(bucket: str) -> None:
    storage = _storage(bucket)

    def strip_checksum(parsed: dict[str, Any], **_: Any) -> None:
        parsed.pop("ChecksumSHA256", None)

    storage.store.client.meta.events.register("after-call.s3.HeadObject", strip_checksum)
    gets = _record(storage, "GetObject")
    storage.publish(SOURCE, ID1, stage(storage, files={"roles.sql": b"abc"}))
    assert [g["Key"] for g in gets] == [f"pfx/{SOURCE}/{ID1}/roles.sql"]


def test_verify_detects_a_wrong_stored_object(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = _storage(bucket)

    def lying_head(parsed: dict[str, Any], **_: Any) -> None:
        parsed["ContentLength"] = parsed.get("ContentLength", 0) + 1

    storage.store.client.meta.events.register("after-call.s3.HeadObject", lying_head)
    with pytest.raises(BackupError, match="stored size"):
        storage.publish(SOURCE, ID1, stage(storage, files={"roles.sql": b"abc"}))
    storage.store.client.meta.events.unregister("after-call.s3.HeadObject", lying_head)
    assert storage.list_backups(SOURCE) == []


def test_missing_bucket_is_a_clear_error(s3_env: str) -> None:
    with pytest.raises(BackupError, match="bucket 'pgbd-no-such-bucket' does not exist"):
        open_storage("s3://pgbd-no-such-bucket/x")


def test_bucket_deleted_midway_is_a_clear_error(bucket: str, s3_client: Any) -> None:
    storage = _storage(bucket)
    manifest = stage(storage, files={"roles.sql": b"x"})
    s3_client.delete_bucket(Bucket=bucket)
    with pytest.raises(BackupError, match=bucket) as err:
        storage.publish(SOURCE, ID1, manifest)
    assert "testing-secret-key" not in str(err.value)


def test_sse_and_storage_class_apply_to_data_not_manifest(bucket: str, s3_client: Any) -> None:
    storage = _storage(bucket, sse="AES256", storage_class="STANDARD_IA")
    storage.publish(SOURCE, ID1, stage(storage, files={"roles.sql": b"x"}))
    data = s3_client.head_object(Bucket=bucket, Key=f"pfx/{SOURCE}/{ID1}/roles.sql")
    meta = s3_client.head_object(Bucket=bucket, Key=f"pfx/{SOURCE}/{ID1}/manifest.json")
    assert data["ServerSideEncryption"] == "AES256" and data.get("StorageClass") == "STANDARD_IA"
    assert meta["ServerSideEncryption"] == "AES256" and meta.get("StorageClass", "STANDARD") == "STANDARD"
    with pytest.raises(BackupError, match="server-side encryption"):
        _storage(bucket, sse="rot13")


def test_layout_and_work_dir(bucket: str, s3_client: Any, tmp_path: Path) -> None:
    storage = _storage(bucket)
    assert storage.url == f"s3://{bucket}/pfx"
    assert storage.staging_dir(SOURCE, ID1) == tmp_path / "work" / SOURCE / ID1
    manifest = stage(storage, files={"a/b.sql": b"1"})
    storage.publish(SOURCE, ID1, manifest)
    storage.write_latest(SOURCE, ID1, {})
    assert _keys(s3_client, bucket) == [
        f"pfx/{SOURCE}/{ID1}/a/b.sql",
        f"pfx/{SOURCE}/{ID1}/manifest.json",
        f"pfx/{SOURCE}/latest.json",
    ]
    assert storage.read_manifest(SOURCE, ID1).model_dump(mode="json")["files"] == [entry("a/b.sql", b"1")]


def test_concurrent_publisher_loses_on_conditional_manifest_put(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = _storage(bucket)
    storage.publish(SOURCE, ID1, stage(storage))
    first = storage.read_manifest(SOURCE, ID1)
    manifest = stage(storage, files={"other.sql": b"second writer"})
    monkeypatch.setattr(storage, "has_backup", lambda source, backup_id: False)  # lost the race
    with pytest.raises(BackupError, match="appeared during publish"):
        storage.publish(SOURCE, ID1, manifest)
    assert storage.read_manifest(SOURCE, ID1) == first
    storage.store.put_manifest(f"pfx/{SOURCE}/{ID1}/manifest.json", first.to_bytes())  # same bytes: ok
