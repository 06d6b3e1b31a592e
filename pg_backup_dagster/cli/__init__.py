"""`pg-backup-dagster`: a thin command line over the same Dagster definitions the UI and schedules use.

Each group of commands lives in its own module and registers itself on `app` when imported.
"""

from pg_backup_dagster.cli import backup, maintenance, restore, service, status
from pg_backup_dagster.cli.app import app, main

__all__ = ["app", "backup", "main", "maintenance", "restore", "service", "status"]
