"""manifest.json: the contract between backup, verify, restore and retention, as one validated model.

Written last; a backup exists only when it does. Every file is listed with its tier, identity, size and
sha256 (and, when age-encrypted, where its ciphertext lives and the plaintext's size and sha256); every table
with its row count and the content hash of its rows (format 2; format 1 manifests, without them, still read). Every
reader parses it through `parse_manifest`, so a manifest that is tampered with, truncated or of another
format version is refused in one place with one clear error.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_serializer, field_validator, model_serializer
from pydantic.dataclasses import dataclass

from pg_backup_dagster import __version__
from pg_backup_dagster.backup.state import CheckRecord, RowCount
from pg_backup_dagster.errors import BackupError, one_line

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2  # 2 added per-table content hashes and copy_settings; version 1 manifests still read
ENCRYPTED_SUFFIX = ".age"


def check_relpath(relpath: str) -> str:
    """A manifest path must stay inside its backup folder, even if the manifest was tampered with."""
    if (
        not isinstance(relpath, str)
        or not relpath
        or PurePosixPath(relpath).is_absolute()
        or "\\" in relpath
        or "\x00" in relpath
        or any(part in ("", ".", "..") for part in relpath.split("/"))
    ):
        raise BackupError(f"unsafe file path {relpath!r} in backup")
    return relpath


def _safe_path(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_relpath(value)
    except BackupError as exc:
        raise ValueError(str(exc)) from None


@dataclass(config=ConfigDict(extra="forbid"))
class FileEntry:
    """One published file. Keys that do not apply (a table for a schema archive) are left out on disk."""

    path: str
    size: int
    sha256: str
    tier: str | None = None
    schema: str | None = None
    table: str | None = None
    kind: str | None = None
    after: list[tuple[str, str]] | None = None
    post_refs: list[tuple[str, str]] | None = None  # other tables a post.sql names (rules, policies reading them)
    fk_refs: list[tuple[str, str]] | None = None  # tables an fk.sql's foreign keys reference
    phase: Literal["early", "late"] | None = None
    encrypted: Literal["age"] | None = None
    stored_path: str | None = None
    plain_size: int | None = None
    plain_sha256: str | None = None

    @field_validator("path", "stored_path")
    @classmethod
    def _inside_backup(cls, value: str | None) -> str | None:
        return _safe_path(value)

    @property
    def stored(self) -> str:
        """Where the bytes live inside the backup folder (`x.age` when encrypted)."""
        return self.stored_path or self.path

    @model_serializer(mode="wrap")
    def _without_absent_keys(self, handler: Any) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


@dataclass(frozen=True)
class TableRows(RowCount):
    """Rows of one table as pg_dump saw them (count and content hash), and as the per-table files hold them (None:
    tier not taken)."""

    rows_in_table_files: int | None = None


class ToolInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "pg_backup_dagster"
    version: str = __version__


class Encryption(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["age"] = "age"
    recipients: list[str]


class Signature(BaseModel):
    """An Ed25519 signature over the manifest (backup/signing.py says exactly which bytes), and its key's id."""

    model_config = ConfigDict(extra="forbid")
    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str
    value: str


class Manifest(BaseModel):
    """The whole manifest.json of one backup."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1, 2] = FORMAT_VERSION
    tool: ToolInfo = ToolInfo()
    source: str
    profile: str
    backup_id: str
    started_at: datetime
    finished_at: datetime
    server_major: int
    pg_dump_version: str
    snapshot: str
    database_size: int | None = None
    copy_settings: dict[str, str] | None = None  # the dump session's settings its COPY text depends on
    files: list[FileEntry]
    tables: list[TableRows]
    checks: dict[str, CheckRecord]
    passed: bool  # every check passed, or is unverified by the source's choice (unverified_checks names them)
    encryption: Encryption | None = None
    signature: Signature | None = None

    @field_serializer("started_at", "finished_at")
    def _iso(self, value: datetime) -> str:
        return value.isoformat()

    @model_serializer(mode="wrap")
    def _without_absent_keys(self, handler: Any) -> dict[str, Any]:
        document = handler(self)
        for key in ("encryption", "signature", "copy_settings"):
            if document.get(key) is None:
                document.pop(key, None)
        return document

    def to_bytes(self) -> bytes:
        """The one serialisation of a manifest, so identical manifests are byte-identical."""
        document = self.model_dump(mode="json")
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")

    def entries(self, tier: str) -> list[FileEntry]:
        return [entry for entry in self.files if entry.tier == tier]

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files)

    @property
    def is_encrypted(self) -> bool:
        return any(entry.encrypted for entry in self.files)

    def failed_checks(self) -> list[str]:
        return [name for name, check in self.checks.items() if not check.publishable]

    def unverified_checks(self) -> list[str]:
        return [name for name, check in self.checks.items() if check.unverified]

    def partitioned_parents(self) -> list[tuple[str, str]]:
        """Tables of the per-table tier that hold no rows themselves (partitioned parents: `tables` lists the
        tables that hold rows, the partitions)."""
        counted = {(t.schema, t.table) for t in self.tables}
        return sorted({(e.schema or "", e.table or "") for e in self.entries("table")} - counted)

    def tables_text(self) -> str:
        return tables_phrase(len(self.tables), len(self.partitioned_parents()))


def tables_phrase(tables: int, partitioned: int) -> str:
    """How every output counts tables, so the numbers agree: those holding rows, plus the partitioned parents the
    per-table tier also has folders for (`14 tables + 1 partitioned parent`)."""
    text = f"{tables} table{'' if tables == 1 else 's'}"
    return text + (f" + {partitioned} partitioned parent{'' if partitioned == 1 else 's'}" if partitioned else "")


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object, or a one-line BackupError naming what was unreadable."""
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BackupError(f"{what} is not valid JSON: {one_line(str(exc))}") from None
    if not isinstance(document, dict):
        raise BackupError(f"{what} is not a JSON object")
    return document


def parse_manifest(data: bytes, what: str) -> Manifest:
    """The manifest in `data`, or a one-line BackupError naming what was unreadable and its first problems."""
    document = parse_json_object(data, what)
    try:
        return Manifest.model_validate(document)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda error: error["type"] == "missing")  # what is wrong before what is absent
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'manifest'}: {error['msg']}" for error in errors[:5]
        )
        raise BackupError(f"{what} is not a valid manifest: {one_line(problems)}") from None
