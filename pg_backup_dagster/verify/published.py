"""Verify a stored backup: every file against the manifest's sha256, every archive readable, every table's
data.sql rows against the manifest's content hash (the full dump's rows), optionally a full test restore compared
with the manifest's per-table row counts and content hashes, its indexes amchecked. Reports every bad file, not
just the first."""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pg_backup_dagster.backup.manifest import FileEntry
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.errors import BackupError, one_line
from pg_backup_dagster.pg.tools import find_tools
from pg_backup_dagster.restore.run import OpenedBackup, open_backup, work_dir
from pg_backup_dagster.storage.base import concurrently
from pg_backup_dagster.storage.repository import Recheck
from pg_backup_dagster.tiers.content import script_digest
from pg_backup_dagster.tiers.registry import ARCHIVE_TIERS
from pg_backup_dagster.verify.check_server import NoCheckServer, choose_check_server
from pg_backup_dagster.verify.content import ContentSpec
from pg_backup_dagster.verify.test_restore import RestoreReport, restore_and_compare


@dataclass
class VerifyReport:
    """What verify found: files checked, problems (each naming its file), and the test restore if one ran."""

    backup_id: str
    files: int = 0
    archives: int = 0
    problems: list[str] = field(default_factory=list)
    restore: RestoreReport | None = None
    note: str | None = None  # why a passing verify could not be recorded in verify.json

    @property
    def passed(self) -> bool:
        return not self.problems and (self.restore is None or self.restore.passed)


def archive_problem(pg_restore: str, path: Path) -> str | None:
    """pg_restore -l reads the whole table of contents: a truncated or foreign file fails here."""
    result = subprocess.run([pg_restore, "-l", str(path)], capture_output=True, text=True, check=False)
    return None if result.returncode == 0 else one_line(result.stderr) or "pg_restore -l failed"


def check_files(
    backup: OpenedBackup, report: VerifyReport, pg_restore_bin: str, work: Path, *, keep_full: bool
) -> Path | None:
    """Every manifest file against its sha256 (in place on a local target, else a fetched copy, deleted once
    checked), every archive with pg_restore -l; returns the full archive when keep_full. Files are checked the
    target's `transfers` at a time; one read per file, linear in the number of files."""
    hashes = {table.key: table.sha256 for table in backup.manifest.tables if table.sha256}
    checked = concurrently(backup.manifest.files,
                           lambda e: _check_file(backup, e, pg_restore_bin, work, keep_full, hashes),
                           backup.storage.store.transfers)
    full_archive = None
    for entry, local, problem in checked:
        if local is not None:
            report.files += 1
            report.archives += entry.tier in ARCHIVE_TIERS
            if entry.tier == "full" and keep_full:
                full_archive = local
        if problem:
            report.problems.append(f"{entry.path}: {problem}")
    return full_archive


def _check_file(
    backup: OpenedBackup, entry: FileEntry, pg_restore_bin: str, work: Path, keep_full: bool,
    hashes: dict[tuple[str, str], str],
) -> tuple[FileEntry, Path | None, str | None]:
    """One file: (entry, its verified local path or None, what is wrong with it or None)."""
    try:
        local = backup.storage.verified_file(backup.source.name, backup.backup_id, entry, work / entry.path)
    except BackupError as exc:
        return entry, None, str(exc)
    problem = archive_problem(pg_restore_bin, local) if entry.tier in ARCHIVE_TIERS else None
    rows_differ = _content_problem(entry, local, hashes)
    if local.is_relative_to(work) and not (entry.tier == "full" and keep_full):
        local.unlink()
    return entry, local, f"unreadable archive: {problem}" if problem else rows_differ


def _content_problem(entry: FileEntry, local: Path, hashes: dict[tuple[str, str], str]) -> str | None:
    """A table's data.sql whose COPY rows are not the full dump's (their content hash differs from the manifest's)."""
    if entry.tier != "table" or entry.kind != "data" or entry.schema is None or entry.table is None:
        return None
    expected = hashes.get((entry.schema, entry.table))
    if expected is None or script_digest(local) == expected:
        return None
    return f"rows of {entry.schema}.{entry.table} differ from the full dump's (content hash differs from the manifest's)"


def verify_backup(
    source: SourceConfig, backup_id: str, *, full_restore: bool = False, restore_url: str | None = None
) -> VerifyReport:
    """Check one published backup file by file (at most the target's `transfers` files on local disk at once).

    With a verify key configured for the source, the manifest's signature is checked first (in open_backup): a
    bad or missing signature ends verify with one line before any file is fetched.
    """
    backup = open_backup(source, backup_id)
    report = VerifyReport(backup.backup_id)
    tools = find_tools(source.pg_bin)
    with work_dir() as tmp:
        work = Path(tmp)
        full_archive = check_files(backup, report, tools.path("pg_restore"), work, keep_full=full_restore)
        if full_restore and full_archive is not None and not report.problems:
            manifest = backup.manifest
            try:
                server = choose_check_server(full_archive, restore_url, manifest.server_major)
            except NoCheckServer as problem:
                report.restore = RestoreReport(errors=[str(problem)])
                return report
            spec = ContentSpec.of_archive(full_archive, manifest.copy_settings, manifest.server_major)
            report.restore = restore_and_compare(
                tools, full_archive, [asdict(t) for t in manifest.tables], server=server,
                jobs=source.restore_jobs, accepted_errors=list(source.accepted_restore_errors),
                content=spec, amcheck=True, heapallindexed=source.amcheck_heapallindexed,
            )
    if report.passed:
        report.note = record_verified(backup, "sha256+restore" if report.restore else "sha256")
    return report


def record_verified(backup: OpenedBackup, how: str) -> str | None:
    """Note a passing verify in the backup's verify.json (what `list` and `status` show as "verified"), unless a
    failed re-check is recorded there: that mark is final. Returns why it was not written, if it could not be
    (a read-only target is fine for verify)."""
    storage, name, backup_id = backup.storage, backup.source.name, backup.backup_id
    if storage.failed_recheck(name, backup_id) is not None:
        return "verify.json records a failed re-check: left as is (delete it after repairing the files)"
    result = Recheck(checked_at=datetime.now(UTC).isoformat(timespec="seconds"), how=how, by="verify", passed=True)
    try:
        storage.record_recheck(name, backup_id, result)
    except BackupError as exc:
        return f"could not record the result in verify.json: {exc}"
    return None
