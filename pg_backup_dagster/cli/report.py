"""What the CLI prints: a backup run's summary and the list of published backups."""

from __future__ import annotations

import typer

from pg_backup_dagster.backup.manifest import tables_phrase
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.defs.run import BackupOutcome
from pg_backup_dagster.files import human_bytes
from pg_backup_dagster.storage import open_source_storage


def print_outcome(outcome: BackupOutcome, source: SourceConfig) -> None:
    """Files, sizes, check results and restore time of one run."""
    status = "OK" if outcome.success else "FAILED"
    typer.echo(f"backup {outcome.backup_id} of source '{outcome.source}': {status} (Dagster run {outcome.run_id})")
    full = outcome.materialized.get("full_dump", {})
    if full:
        typer.echo(f"  full dump      {full.get('file')}  {human_bytes(full.get('size_bytes', 0))}  "
                   f"{full.get('tables')} tables, {full.get('rows')} rows, {full.get('duration_s')} s")
    for name in ("schema_dumps", "table_dumps", "roles_sql"):
        meta = outcome.materialized.get(name)
        if meta:
            tables = f"{tables_phrase(meta['tables'], meta.get('partitioned_parents', 0))}, " if "tables" in meta else ""
            typer.echo(f"  {name:<14} {human_bytes(meta.get('size_bytes', 0))}  {tables}{meta.get('duration_s')} s")
    for check, (passed, description) in sorted(outcome.checks.items()):
        status = "passed" if passed else "UNVERIFIED" if check in outcome.unverified else "FAILED"
        typer.echo(f"  check {check:<22} {status}: {description}")
    manifest = outcome.materialized.get("backup_manifest")
    if manifest:
        typer.echo(f"  published      {manifest.get('location')}  ({manifest.get('files')} files, "
                   f"{human_bytes(manifest.get('total_bytes', 0))})")
    for error in outcome.errors:
        typer.echo(f"  error: {error}", err=True)


def print_backup_list(source: SourceConfig) -> None:
    """One line per published backup: id, size, tables, checks (a failed re-check of its files overrides the
    manifest's "passed"), and when and how its files were last re-checked."""
    from pg_backup_dagster.backup.backup_id import future_problem, parse_backup_id
    from pg_backup_dagster.errors import BackupError

    storage = open_source_storage(source, create=False)
    ids = storage.list_backups(source.name)
    latest = (storage.read_latest(source.name) or {}).get("backup_id")
    if not ids:
        typer.echo(f"no backups of source '{source.name}' at {storage.url}")
        return
    for backup_id in ids:
        manifest = storage.read_manifest(source.name, backup_id)
        try:
            recheck = storage.read_recheck(source.name, backup_id)
            verified = recheck.summary() if recheck else "never re-checked"
        except BackupError as exc:
            recheck, verified = None, f"re-check marker unreadable: {exc}"
        failed_recheck = recheck is not None and not recheck.passed
        checks = "passed" if manifest.passed and not failed_recheck else "FAILED"
        if checks == "passed" and manifest.unverified_checks():
            checks = f"passed, UNVERIFIED {', '.join(manifest.unverified_checks())}"
        mark = "  <- latest" if backup_id == latest else ""
        try:
            future = future_problem(parse_backup_id(backup_id))
        except BackupError:
            future = None
        flag = f"  (id {future}: ignored by retention)" if future else ""
        typer.echo(f"{backup_id}  {human_bytes(manifest.total_size):>10}  {manifest.tables_text()}  "
                   f"checks {checks}  {verified}{mark}{flag}")
