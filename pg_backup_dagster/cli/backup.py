"""Commands that make backups: `backup`, `demo`, and `list` to see them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pg_backup_dagster.cli.app import SourceOption, app, clean_errors, progress_printer, selected_source


@app.command()
@clean_errors
def backup(
    source: SourceOption = None,
    backup_id: Annotated[str | None, typer.Option(help="Partition key; default: now (UTC).")] = None,
) -> None:
    """Back up a source now through Dagster (PG_BACKUP_DATABASE_URL → PG_BACKUP_TARGET, or PG_BACKUP_CONFIG)."""
    from pg_backup_dagster.backup.backup_id import validate_backup_id
    from pg_backup_dagster.cli.report import print_outcome
    from pg_backup_dagster.defs.preflight import preflight
    from pg_backup_dagster.defs.run import open_instance, run_backup

    if backup_id:
        validate_backup_id(backup_id)
    chosen, sources = selected_source(source)
    preflight(chosen)
    outcome = run_backup(chosen, sources, open_instance(), backup_id, on_progress=progress_printer())
    print_outcome(outcome, chosen)
    if not outcome.success:
        raise typer.Exit(1)


@app.command()
@clean_errors
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where the demo keeps its server, backups, instance.")] = Path(
        ".pg_backup_demo"
    ),
) -> None:
    """Start an embedded PostgreSQL 18, load a sample database, back it up through Dagster, print a summary."""
    from pg_backup_dagster.demo.run import run_demo

    raise typer.Exit(run_demo(directory.resolve()))


@app.command(name="list")
@clean_errors
def list_backups(source: SourceOption = None) -> None:
    """Published backups (those with a manifest), oldest first, with sizes and check results."""
    from pg_backup_dagster.cli.report import print_backup_list

    chosen, _ = selected_source(source)
    print_backup_list(chosen)
