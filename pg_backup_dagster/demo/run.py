"""`pg-backup-dagster demo`: everything lives in one folder, so the Dagster UI can show the run afterwards."""

from __future__ import annotations

import subprocess
from importlib import resources
from pathlib import Path

import psycopg
import typer
import yaml

from pg_backup_dagster.cli.app import progress_printer
from pg_backup_dagster.cli.report import print_outcome
from pg_backup_dagster.config import load_config_file
from pg_backup_dagster.defs.run import open_instance, run_backup
from pg_backup_dagster.errors import BackupError, one_line
from pg_backup_dagster.pg.local_server import LocalPostgres
from pg_backup_dagster.pg.tools import find_tools

SAMPLE_DB = "sample"


def load_sample(server: LocalPostgres) -> None:
    """Create the sample database once; later demos back up the same data again."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [SAMPLE_DB]).fetchone():
            return
        conn.execute(f"CREATE DATABASE {SAMPLE_DB}")
    sql = resources.files("pg_backup_dagster.demo").joinpath("sample.sql").read_text(encoding="utf-8")
    result = subprocess.run(
        [find_tools().path("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", server.dsn(SAMPLE_DB)],
        input=sql, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise BackupError(f"loading the sample database failed: {one_line(result.stderr)}")


def write_config(directory: Path, server: LocalPostgres) -> Path:
    """A config the UI can load too: `PG_BACKUP_CONFIG={dir}/config.yaml dg dev`."""
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump({"sources": [{
        "name": "demo", "dsn": server.dsn(SAMPLE_DB), "target": str(directory / "backups"),
        "retention": {"keep_last": 7},  # no schedule: the demo's server only runs while the demo does
    }]}))
    return path


def run_demo(directory: Path) -> int:
    """Start the server, load the sample, back it up through Dagster, print the summary; 0 when all passed."""
    directory.mkdir(parents=True, exist_ok=True)
    server = LocalPostgres(root_dir=directory / "server", trust_local=True)
    server.start()
    try:
        load_sample(server)
        config = write_config(directory, server)
        sources = load_config_file(config)
        instance = open_instance(directory / "dagster_home")
        outcome = run_backup(sources[0], sources, instance, on_progress=progress_printer())
        print_outcome(outcome, sources[0])
    finally:
        server.stop()
    typer.echo(closing_hints(directory, config, outcome.backup_id if outcome.success else None))
    return 0 if outcome.success else 1


def closing_hints(directory: Path, config: Path, backup_id: str | None) -> str:
    """What to do next, as commands that work verbatim from this folder (the e2e test runs them)."""
    env = f"PG_BACKUP_CONFIG={config}"
    lines = ["", "Next:"]
    if backup_id:
        folder = directory / "backups" / "demo" / backup_id
        lines += [
            f"  backup folder:  {folder}",
            f"  how to restore it without this tool:  {folder / 'RESTORE.md'}",
            f"  {env} pg-backup-dagster list",
            f"  {env} pg-backup-dagster verify {backup_id}",
            f"  {env} PG_BACKUP_RESTORE_TO=postgresql://USER@HOST/DB pg-backup-dagster restore {backup_id} --create-db",
        ]
    lines += [
        "  open the UI on this instance (in the repository's folder, venv active):",
        f"  DAGSTER_HOME={directory / 'dagster_home'} {env} dg dev",
        "(the demo server is stopped; `pg-backup-dagster demo` again starts it and adds a backup; verify and",
        " restore read the backup folder and need no server)",
    ]
    return "\n".join(lines)
