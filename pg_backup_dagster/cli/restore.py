"""Commands that read backups back: `verify` (is it intact and restorable?) and `restore` (by tier)."""

from __future__ import annotations

from typing import Annotated

import typer

from pg_backup_dagster.cli.app import SourceOption, app, clean_errors, fail, progress_printer, selected_source
from pg_backup_dagster.errors import first_of


@app.command()
@clean_errors
def verify(
    backup_id: Annotated[str, typer.Argument(metavar="BACKUP_ID", help="Backup id, or 'latest'.")],
    source: SourceOption = None,
    full_restore: Annotated[
        bool, typer.Option("--full-restore", help="Also restore the full archive into a throwaway database.")
    ] = False,
) -> None:
    """Check every file against the manifest's sha256 and every archive with pg_restore -l; exit 1 if any is bad."""
    from pg_backup_dagster.verify.published import verify_backup

    chosen, _ = selected_source(source)
    report = verify_backup(chosen, backup_id, full_restore=full_restore, restore_url=chosen.restore_url())
    if report.problems:
        typer.echo(f"backup {report.backup_id}: FAILED, {len(report.problems)} problem(s):", err=True)
    else:
        typer.echo(f"backup {report.backup_id}: {report.files} files match the manifest, {report.archives} archives read")
    for problem in report.problems:
        typer.echo(f"BAD {problem}", err=True)
    if report.restore is not None:
        r = report.restore
        verdict = "passed" if r.passed else "FAILED"
        identical = sum(1 for row in r.tables if row.get("content") == "identical")
        where = f" on {r.server}" if r.server else ""
        typer.echo(f"test restore {verdict}{where}: {len(r.tables)} tables, {len(r.differing)} differ, {identical} "
                   f"identical in content, {r.seconds:.1f}s")
        for error in r.errors:
            typer.echo(f"  pg_restore: {error}", err=True)
        for row in r.differing:
            content = ", content differs" if row.get("content") == "differs" else ""
            typer.echo(f"  {row['schema']}.{row['table']}: expected {row['expected']} rows, restored "
                       f"{row['restored']}{content}", err=True)
        by_reason: dict[str, list[str]] = {}
        for table, why in r.not_compared.items():
            by_reason.setdefault(why, []).append(table)
        for why, tables in by_reason.items():
            typer.echo(f"  compared by count only ({why}): {first_of(tables)}")
        if r.amcheck is not None:
            typer.echo(f"  amcheck: {r.amcheck.unavailable or f'{r.amcheck.checked} B-tree indexes checked'}")
            for bad in r.amcheck.corrupt:
                typer.echo(f"  corrupt index {bad['index']}: {bad['error']}", err=True)
    if report.note:
        typer.echo(f"note: {report.note}", err=True)
    if not report.passed:
        raise typer.Exit(1)


@app.command()
@clean_errors
def restore(
    backup_id: Annotated[str, typer.Argument(metavar="BACKUP_ID", help="Backup id, or 'latest'.")],
    to: Annotated[
        str | None,
        typer.Option(
            "--to", help="Target database URL; better set PG_BACKUP_RESTORE_TO (keeps the password out of argv)."
        ),
    ] = None,
    source: SourceOption = None,
    full: Annotated[
        bool, typer.Option("--full", help="The whole database (the default when nothing else is chosen).")
    ] = False,
    roles: Annotated[bool, typer.Option("--roles", help="The roles (roles.sql); existing roles are reported.")] = False,
    schema: Annotated[list[str] | None, typer.Option("--schema", help="A schema, exact name (repeatable).")] = None,
    table: Annotated[
        list[str] | None, typer.Option("--table", help='SCHEMA.TABLE, exact names; quote dots: "a.b"."c" (repeatable).')
    ] = None,
    clean: Annotated[
        bool,
        typer.Option(
            "--clean",
            help="Replace what the target holds. Whole database: restore into a new database, check its row "
            "counts, then switch it in under the target's name (the target is untouched if anything fails). "
            "Schema: drop and recreate its objects in one transaction.",
        ),
    ] = False,
    old_database: Annotated[
        str,
        typer.Option(
            "--old-database",
            help="With --clean of the whole database: 'keep' the replaced database as <name>_before_<backup_id> "
            "(default) or 'drop' it after the switch.",
        ),
    ] = "keep",
    terminate_sessions: Annotated[
        bool,
        typer.Option(
            "--terminate-sessions",
            help="With --clean of the whole database: terminate other sessions on the target before the switch "
            "(by default the restore refuses, naming them).",
        ),
    ] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Parallel pg_restore jobs.")] = 2,
    create_db: Annotated[
        bool, typer.Option("--create-db", help="Create the target database first (dropped again if the restore fails).")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Allow restoring into the source database itself.")] = False,
) -> None:
    """Restore a backup, whole or by tier, into a database (PG_BACKUP_RESTORE_TO or --to)."""
    from pg_backup_dagster.config import setting
    from pg_backup_dagster.restore.run import TARGET_ENV, RestoreRequest, parse_table_name, restore_backup

    target = to or setting(TARGET_ENV)
    if not target:
        fail(f"no target: set {TARGET_ENV} (preferred) or pass --to URL")
    chosen, _ = selected_source(source)
    request = RestoreRequest(
        backup_id=backup_id,
        target_dsn=target,
        full=full,
        roles=roles,
        schemas=tuple(schema or ()),
        tables=tuple(parse_table_name(t) for t in table or ()),
        clean=clean,
        jobs=jobs,
        create_db=create_db,
        force=force,
        old_database=old_database,
        terminate_sessions=terminate_sessions,
    )
    result = restore_backup(chosen, request, log=progress_printer())
    typer.echo(f"restored backup {result.backup_id} of '{result.source}' into {result.target} in {result.seconds:.1f}s")
    for step in result.steps:
        typer.echo(f"  {step}")
    for note in result.notes:
        typer.echo(f"  note: {note}")
