"""Staging a small backup the way the backup job does: files into the staging dir, a manifest to publish."""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pg_backup_dagster.backup.manifest import FileEntry, Manifest
from pg_backup_dagster.storage import BackupRepository

SOURCE = "main"
ID1 = "2026-01-01T00-00-00Z"
ID2 = "2026-01-02T00-00-00Z"
FILES: dict[str, bytes] = {
    "roles.sql": b"CREATE ROLE app;\n",
    f"database_full_{ID1}.dump": b"PGDMP" + bytes(range(256)) * 40,
    "public/tables/t1/schema.sql": b"CREATE TABLE t1 (id int);\n",
    "public/tables/t1/data.sql": b"COPY t1 (id) FROM stdin;\n1\n\\.\n",
    "public/tables/t1/fk.sql": b"",
    "RESTORE.md": b"# restore\n",
}


def entry(path: str, data: bytes) -> dict[str, Any]:
    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "tier": "test"}


def stage(
    storage: BackupRepository,
    backup_id: str = ID1,
    files: dict[str, bytes] | None = None,
    source: str = SOURCE,
) -> Manifest:
    """Write files into a fresh staging dir (plus internal dot-state) and return the manifest to publish."""
    files = FILES if files is None else files
    staging = storage.staging_dir(source, backup_id)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path, data in files.items():
        target = staging / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (staging / ".state.json").write_text("{}")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return Manifest(
        source=source, profile="plain", backup_id=backup_id, started_at=now, finished_at=now, server_major=18,
        pg_dump_version="18.0", snapshot="00000003-00000002-1", tables=[], checks={}, passed=True,
        files=[FileEntry(**entry(path, data)) for path, data in files.items()],
    )


def read_all(storage: BackupRepository, backup_id: str, dest: Path, **kw: Any) -> dict[str, bytes]:
    """Fetch a backup and read every manifest file back."""
    folder = storage.fetch(SOURCE, backup_id, dest, **kw)
    manifest = storage.read_manifest(SOURCE, backup_id)
    return {e.path: (folder / e.path).read_bytes() for e in manifest.files}
