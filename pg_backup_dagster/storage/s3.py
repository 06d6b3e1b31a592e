"""S3 (or any S3-compatible endpoint) as backup target; the manifest PUT is what publishes a backup.

Every object is uploaded with SHA256 checksums (per part for multipart, so the server rejects a
corrupted part), then HEAD-checked: size, our sha256 metadata, and the server's checksum (full or
composite). Endpoints that return no checksum get a streaming GET re-hash instead. A failed multipart
upload is aborted; objects of a failed publish are deleted best-effort, and gc sweeps what remains.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.storage.base import (
    CHUNK_SIZE,
    DEFAULT_GC_MIN_AGE,
    LATEST_NAME,
    MANIFEST_NAME,
    BackupStorage,
    check_declared,
    check_manifest_id,
    check_relpath,
    check_segment,
    final_manifest,
    is_encrypted,
    is_old,
    manifest_bytes,
    parse_json,
    plan_entries,
    prepare_entry,
    remove_path,
    sha256_file,
    stored_path,
)

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 64 * MiB
WORK_DIR_ENV = "PG_BACKUP_WORK_DIR"
ADDRESSING_ENV = "PG_BACKUP_S3_ADDRESSING_STYLE"
SSE_VALUES = frozenset({"AES256", "aws:kms", "aws:kms:dsse"})
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_CLIENT_LOCK = threading.Lock()
_DENIED = frozenset({"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"})


def choose_part_size(size: int, configured: int | None) -> int:
    """Parts of at least 5 MiB, never more than 10,000 of them: a 1 TiB dump gets ~105 MiB parts."""
    part = max(configured or DEFAULT_PART_SIZE, MIN_PART_SIZE, math.ceil(size / MAX_PARTS))
    part = math.ceil(part / MiB) * MiB
    if part > MAX_PART_SIZE:
        raise BackupError(f"file of {size} bytes is larger than S3 allows in one object")
    return part


def default_work_dir() -> Path:
    """Local staging for S3 targets: PG_BACKUP_WORK_DIR, else a folder under the system temp dir."""
    configured = os.environ.get(WORK_DIR_ENV)
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "pg_backup_dagster"


def make_client() -> Any:
    """An S3 client honouring AWS_ENDPOINT_URL; path-style addressing for custom endpoints (moto, MinIO)."""
    custom_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    style = os.environ.get(ADDRESSING_ENV) or ("path" if custom_endpoint else "auto")
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        s3={"addressing_style": style},
        connect_timeout=10,
        read_timeout=120,
    )
    with _CLIENT_LOCK:  # boto3's default session is not safe for concurrent client creation
        return boto3.client("s3", config=config)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


@dataclass
class Uploaded:
    """What we sent: the full sha256 (hex) and the checksum the server should report (base64)."""

    size: int
    sha256: str
    checksum: str


class S3Storage(BackupStorage):
    """Backups under s3://bucket/prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        sse: str | None = None,
        kms_key_id: str | None = None,
        storage_class: str | None = None,
        part_size: int | None = None,
        recipients: list[str] | None = None,
        client: Any | None = None,
        work_dir: Path | None = None,
        check: bool = True,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._key_prefix = f"{self.prefix}/" if self.prefix else ""
        self.recipients = list(recipients) if recipients else None
        self.part_size = part_size
        self.storage_class = storage_class
        self._sse_args = self._sse(sse, kms_key_id)
        if part_size is not None and part_size < MIN_PART_SIZE:
            raise BackupError(f"S3 part size {part_size} is below the 5 MiB minimum S3 accepts")
        self.work_dir = Path(work_dir) if work_dir else default_work_dir()
        self.client = client or make_client()
        if check:
            self.check_bucket()

    @staticmethod
    def _sse(sse: str | None, kms_key_id: str | None) -> dict[str, str]:
        if kms_key_id and not sse:
            sse = "aws:kms"
        if sse and sse not in SSE_VALUES:
            raise BackupError(f"unknown server-side encryption {sse!r}; use one of {', '.join(sorted(SSE_VALUES))}")
        args = {"ServerSideEncryption": sse} if sse else {}
        if kms_key_id:
            args["SSEKMSKeyId"] = kms_key_id
        return args

    # --- error handling ------------------------------------------------------------------------------
    def _error(self, exc: Exception, op: str, key: str | None) -> BackupError:
        """One clear line naming the bucket (and key), never credentials."""
        where = f"s3://{self.bucket}/{key}" if key else f"bucket {self.bucket!r}"
        if isinstance(exc, NoCredentialsError):
            return BackupError(f"no AWS credentials found for {where} (set AWS_ACCESS_KEY_ID/… or AWS_PROFILE)")
        if isinstance(exc, EndpointConnectionError):
            return BackupError(f"cannot reach the S3 endpoint for {where}: {exc}")
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            message = exc.response.get("Error", {}).get("Message", "")
            if code == "NoSuchBucket" or (code in ("404", "NotFound") and key is None):
                return BackupError(f"S3 bucket {self.bucket!r} does not exist at {self._endpoint()}")
            if code in _DENIED:
                return BackupError(f"access denied to {where} ({op}: {code}); check the credentials and bucket policy")
            return BackupError(f"S3 {op} on {where} failed: {code} {message}".strip())
        return BackupError(f"S3 {op} on {where} failed: {exc}")

    def _endpoint(self) -> str:
        return str(getattr(self.client.meta, "endpoint_url", "S3"))

    def _call(self, op: str, key: str | None = None, **kwargs: Any) -> Any:
        """Run one client operation with errors turned into BackupError."""
        try:
            return getattr(self.client, op)(Bucket=self.bucket, **({"Key": key} if key else {}), **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, op, key) from None

    @staticmethod
    def _code(exc: ClientError) -> str:
        return str(exc.response.get("Error", {}).get("Code", ""))

    def check_bucket(self) -> None:
        """Fail at open with a clear line when the bucket is missing or not ours to use."""
        self._call("head_bucket")

    # --- keys ----------------------------------------------------------------------------------------
    def _source_key(self, source: str) -> str:
        return f"{self._key_prefix}{check_segment('source', source)}/"

    def _backup_key(self, source: str, backup_id: str) -> str:
        return f"{self._source_key(source)}{check_segment('backup id', backup_id)}/"

    def backup_url(self, source: str, backup_id: str) -> str:
        return f"s3://{self.bucket}/{self._backup_key(source, backup_id)}"

    def staging_dir(self, source: str, backup_id: str) -> Path:
        return self.work_dir / check_segment("source", source) / check_segment("backup id", backup_id)

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if self._code(exc) in _MISSING:
                return False
            raise self._error(exc, "head_object", key) from None
        except BotoCoreError as exc:
            raise self._error(exc, "head_object", key) from None

    def has_backup(self, source: str, backup_id: str) -> bool:
        return self._exists(self._backup_key(source, backup_id) + MANIFEST_NAME)

    def _list(self, prefix: str, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
        """Pages of list_objects_v2 under prefix."""
        paginator = self.client.get_paginator("list_objects_v2")
        extra = {"Delimiter": delimiter} if delimiter else {}
        try:
            yield from paginator.paginate(Bucket=self.bucket, Prefix=prefix, **extra)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list_objects_v2", prefix) from None

    def _child_names(self, prefix: str) -> list[str]:
        names = []
        for page in self._list(prefix, "/"):
            for common in page.get("CommonPrefixes", []):
                names.append(common["Prefix"][len(prefix) :].rstrip("/"))
        return sorted(names)

    def _objects(self, prefix: str) -> list[dict[str, Any]]:
        return [obj for page in self._list(prefix) for obj in page.get("Contents", [])]

    # --- publish -------------------------------------------------------------------------------------
    def publish(self, source: str, backup_id: str, manifest: dict[str, Any]) -> str:
        staging = self.staging_dir(source, backup_id)
        base_key = self._backup_key(source, backup_id)
        if self.has_backup(source, backup_id):
            raise BackupError(f"backup {self.backup_url(source, backup_id)} already exists; backups are immutable")
        if not staging.is_dir():
            raise BackupError(f"nothing staged for {source}/{backup_id} (expected {staging})")
        check_manifest_id(manifest, backup_id)
        entries = plan_entries(staging, manifest.get("files"))
        uploaded: list[str] = []
        try:
            stored = [self._store_entry(staging, entry, base_key, uploaded) for entry in entries]
            document = final_manifest(manifest, backup_id, stored, self.recipients)
            self._put_manifest(base_key + MANIFEST_NAME, manifest_bytes(document))
        except _ManifestExists:
            raise BackupError(f"backup {self.backup_url(source, backup_id)} appeared during publish") from None
        except BaseException:
            self._delete_keys(uploaded, best_effort=True)
            raise
        shutil.rmtree(staging, ignore_errors=True)
        return self.backup_url(source, backup_id)

    def _store_entry(self, staging: Path, entry: dict[str, Any], base_key: str, uploaded: list[str]) -> dict[str, Any]:
        """Upload one file (its age encryption if configured), verify it, return its manifest entry."""
        src, updated = prepare_entry(staging, entry, self.recipients)
        try:
            expected_size, expected_sha = self._expected(src, updated)
            key = base_key + stored_path(updated)
            uploaded.append(key)
            sent = self.upload_file(src, key, expected_sha)
            if sent.size != expected_size or sent.sha256 != expected_sha:
                raise BackupError(f"{updated['path']} changed while it was being uploaded")
            self.verify_object(key, sent)
        finally:
            if is_encrypted(updated):
                src.unlink(missing_ok=True)
        updated.update(size=sent.size, sha256=sent.sha256)
        return updated

    @staticmethod
    def _expected(src: Path, entry: dict[str, Any]) -> tuple[int, str]:
        """The hash an upload must match: the caller's for plain files (one read), else computed now."""
        if not is_encrypted(entry) and entry.get("sha256") and entry.get("size") is not None:
            return entry["size"], entry["sha256"]
        size, sha = sha256_file(src)
        if not is_encrypted(entry):
            check_declared(entry, size, sha)
        return size, sha

    def _object_args(self, sha256_hex: str, *, data_file: bool) -> dict[str, Any]:
        args: dict[str, Any] = {"Metadata": {"sha256": sha256_hex}, **self._sse_args}
        if data_file and self.storage_class:
            args["StorageClass"] = self.storage_class
        return args

    def upload_file(self, path: Path, key: str, sha256_hex: str, *, data_file: bool = True) -> Uploaded:
        """Upload one file: a single PUT up to one part, multipart above; sha256 stored as metadata."""
        size = path.stat().st_size
        part_size = choose_part_size(size, self.part_size)
        args = self._object_args(sha256_hex, data_file=data_file)
        with open(path, "rb") as fh:
            if size <= part_size:
                return self._put_single(fh, key, args)
            return self._put_multipart(fh, key, part_size, args)

    def _read_part(self, fh: BinaryIO, size: int) -> bytes:
        """One part's bytes (a seam for fault-injection tests)."""
        return fh.read(size)

    def _put_single(self, fh: BinaryIO, key: str, args: dict[str, Any]) -> Uploaded:
        data = self._read_part(fh, MAX_PART_SIZE)
        digest = hashlib.sha256(data).digest()
        self._call("put_object", key, Body=data, ChecksumSHA256=_b64(digest), **args)
        return Uploaded(len(data), digest.hex(), _b64(digest))

    def _put_multipart(self, fh: BinaryIO, key: str, part_size: int, args: dict[str, Any]) -> Uploaded:
        """Parts carry their own SHA256 (the server rejects a corrupted part); abort on any failure."""
        upload_id = self._call("create_multipart_upload", key, ChecksumAlgorithm="SHA256", **args)["UploadId"]
        full, part_digests, parts, size = hashlib.sha256(), [], [], 0
        try:
            while data := self._read_part(fh, part_size):
                number = len(parts) + 1
                digest = hashlib.sha256(data).digest()
                response = self._call(
                    "upload_part",
                    key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                    ChecksumSHA256=_b64(digest),
                )
                parts.append({"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": _b64(digest)})
                full.update(data)
                part_digests.append(digest)
                size += len(data)
            self._call("complete_multipart_upload", key, UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            self._abort(key, upload_id)
            raise
        composite = _b64(hashlib.sha256(b"".join(part_digests)).digest())
        return Uploaded(size, full.hexdigest(), f"{composite}-{len(parts)}")

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not abort multipart upload of s3://%s/%s (gc will): %s", self.bucket, key, exc)

    def verify_object(self, key: str, sent: Uploaded) -> None:
        """HEAD: size, sha256 metadata, server checksum; with no server checksum, re-hash by GET."""
        head = self._call("head_object", key, ChecksumMode="ENABLED")
        where = f"s3://{self.bucket}/{key}"
        if head.get("ContentLength") != sent.size:
            raise BackupError(f"{where}: stored size {head.get('ContentLength')} differs from the {sent.size} sent")
        if head.get("Metadata", {}).get("sha256") != sent.sha256:
            raise BackupError(f"{where}: stored sha256 metadata differs from the file's sha256")
        server = head.get("ChecksumSHA256")
        if server:
            if server.split("-")[0] != sent.checksum.split("-")[0]:
                raise BackupError(f"{where}: server checksum {server} differs from {sent.checksum}")
            return
        size, sha = self._hash_object(key)
        if size != sent.size or sha != sent.sha256:
            raise BackupError(f"{where}: downloaded copy hashes to {sha}, expected {sent.sha256}")

    def _hash_object(self, key: str) -> tuple[int, str]:
        digest, size = hashlib.sha256(), 0
        body = self._call("get_object", key)["Body"]
        try:
            while chunk := body.read(CHUNK_SIZE):
                digest.update(chunk)
                size += len(chunk)
        except (OSError, BotoCoreError) as exc:
            raise self._error(exc, "get_object", key) from None
        finally:
            body.close()
        return size, digest.hexdigest()

    def _put_manifest(self, key: str, data: bytes) -> None:
        """Conditional PUT (If-None-Match) so two publishers of one id cannot both win."""
        digest = hashlib.sha256(data).digest()
        args = {"Body": data, "ChecksumSHA256": _b64(digest), "ContentType": "application/json"}
        args.update(self._object_args(digest.hex(), data_file=False))
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, IfNoneMatch="*", **args)
        except ClientError as exc:
            code = self._code(exc)
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                if self._get_bytes(key) == data:  # our own PUT, retried after a lost response
                    return
                raise _ManifestExists() from None
            if code not in ("NotImplemented", "501"):
                raise self._error(exc, "put_object", key) from None
            self._call("put_object", key, **args)
        except BotoCoreError as exc:
            raise self._error(exc, "put_object", key) from None

    # --- reading -------------------------------------------------------------------------------------
    def list_backups(self, source: str) -> list[str]:
        source_key = self._source_key(source)
        return [
            name
            for name in self._child_names(source_key)
            if not name.startswith(".") and self._exists(f"{source_key}{name}/{MANIFEST_NAME}")
        ]

    def list_sources(self) -> list[str]:
        sources = []
        for name in self._child_names(self._key_prefix):
            try:
                check_segment("source", name)
            except BackupError:
                continue
            if self._exists(f"{self._source_key(name)}{LATEST_NAME}") or self.list_backups(name):
                sources.append(name)
        return sources

    def _get_bytes(self, key: str) -> bytes | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            with body:
                return body.read()
        except ClientError as exc:
            if self._code(exc) in _MISSING:
                return None
            raise self._error(exc, "get_object", key) from None
        except BotoCoreError as exc:
            raise self._error(exc, "get_object", key) from None

    def read_manifest(self, source: str, backup_id: str) -> dict[str, Any]:
        key = self._backup_key(source, backup_id) + MANIFEST_NAME
        data = self._get_bytes(key)
        if data is None:
            raise BackupError(f"no backup {source}/{backup_id}: s3://{self.bucket}/{key} does not exist")
        return parse_json(data, f"s3://{self.bucket}/{key}")

    def open_file(self, source: str, backup_id: str, relpath: str) -> BinaryIO:
        key = self._backup_key(source, backup_id) + check_relpath(relpath)
        return self._call("get_object", key)["Body"]

    # --- latest --------------------------------------------------------------------------------------
    def write_latest(self, source: str, backup_id: str, info: dict[str, Any]) -> None:
        """A single PUT replaces latest.json atomically for every reader."""
        payload = self._latest_payload(source, backup_id, info)
        digest = hashlib.sha256(payload).digest()
        self._call(
            "put_object",
            self._source_key(source) + LATEST_NAME,
            Body=payload,
            ChecksumSHA256=_b64(digest),
            ContentType="application/json",
            **self._object_args(digest.hex(), data_file=False),
        )

    def read_latest(self, source: str) -> dict[str, Any] | None:
        key = self._source_key(source) + LATEST_NAME
        data = self._get_bytes(key)
        return None if data is None else parse_json(data, f"s3://{self.bucket}/{key}")

    # --- delete, gc ----------------------------------------------------------------------------------
    def delete_backup(self, source: str, backup_id: str) -> None:
        base_key = self._backup_key(source, backup_id)
        keys = [obj["Key"] for obj in self._objects(base_key)]
        if not keys:
            raise BackupError(f"no backup {source}/{backup_id} at {self.backup_url(source, backup_id)}")
        manifest_key = base_key + MANIFEST_NAME
        if manifest_key in keys:
            self._delete_keys([manifest_key])
        self._delete_keys([key for key in keys if key != manifest_key])

    def _delete_keys(self, keys: list[str], *, best_effort: bool = False) -> None:
        """delete_objects in batches of 1000; per-key errors are errors too."""
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            try:
                response = self._call("delete_objects", Delete={"Objects": batch, "Quiet": True})
                if response.get("Errors"):
                    first = response["Errors"][0]
                    raise BackupError(f"cannot delete s3://{self.bucket}/{first.get('Key')}: {first.get('Code')}")
            except BackupError as exc:
                if not best_effort:
                    raise
                log.warning("cleanup after failed publish incomplete (gc will finish): %s", exc)
                return

    def gc(self, source: str, *, min_age: float = DEFAULT_GC_MIN_AGE, dry_run: bool = False) -> list[str]:
        source_key = self._source_key(source)
        removed = self._gc_orphan_prefixes(source_key, min_age, dry_run)
        removed += self._gc_multipart(source_key, min_age, dry_run)
        removed += self._gc_work_dir(source, min_age, dry_run)
        return removed

    def _gc_orphan_prefixes(self, source_key: str, min_age: float, dry_run: bool) -> list[str]:
        """Objects under {source}/{id}/ with no manifest: a failed publish or an interrupted delete."""
        removed = []
        cutoff = time.time() - min_age
        for name in self._child_names(source_key):
            prefix = f"{source_key}{name}/"
            objects = self._objects(prefix)
            keys = [obj["Key"] for obj in objects]
            if not keys or prefix + MANIFEST_NAME in keys:
                continue
            if max(obj["LastModified"].timestamp() for obj in objects) > cutoff:
                continue
            if not dry_run:
                self._delete_keys(keys)
            removed.append(f"s3://{self.bucket}/{prefix}")
        return removed

    def _gc_multipart(self, source_key: str, min_age: float, dry_run: bool) -> list[str]:
        """Unfinished multipart uploads cost storage while invisible to listings: abort them."""
        removed = []
        cutoff = datetime.fromtimestamp(time.time() - min_age, UTC)
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=source_key)
            uploads = [upload for page in pages for upload in page.get("Uploads", [])]
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list_multipart_uploads", source_key) from None
        for upload in uploads:
            if upload["Initiated"] > cutoff:
                continue
            if not dry_run:
                self._call("abort_multipart_upload", upload["Key"], UploadId=upload["UploadId"])
            removed.append(f"multipart upload s3://{self.bucket}/{upload['Key']}")
        return removed

    def _gc_work_dir(self, source: str, min_age: float, dry_run: bool) -> list[str]:
        """Local staging dirs of S3 runs that never published."""
        source_dir = self.work_dir / source
        if not source_dir.is_dir():
            return []
        removed = []
        for child in sorted(source_dir.iterdir()):
            if is_old(child, min_age):
                if not dry_run:
                    remove_path(child)
                removed.append(str(child))
        return removed


class _ManifestExists(Exception):
    """Another publisher wrote this backup's manifest first."""
