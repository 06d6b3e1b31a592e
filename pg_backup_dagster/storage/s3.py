"""S3 (or any S3-compatible endpoint) as backup target; the manifest PUT is what publishes a backup.

Every object is uploaded with its SHA256 checksum (per part for multipart), so the server rejects a body that
differs from what was hashed. When the server echoes that checksum, the upload is proven in that one request;
an endpoint that does not is checked by HEAD (size, our sha256 metadata, its checksum) and, with no checksum
there either, by a streaming GET re-hash. Transfers are latency-bound: files go `transfers` at a time (the
repository's pool) and the parts of a large file in parallel. A failed multipart upload is aborted; objects of
a failed publish are deleted best-effort, and gc sweeps what remains.
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError
from s3transfer.utils import ReadFileChunk

from pg_backup_dagster.config import S3_ADDRESSING_ENV, S3_TRANSFERS_ENV, WORK_DIR_ENV, setting
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.files import CHUNK_SIZE, Digest
from pg_backup_dagster.storage.base import FolderExists, ObjectStore, PendingFolder, StoredObject, UnfinishedUpload

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 64 * MiB
DEFAULT_TRANSFERS = 16
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
    configured = setting(WORK_DIR_ENV)
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "pg_backup_dagster"


def configured_transfers() -> int:
    """How many transfers run at once (PG_BACKUP_S3_TRANSFERS, default 16): each waits mostly on a round trip."""
    text = setting(S3_TRANSFERS_ENV) or str(DEFAULT_TRANSFERS)
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise BackupError(f"{S3_TRANSFERS_ENV}={text!r}: expected a number of concurrent transfers from 1 to 256")
    return int(text)


def make_client(transfers: int = DEFAULT_TRANSFERS) -> Any:
    """An S3 client honouring AWS_ENDPOINT_URL; path-style addressing for custom endpoints (moto, MinIO).

    Its connection pool holds every request that can run at once: `transfers` files, each with as many parts.
    """
    custom_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    style = setting(S3_ADDRESSING_ENV) or ("path" if custom_endpoint else "auto")
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        s3={"addressing_style": style},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=2 * transfers,
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
    confirmed: bool = False  # the server echoed our checksum: it validated the body it stored against it


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
        transfers: int | None = None,
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
        self.transfers = transfers or configured_transfers()
        self.client = client or make_client(self.transfers)
        self._parts = ThreadPoolExecutor(self.transfers, thread_name_prefix="s3-part")
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

    def upload_file(self, path: Path, key: str, digest: Digest, *, data_file: bool = True) -> Uploaded:
        """Upload one file hashed earlier (digest): a single PUT up to one part, multipart above."""
        size = path.stat().st_size
        if size != digest.size:
            raise BackupError(f"{path.name}: {size} bytes on disk, {digest.size} when it was hashed: it changed since")
        part_size = choose_part_size(size, self.part_size)
        args = self._object_args(digest.sha256, data_file=data_file)
        if size <= part_size:
            return self._put_single(path, key, digest, args)
        return self._put_multipart(path, key, size, part_size, digest, args)

    def _read_part(self, fh: BinaryIO, size: int) -> bytes:
        """Up to `size` bytes of a part being hashed (a seam for fault-injection tests)."""
        return fh.read(size)

    def _put_single(self, path: Path, key: str, digest: Digest, args: dict[str, Any]) -> Uploaded:
        """One PUT streaming the file, with the checksum taken when it was staged: the server refuses a body
        that differs from what was hashed, so the echo of that checksum proves the upload."""
        checksum = _b64(bytes.fromhex(digest.sha256))
        with ReadFileChunk.from_filename(str(path), 0, digest.size) as body:
            response = self._call("put_object", key, Body=body, ChecksumSHA256=checksum, **args)
        return Uploaded(digest.size, digest.sha256, checksum, response.get("ChecksumSHA256") == checksum)

    def _put_multipart(
        self, path: Path, key: str, size: int, part_size: int, digest: Digest, args: dict[str, Any]
    ) -> Uploaded:
        """Hash the parts in one sequential read (also the whole file, against digest) and send each as soon as
        its hash is known, in parallel; every part carries its SHA256. Abort on any failure."""
        upload_id = self._call("create_multipart_upload", key, ChecksumAlgorithm="SHA256", **args)["UploadId"]
        full, sent, part_digests = hashlib.sha256(), [], []
        try:
            with open(path, "rb") as fh:
                for number, offset in enumerate(range(0, size, part_size), start=1):
                    part = hashlib.sha256()
                    for chunk in self._chunks(fh, min(part_size, size - offset)):
                        part.update(chunk)
                        full.update(chunk)
                    part_digests.append(part.digest())
                    sent.append(self._parts.submit(self._put_part, path, key, upload_id, number, offset,
                                                   min(part_size, size - offset), _b64(part.digest())))
            if full.hexdigest() != digest.sha256:
                raise BackupError(f"{path.name} changed after it was hashed (its sha256 is now {full.hexdigest()})")
            parts = [future.result() for future in sent]
            response = self._call("complete_multipart_upload", key, UploadId=upload_id,
                                  MultipartUpload={"Parts": parts})
        except BaseException:
            for future in sent:
                future.cancel()
            _wait_quietly(sent)
            self._abort(key, upload_id)
            raise
        composite = f"{_b64(hashlib.sha256(b''.join(part_digests)).digest())}-{len(part_digests)}"
        echoed = str(response.get("ChecksumSHA256") or "").split("-")[0] == composite.split("-")[0]
        return Uploaded(size, digest.sha256, composite, echoed)

    def _chunks(self, fh: BinaryIO, length: int) -> Iterator[bytes]:
        while length > 0:
            chunk = self._read_part(fh, min(CHUNK_SIZE, length))
            if not chunk:
                raise BackupError(f"{fh.name}: file ended early: it changed after it was hashed")
            length -= len(chunk)
            yield chunk

    def _put_part(self, path: Path, key: str, upload_id: str, number: int, offset: int, length: int,
                  checksum: str) -> dict[str, Any]:
        """One part, streamed from the file; the server checks it against the hash taken while reading."""
        with ReadFileChunk.from_filename(str(path), offset, length) as body:
            response = self._call("upload_part", key, UploadId=upload_id, PartNumber=number, Body=body,
                                  ChecksumSHA256=checksum)
        return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum}

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not abort multipart upload of s3://%s/%s (gc will): %s", self.bucket, key, exc)

    def verify_object(self, key: str, sent: Uploaded) -> None:
        """Nothing more when the server confirmed our checksum; else HEAD: size, sha256 metadata, server
        checksum; with no server checksum, re-hash by GET."""
        if sent.confirmed:
            return
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
        self._lock = threading.Lock()  # files are put from several threads

    def put_file(self, relpath: str, src: Path, digest: Digest, *, data_file: bool = True) -> None:
        """Upload against the staged hash (the server checks it), then check what is stored unless confirmed."""
        key = self.base_key + relpath
        with self._lock:
            self.uploaded.append(key)
        self.store.verify_object(key, self.store.upload_file(src, key, digest, data_file=data_file))

    def commit(self, relpath: str, data: bytes) -> None:
        self.store.put_manifest(self.base_key + relpath, data)

    def discard(self) -> None:
        try:
            self.store._delete_full(self.uploaded)
        except BackupError as exc:
            log.warning("cleanup after failed publish incomplete (gc will finish): %s", exc)


def _wait_quietly(futures: list[Future]) -> None:
    """Let parts already on the wire finish (their errors are not the one being raised) before aborting."""
    for future in futures:
        if not future.cancelled():
            future.exception()
