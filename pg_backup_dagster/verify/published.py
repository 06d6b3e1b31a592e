"""Verify a stored backup: every file against the manifest's sha256, every archive readable, every table's
data.sql rows against the manifest's content hash (the full dump's rows), optionally a full test restore compared
with the manifest's per-table row counts and content hashes, its indexes amchecked. Reports every bad file, not
just the first."""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pg_backup_dagster.backup.manifest import FileEntry
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.errors import BackupError, one_line
from pg_backup_dagster.pg.tools import find_tools
from pg_backup_dagster.restore.run import OpenedBackup, open_backup, work_dir
from pg_backup_dagster.tiers.content import script_digest
from pg_backup_dagster.tiers.registry import ARCHIVE_TIERS
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
    """Every manifest file against its sha256 (in place on a local target, else one fetched copy at a time),
    every archive with pg_restore -l; returns the full archive when keep_full. One pass over the manifest and
    one read per file: linear in the number of files (the test counts storage calls and entries visited)."""
    full_archive = None
    hashes = {table.key: table.sha256 for table in backup.manifest.tables if table.sha256}
    for entry in backup.manifest.files:
        try:
            local = backup.storage.verified_file(backup.source.name, backup.backup_id, entry, work / entry.path)
        except BackupError as exc:
            report.problems.append(f"{entry.path}: {exc}")
            continue
        report.files += 1
        if entry.tier in ARCHIVE_TIERS:
            report.archives += 1
            if problem := archive_problem(pg_restore_bin, local):
                report.problems.append(f"{entry.path}: unreadable archive: {problem}")
        if problem := _content_problem(entry, local, hashes):
            report.problems.append(problem)
        if entry.tier == "full" and keep_full:
            full_archive = local
        elif local.is_relative_to(work):
            local.unlink()
    return full_archive


def _content_problem(entry: FileEntry, local: Path, hashes: dict[tuple[str, str], str]) -> str | None:
    """A table's data.sql whose COPY rows are not the full dump's (their content hash differs from the manifest's)."""
    if entry.tier != "table" or entry.kind != "data" or entry.schema is None or entry.table is None:
        return None
    expected = hashes.get((entry.schema, entry.table))
    if expected is None or script_digest(local) == expected:
        return None
    return (f"{entry.path}: rows of {entry.schema}.{entry.table} differ from the full dump's "
            "(content hash differs from the manifest's)")


def verify_backup(
    source: SourceConfig, backup_id: str, *, full_restore: bool = False, restore_url: str | None = None
) -> VerifyReport:
    """Check one published backup file by file (one file on local disk at a time).

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
            spec = ContentSpec.of_archive(full_archive, manifest.copy_settings, manifest.server_major)
            report.restore = restore_and_compare(
                tools, full_archive, [asdict(t) for t in manifest.tables], restore_url=restore_url,
                jobs=source.restore_jobs, content=spec, amcheck=True,
            )
    return report
