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
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.files import CHUNK_SIZE, Digest
from pg_backup_dagster.storage.base import FolderExists, ObjectStore, PendingFolder, StoredObject, UnfinishedUpload

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


class S3Storage(ObjectStore):
    """Backups under s3://bucket/prefix; a key is relative to the prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        sse: str | None = None,
        kms_key_id: str | None = None,
        storage_class: str | None = None,
        part_size: int | None = None,
        client: Any | None = None,
        work_dir: Path | None = None,
        check: bool = True,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._key_prefix = f"{self.prefix}/" if self.prefix else ""
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
    def _key(self, key: str) -> str:
        return self._key_prefix + key

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def scratch_dir(self, parent: str) -> Path:
        """Local staging for S3 targets: under PG_BACKUP_WORK_DIR (or the system temp dir)."""
        return self.work_dir / parent.strip("/")

    def begin_folder(self, prefix: str) -> PendingFolder:
        return S3PendingFolder(self, self._key(prefix))

    def exists(self, key: str) -> bool:
        return self._unless_missing("head_object", self._key(key)) is not None

    def _unless_missing(self, op: str, key: str) -> Any | None:
        """Run one operation on a key; None when there is no such key."""
        try:
            return getattr(self.client, op)(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if self._code(exc) in _MISSING:
                return None
            raise self._error(exc, op, key) from None
        except BotoCoreError as exc:
            raise self._error(exc, op, key) from None

    def _pages(self, prefix: str, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
        """Pages of list_objects_v2 under a full key prefix."""
        paginator = self.client.get_paginator("list_objects_v2")
        extra = {"Delimiter": delimiter} if delimiter else {}
        try:
            yield from paginator.paginate(Bucket=self.bucket, Prefix=prefix, **extra)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list_objects_v2", prefix) from None

    def list_children(self, prefix: str) -> list[str]:
        full = self._key(prefix)
        names = [
            common["Prefix"][len(full) :].rstrip("/")
            for page in self._pages(full, "/")
            for common in page.get("CommonPrefixes", [])
        ]
        return sorted(names)

    def list_objects(self, prefix: str, *, recursive: bool = True) -> list[StoredObject]:
        full = self._key(prefix)
        return [
            StoredObject(obj["Key"][len(self._key_prefix) :], obj["LastModified"].timestamp(), obj["Size"])
            for page in self._pages(full, None if recursive else "/")
            for obj in page.get("Contents", [])
        ]

    # --- writing -------------------------------------------------------------------------------------
    def _object_args(self, sha256_hex: str, *, data_file: bool) -> dict[str, Any]:
        """SSE (and KMS key) on every object; the storage class on data files only."""
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

    def _small_args(self, data: bytes) -> dict[str, Any]:
        """A small bookkeeping file (manifest, latest.json): its checksum, SSE, no storage class."""
        digest = hashlib.sha256(data).digest()
        return {"Body": data, "ChecksumSHA256": _b64(digest), "ContentType": "application/json",
                **self._object_args(digest.hex(), data_file=False)}

    def put_bytes(self, key: str, data: bytes) -> None:
        """A single PUT replaces an object atomically for every reader."""
        self._call("put_object", self._key(key), **self._small_args(data))

    def put_manifest(self, key: str, data: bytes) -> None:
        """Conditional PUT (If-None-Match) so two publishers of one folder cannot both win."""
        args = self._small_args(data)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, IfNoneMatch="*", **args)
        except ClientError as exc:
            code = self._code(exc)
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                if self._get(key) == data:  # our own PUT, retried after a lost response
                    return
                raise FolderExists(f"s3://{self.bucket}/{key} already exists") from None
            if code not in ("NotImplemented", "501"):
                raise self._error(exc, "put_object", key) from None
            self._call("put_object", key, **args)
        except BotoCoreError as exc:
            raise self._error(exc, "put_object", key) from None

    # --- reading -------------------------------------------------------------------------------------
    def _get(self, key: str) -> bytes | None:
        response = self._unless_missing("get_object", key)
        if response is None:
            return None
        try:
            with response["Body"] as body:
                return body.read()
        except (OSError, BotoCoreError) as exc:
            raise self._error(exc, "get_object", key) from None

    def get_bytes(self, key: str) -> bytes | None:
        return self._get(self._key(key))

    def open(self, key: str) -> BinaryIO:
        return self._call("get_object", self._key(key))["Body"]

    # --- deleting ------------------------------------------------------------------------------------
    def delete_keys(self, keys: list[str]) -> None:
        self._delete_full([self._key(key) for key in keys])

    def delete_prefix(self, prefix: str) -> None:
        self.delete_keys([obj.key for obj in self.list_objects(prefix)])

    def _delete_full(self, keys: list[str]) -> None:
        """delete_objects in batches of 1000; per-key errors are errors too."""
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            response = self._call("delete_objects", Delete={"Objects": batch, "Quiet": True})
            if response.get("Errors"):
                first = response["Errors"][0]
                raise BackupError(f"cannot delete s3://{self.bucket}/{first.get('Key')}: {first.get('Code')}")

    def unfinished_uploads(self, prefix: str) -> list[UnfinishedUpload]:
        """Multipart uploads never completed nor aborted: they cost storage while invisible to listings."""
        full = self._key(prefix)
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=full)
            uploads = [upload for page in pages for upload in page.get("Uploads", [])]
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list_multipart_uploads", full) from None
        return [
            UnfinishedUpload(u["Key"][len(self._key_prefix) :], u["UploadId"], u["Initiated"].timestamp())
            for u in uploads
        ]

    def abort_upload(self, upload: UnfinishedUpload) -> None:
        self._call("abort_multipart_upload", self._key(upload.key), UploadId=upload.upload_id)


class S3PendingFolder(PendingFolder):
    """Objects uploaded under the folder's prefix; the manifest PUT, last, is what publishes them."""

    def __init__(self, store: S3Storage, base_key: str) -> None:
        self.store = store
        self.base_key = base_key
        self.uploaded: list[str] = []

    def put_file(self, relpath: str, src: Path, digest: Digest, *, data_file: bool = True) -> None:
        """Upload (hashing as it reads, per-part checksums), then check what was sent and what is stored."""
        key = self.base_key + relpath
        self.uploaded.append(key)
        sent = self.store.upload_file(src, key, digest.sha256, data_file=data_file)
        if (sent.size, sent.sha256) != (digest.size, digest.sha256):
            raise BackupError(f"{relpath} changed after it was hashed (sent {sent.size} bytes, sha256 {sent.sha256})")
        self.store.verify_object(key, sent)

    def commit(self, relpath: str, data: bytes) -> None:
        self.store.put_manifest(self.base_key + relpath, data)

    def discard(self) -> None:
        try:
            self.store._delete_full(self.uploaded)
        except BackupError as exc:
            log.warning("cleanup after failed publish incomplete (gc will finish): %s", exc)
