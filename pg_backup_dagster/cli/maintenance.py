"""Commands that remove things: `retention` (old backups, by policy) and `gc` (leftovers of failed runs).

Both are dry runs unless `--apply` is given, and act on every configured source unless `--source` picks one.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pg_backup_dagster.cli.app import app, clean_errors
from pg_backup_dagster.config import SourceConfig, find_source, load_sources
from pg_backup_dagster.storage import DEFAULT_GC_MIN_AGE

SourcesOption = Annotated[
    str | None, typer.Option("--source", "-s", help="Source name (default: every configured source).")
]
ApplyOption = Annotated[bool, typer.Option("--apply", help="Delete for real (default: dry run, print only).")]


def chosen_sources(name: str | None) -> list[SourceConfig]:
    """The named source, or all of them: maintenance is per source, so 'all' is a safe default."""
    sources = load_sources()
    return [find_source(sources, name)] if name else sources


@app.command()
@clean_errors
def retention(source: SourcesOption = None, apply: ApplyOption = False) -> None:
    """Backups the retention policy no longer keeps, with the reason for every backup; --apply deletes them."""
    from pg_backup_dagster.defs.run import open_instance
    from pg_backup_dagster.retention.apply import run_retention
    from pg_backup_dagster.storage import open_source_storage

    instance = open_instance() if apply else None
    for chosen in chosen_sources(source):
        result = run_retention(chosen, open_source_storage(chosen), instance, apply=apply)
        typer.echo(f"source '{chosen.name}' at {result.location}:")
        if chosen.retention.is_empty():
            typer.echo("  no retention rule set: every backup is kept")
        for line in result.lines(applied=apply):
            typer.echo(f"  {line}")
        if apply:
            typer.echo(f"  deleted {len(result.deleted)} backup(s) and their partitions")
        elif result.plan.delete:
            typer.echo(f"  dry run: {len(result.plan.delete)} backup(s) would be deleted; pass --apply to delete them")
        else:
            typer.echo("  dry run: nothing to delete")


@app.command()
@clean_errors
def gc(
    source: SourcesOption = None,
    apply: ApplyOption = False,
    min_age: Annotated[
        float, typer.Option("--min-age", min=0, help="Only leftovers untouched for this many seconds.")
    ] = DEFAULT_GC_MIN_AGE,
) -> None:
    """Remove leftovers of failed runs (staging dirs, unfinished uploads, folders without manifest).

    Never touches a backup with a manifest. Keep --min-age above the longest backup run: a running
    backup's staging looks like a leftover until it publishes.
    """
    from pg_backup_dagster.storage import open_source_storage

    for chosen in chosen_sources(source):
        storage = open_source_storage(chosen)
        report = storage.sweep(chosen.name, min_age=min_age, dry_run=not apply, how=chosen.retention_verify)
        verb = "removed" if apply else "would remove"
        typer.echo(f"source '{chosen.name}' at {storage.url}: {verb} {len(report.removed)} leftover(s) untouched for "
                   f"{min_age:g} s" + ("" if apply else "; pass --apply to remove them"))
        for path in report.removed:
            typer.echo(f"  {verb} {path}")
        for note in report.notes:
            typer.echo(f"  note: {note}")
