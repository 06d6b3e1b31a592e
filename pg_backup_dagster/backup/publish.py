"""The last step of a backup: explain, checksum, publish (manifest last), then move latest.json."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from pg_backup_dagster.backup.manifest import build_manifest, staged_files
from pg_backup_dagster.backup.restore_doc import write_checksums, write_restore_doc
from pg_backup_dagster.backup.staging import Staging
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.files import human_bytes
from pg_backup_dagster.storage import BackupStorage


@dataclass
class Published:
    """Where a backup went and what it holds, for metadata and the CLI summary."""

    location: str
    manifest: dict[str, Any]

    def totals_by_tier(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for entry in self.manifest["files"]:
            totals[entry["tier"]] = totals.get(entry["tier"], 0) + entry["size"]
        return totals

    def summary_markdown(self) -> str:
        m = self.manifest
        rows = "\n".join(f"| {tier} | {human_bytes(size)} |" for tier, size in sorted(self.totals_by_tier().items()))
        checks = "\n".join(f"- {name}: {'passed' if c.get('passed') else 'FAILED'}" for name, c in m["checks"].items())
        return (
            f"**Backup {m['backup_id']}** of `{m['source']}` → {self.location}\n\n"
            f"{len(m['files'])} files, {len(m['tables'])} tables, PostgreSQL {m['server_major']}, "
            f"pg_dump {m['pg_dump_version']}, {self.duration_s():.0f} s from start to publish\n\n"
            f"| tier | size |\n|---|---|\n{rows}\n\n{checks}\n"
        )

    def duration_s(self) -> float:
        """Backup start (its id) to manifest written: the whole run as the operator waited for it."""
        started = datetime.fromisoformat(self.manifest["started_at"])
        return max(0.0, (datetime.fromisoformat(self.manifest["finished_at"]) - started).total_seconds())

    def metadata(self) -> dict[str, Any]:
        total = sum(self.totals_by_tier().values())
        seconds = self.duration_s()
        return {
            "location": dg.MetadataValue.url(self.location) if "://" in self.location
            else dg.MetadataValue.path(self.location),
            "database_size_bytes": self.manifest.get("database_size") or 0,
            "files": len(self.manifest["files"]),
            "schemas": len({e["schema"] for e in self.manifest["files"] if e["tier"] == "schema"}),
            "tables": len(self.manifest["tables"]),
            "total_bytes": total,
            **{f"bytes_{tier}": size for tier, size in self.totals_by_tier().items()},
            "duration_s": round(seconds, 1),
            "throughput_mib_s": round(total / (1 << 20) / seconds, 2) if seconds > 0 else 0.0,
            **{f"check_{name}_s": c["seconds"] for name, c in self.manifest["checks"].items() if "seconds" in c},
            "summary": dg.MetadataValue.md(self.summary_markdown()),
        }


def publish_backup(source: SourceConfig, storage: BackupStorage, staging: Staging, log: logging.Logger) -> Published:
    """Publish a staged backup whose checks passed; manifest last; latest.json only after that."""
    write_restore_doc(source.name, staging)
    write_checksums(staging, [p.relative_to(staging.root).as_posix() for p in staged_files(staging)
                              if p.name != "SHA256SUMS"])
    manifest = build_manifest(source.name, source.profile, staging)
    if not manifest["passed"]:
        failed = [name for name, c in manifest["checks"].items() if not c.get("passed")] or ["no check ran"]
        raise BackupError(f"backup {staging.backup_id} not published: checks did not pass ({', '.join(failed)})")
    location = storage.publish(source.name, staging.backup_id, manifest)
    storage.write_latest(source.name, staging.backup_id, {
        "backup_id": staging.backup_id, "location": location,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
    })
    log.info(f"published backup {staging.backup_id} to {location}")
    return Published(location, manifest)
