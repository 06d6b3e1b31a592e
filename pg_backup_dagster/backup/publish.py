"""The last step of a backup: explain, checksum, describe (the manifest), publish (manifest last), move latest.json.

Every staged file is hashed once, here; that one hash goes into SHA256SUMS, the manifest and the storage's
check of what it stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pg_backup_dagster.backup.backup_id import parse_backup_id
from pg_backup_dagster.backup.manifest import FileEntry, Manifest, TableRows
from pg_backup_dagster.backup.restore_doc import CHECKSUMS_NAME, RESTORE_DOC_NAME, write_checksums, write_restore_doc
from pg_backup_dagster.backup.signing import check_signature, sign_manifest, source_signing_key
from pg_backup_dagster.backup.staging import Staging
from pg_backup_dagster.backup.state import DumpsState, TablesState
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.constants import PROGRESS_PREFIX
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.files import Digest, human_bytes, sha256_file, staged_files
from pg_backup_dagster.storage import BackupRepository
from pg_backup_dagster.storage.repository import EarlyUpload


def file_identities(dumps: DumpsState, tables: TablesState | None) -> dict[str, dict[str, Any]]:
    """Map every relative path the steps produced to its tier and (schema, table) identity."""
    ids: dict[str, dict[str, Any]] = {
        "roles.sql": {"tier": "roles"}, RESTORE_DOC_NAME: {"tier": "doc"}, CHECKSUMS_NAME: {"tier": "doc"},
        dumps.full.path: {"tier": "full"},
    }
    for item in dumps.schemas:
        ids[item.path] = {"tier": "schema", "schema": item.schema}
    if tables is None:
        return ids
    for table in tables.tables:
        for kind, rel in table.files.items():
            ids[rel] = {"tier": "table", "schema": table.schema, "table": table.table, "kind": kind}
            if table.after:  # parents a restore must create first (partitions, inheritance)
                ids[rel]["after"] = [tuple(parent) for parent in table.after]
            refs = {"post": table.post_refs, "fk": table.fk_refs}.get(kind)
            if refs:  # other tables this file names: a restore of some tables must have them (restore/tables.py)
                ids[rel][f"{kind}_refs"] = [tuple(other) for other in refs]
    for schema, rel in tables.schema_objects.items():
        ids[rel] = {"tier": "schema_objects", "schema": schema}
    for rel, phase in ((tables.global_objects, "early"), (tables.global_objects_late, "late")):
        if rel:
            ids[rel] = {"tier": "global_objects", "phase": phase}
    return ids


def build_manifest(source: str, profile: str, staging: Staging, digests: dict[str, Digest]) -> Manifest:
    """The complete manifest of a staged backup, from the step state and the hash of every staged file."""
    dumps = staging.load(DumpsState)
    tables = staging.load_optional(TablesState)
    identities = file_identities(dumps, tables)
    unexpected = sorted(set(digests) - set(identities))
    if unexpected:
        raise BackupError(f"unexpected file {unexpected[0]} in staging {staging.root}: refusing to publish it")
    split_rows = {(t.schema, t.table): t.rows for t in tables.tables} if tables else {}
    checks = staging.checks()
    return Manifest(
        source=source,
        profile=profile,
        backup_id=staging.backup_id,
        started_at=parse_backup_id(staging.backup_id),
        finished_at=datetime.now(UTC).replace(microsecond=0),
        server_major=dumps.server_major,
        pg_dump_version=dumps.pg_dump_version,
        snapshot=dumps.snapshot,
        database_size=dumps.database_size,
        files=[FileEntry(path=rel, size=d.size, sha256=d.sha256, **identities[rel]) for rel, d in digests.items()],
        tables=[TableRows(r.schema, r.table, r.rows, r.sha256, rows_in_table_files=split_rows.get(r.key))
                for r in dumps.row_counts],
        copy_settings=dumps.copy_settings or None,
        checks=checks,
        passed=bool(checks) and all(check.publishable for check in checks.values()),
    )


@dataclass
class Published:
    """Where a backup went and what it holds, for metadata and the CLI summary."""

    location: str
    manifest: Manifest
    stored_early: int = 0  # files stored while the checks ran (an in-process run), not by publish

    def totals_by_tier(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for entry in self.manifest.files:
            totals[entry.tier or ""] = totals.get(entry.tier or "", 0) + entry.size
        return totals

    def summary_markdown(self) -> str:
        m = self.manifest
        rows = "\n".join(f"| {tier} | {human_bytes(size)} |" for tier, size in sorted(self.totals_by_tier().items()))
        checks = "\n".join(f"- {name}: {c.status}" for name, c in m.checks.items())
        if m.signature is not None:
            checks += f"\n- manifest signed ({m.signature.algorithm}, key {m.signature.key_id})"
        return (
            f"**Backup {m.backup_id}** of `{m.source}` → {self.location}\n\n"
            f"{len(m.files)} files, {m.tables_text()}, PostgreSQL {m.server_major}, "
            f"pg_dump {m.pg_dump_version}, {self.duration_s():.0f} s from start to publish\n\n"
            f"| tier | size |\n|---|---|\n{rows}\n\n{checks}\n"
        )

    def duration_s(self) -> float:
        """Backup start (its id) to manifest written: the whole run as the operator waited for it."""
        return max(0.0, (self.manifest.finished_at - self.manifest.started_at).total_seconds())


def stored_progress(log: logging.Logger) -> Callable[[int, int], None]:
    """Log `stored n/N files` at every tenth of the files (not per file: a backup may hold thousands)."""
    reported = -1

    def report(done: int, total: int) -> None:
        nonlocal reported
        if done * 10 // total != reported:
            reported = done * 10 // total
            log.info(f"{PROGRESS_PREFIX}stored {done}/{total} files")

    return report


def publish_backup(
    source: SourceConfig, storage: BackupRepository, staging: Staging, log: logging.Logger,
    early: EarlyUpload | None = None,
) -> Published:
    """Publish a staged backup whose checks passed; manifest last; latest.json only after that.

    With a signing key, the manifest is signed before anything is stored (a backup never exists unsigned), and
    the stored manifest is checked against the key's public half before latest.json moves to it. Files an `early`
    upload stored while the checks ran keep the hash it took and are not stored again.
    """
    write_restore_doc(source.name, staging)
    known = early.unchanged_digests(staging.root) if early else {}
    digests = {rel: known.get(rel) or sha256_file(staging.root / rel)
               for rel in staged_files(staging.root) if rel != CHECKSUMS_NAME}
    write_checksums(staging, digests)
    digests[CHECKSUMS_NAME] = sha256_file(staging.root / CHECKSUMS_NAME)
    manifest = build_manifest(source.name, source.profile, staging, digests)
    if not manifest.passed:
        failed = manifest.failed_checks() or ["no check ran"]
        raise BackupError(f"backup {staging.backup_id} not published: checks did not pass ({', '.join(failed)})")
    signing_key = source_signing_key(source)
    if signing_key is not None:
        manifest = sign_manifest(manifest, signing_key)
    location = storage.publish(source.name, staging.backup_id, manifest, early, on_stored=stored_progress(log))
    if signing_key is not None:
        stored = storage.read_manifest(source.name, staging.backup_id)
        check_signature(stored, signing_key.public_key(), source.name, staging.backup_id)
    storage.write_latest(source.name, staging.backup_id, {
        "backup_id": staging.backup_id, "location": location,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
    })
    log.info(f"published backup {staging.backup_id} to {location}")
    return Published(location, manifest, len(early.stored) if early else 0)
