"""`pg-backup-dagster`: a thin command line over the same Dagster definitions the UI and schedules use."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from pg_backup_dagster.config import SourceConfig, find_source, load_sources
from pg_backup_dagster.errors import BackupError, one_line, redact

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {one_line(redact(message))}", err=True)
    raise typer.Exit(code)


def clean_errors(func: Callable) -> Callable:
    """Every known failure ends as one redacted line on stderr and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except BackupError as exc:
            fail(str(exc))

    return wrapper


SourceOption = Annotated[str | None, typer.Option("--source", "-s", help="Source name (default: the only one).")]


def selected_source(name: str | None) -> tuple[SourceConfig, list[SourceConfig]]:
    sources = load_sources()
    return find_source(sources, name), sources


@app.command()
@clean_errors
def backup(
    source: SourceOption = None,
    backup_id: Annotated[str | None, typer.Option(help="Partition key; default: now (UTC).")] = None,
) -> None:
    """Back up a source now through Dagster (PG_BACKUP_DATABASE_URL → PG_BACKUP_TARGET, or PG_BACKUP_CONFIG)."""
    from pg_backup_dagster.preflight import preflight
    from pg_backup_dagster.report import print_outcome
    from pg_backup_dagster.runner import open_instance, run_backup

    chosen, sources = selected_source(source)
    preflight(chosen)
    outcome = run_backup(chosen, sources, open_instance(), backup_id)
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
    """Published backups (those with a manifest), newest last, with sizes and check results."""
    from pg_backup_dagster.report import print_backup_list

    chosen, _ = selected_source(source)
    print_backup_list(chosen)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
