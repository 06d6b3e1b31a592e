"""Backup targets: a local directory or s3://bucket/prefix, opened as one BackupRepository.

`open_source_storage` is how the package opens a source's target, so server-side encryption, the storage
class, the multipart part size and the age recipients are never forgotten by one caller.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.files import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE
from pg_backup_dagster.storage.base import ObjectStore
from pg_backup_dagster.storage.encryption import IDENTITY_ENV, decrypt_file, encrypt_file, generate_identity
from pg_backup_dagster.storage.local import LocalStorage
from pg_backup_dagster.storage.repository import DEFAULT_GC_MIN_AGE, LATEST_NAME, BackupRepository
from pg_backup_dagster.storage.s3 import S3Storage

__all__ = [
    "DEFAULT_GC_MIN_AGE",
    "IDENTITY_ENV",
    "LATEST_NAME",
    "BackupRepository",
    "LocalStorage",
    "ObjectStore",
    "S3Storage",
    "TargetSettings",
    "decrypt_file",
    "encrypt_file",
    "generate_identity",
    "open_source_storage",
    "open_storage",
]

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$", re.I)


class TargetSettings(Protocol):
    """Where a source's backups go and how they are stored (SourceConfig and the Dagster resource have these)."""

    @property
    def target(self) -> str: ...
    @property
    def sse(self) -> str | None: ...
    @property
    def kms_key_id(self) -> str | None: ...
    @property
    def storage_class(self) -> str | None: ...
    @property
    def part_size(self) -> int | None: ...
    @property
    def age_recipients(self) -> Sequence[str]: ...
    @property
    def file_mode(self) -> int | str: ...
    @property
    def dir_mode(self) -> int | str: ...


def open_source_storage(settings: TargetSettings, *, create: bool = True) -> BackupRepository:
    """The backups of a source's target, with every storage setting of the source (create: see open_storage)."""
    return open_storage(
        settings.target,
        sse=settings.sse,
        kms_key_id=settings.kms_key_id,
        storage_class=settings.storage_class,
        part_size=settings.part_size,
        recipients=list(settings.age_recipients) or None,
        file_mode=settings.file_mode,
        dir_mode=settings.dir_mode,
        create=create,
    )


def open_storage(
    url: str,
    *,
    sse: str | None = None,
    kms_key_id: str | None = None,
    storage_class: str | None = None,
    part_size: int | None = None,
    recipients: list[str] | None = None,
    file_mode: int | str = PRIVATE_FILE_MODE,
    dir_mode: int | str = PRIVATE_DIR_MODE,
    create: bool = True,
) -> BackupRepository:
    """The backups at a target URL: a path, file:///path, or s3://bucket/prefix.

    S3 targets check the bucket at open (missing bucket or denied access fail here, clearly); local
    targets are created if needed and must be writable, and what they write gets file_mode / dir_mode.
    With create=False (commands that only read) a local target must already exist and nothing is created.
    """
    if not isinstance(url, str) or not url.strip():
        raise BackupError("backup target is empty: set a directory or s3://bucket/prefix")
    url = url.strip()
    store: ObjectStore
    if url.startswith("s3://"):
        bucket, prefix = _parse_s3(url)
        store = S3Storage(
            bucket, prefix, sse=sse, kms_key_id=kms_key_id, storage_class=storage_class, part_size=part_size
        )
    elif sse or kms_key_id or storage_class:
        raise BackupError("sse, kms_key_id and storage_class apply to s3:// targets only")
    else:
        store = LocalStorage(_parse_local(url), file_mode=file_mode, dir_mode=dir_mode, create=create)
    return BackupRepository(store, recipients=recipients)


def _parse_s3(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if "@" in parsed.netloc:
        raise BackupError("credentials do not belong in the target URL; use the AWS environment variables")
    if not _BUCKET_RE.match(parsed.netloc or ""):
        raise BackupError(f"invalid S3 target {url!r}: expected s3://bucket/prefix")
    if parsed.query or parsed.fragment:
        raise BackupError(f"invalid S3 target {url!r}: no query or fragment allowed")
    prefix = parsed.path.strip("/")
    if any(part in (".", "..") for part in prefix.split("/")) or "//" in prefix:
        raise BackupError(f"invalid S3 prefix in {url!r}")
    return parsed.netloc, prefix


def _parse_local(url: str) -> Path:
    if url.startswith("file://"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise BackupError(f"file URL {url!r} names a remote host; use a local path")
        return Path(unquote(parsed.path))
    if re.match(r"^[a-z][a-z0-9+.-]*://", url, re.I):
        raise BackupError(f"unsupported backup target {url.split('://')[0]}://: use a directory or s3://bucket/prefix")
    return Path(url)
