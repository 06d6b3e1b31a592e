"""The Typer app and what every command shares: one-line errors, source selection."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from pg_backup_dagster import __version__
from pg_backup_dagster.config import SourceConfig, find_source, load_sources
from pg_backup_dagster.errors import BackupError, one_line, redact

# Every command, in the order a newcomer meets them (a test checks it against the registered commands and README).
COMMANDS_HELP = ("PostgreSQL backups through Dagster: demo, backup, list, status, verify, restore, retention, gc, "
                 "pools, tools.")

app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode=None,  # plain help: flags show no type, text wraps
    help=COMMANDS_HELP,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"pg-backup-dagster {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """PostgreSQL backups through Dagster."""

SourceOption = Annotated[str | None, typer.Option("--source", "-s", help="Source name (default: the only one).")]


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {one_line(redact(message))}", err=True)
    raise typer.Exit(code)


def progress_printer() -> Callable[[str], None]:
    """Where live progress of long work goes: the terminal, for a person watching; nowhere when stderr is a file
    or a pipe, so scripts and monitoring read only the result and, on failure, the one error line. It writes to
    a copy of the terminal's descriptor, since Dagster captures the steps' own stderr into its compute logs."""
    if not sys.stderr.isatty():
        return lambda _message: None
    terminal = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    return lambda message: print(message, file=terminal)


def clean_errors(func: Callable) -> Callable:
    """Every known failure ends as one redacted line on stderr and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except BackupError as exc:
            fail(str(exc))

    return wrapper


def selected_source(name: str | None) -> tuple[SourceConfig, list[SourceConfig]]:
    sources = load_sources()
    return find_source(sources, name), sources


def main() -> None:  # pragma: no cover - console entry point
    # SIGTERM (a scheduler, an operator, a pod shutting down) interrupts like Ctrl-C, as in Dagster's own run
    # workers: the running step then stops its pg tools and its sessions on the server instead of dying silently.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(app())
