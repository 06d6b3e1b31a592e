"""Shared by the restore tests: back a real database up through Dagster, and run the CLI as a user would."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from typer.testing import CliRunner

from pg_backup_dagster.cli import app
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.runner import run_backup

HOSTILE_SQL = Path(__file__).parent / "sql" / "hostile.sql"


@dataclass
class Published:
    """A backup published by a real backup run: its source config, id and (for local targets) folder."""

    source: SourceConfig
    backup_id: str
    folder: Path | None


def back_up(name: str, dsn: str, target: str) -> Published:
    """One backup run of the database at dsn through Dagster (job backup_{name}); fails the test if it fails."""
    env_var = f"PGBD_TEST_{name.upper()}_DSN"
    os.environ[env_var] = dsn
    source = SourceConfig(name=name, dsn_env=env_var, target=target, restore_url_env=None)
    with dg.instance_for_test() as instance:
        outcome = run_backup(source, [source], instance)
    assert outcome.success, outcome.errors
    folder = None if target.startswith("s3://") else Path(target) / name / outcome.backup_id
    return Published(source, outcome.backup_id, folder)


def cli(published: Published, *args: str, env: dict[str, str] | None = None):
    """Run pg-backup-dagster with the source's settings in the environment, as a person would."""
    source = published.source
    base = {"PG_BACKUP_TARGET": source.target, "PG_BACKUP_SOURCE": source.name, "PG_BACKUP_CONFIG": "",
            "PG_BACKUP_DATABASE_URL": os.environ[source.dsn_env]}
    return CliRunner().invoke(app, list(args), env={**base, **(env or {})}, catch_exceptions=False)
