"""`pg-backup-dagster`: a thin command line over the same Dagster definitions the UI and schedules use.

Each group of commands lives in its own module and registers itself on `app`.
"""

from pg_backup_dagster.cli.app import app, main
from pg_backup_dagster.cli import backup  # noqa: F401  (registers commands)
from pg_backup_dagster.cli import service  # noqa: F401  (registers commands)
from pg_backup_dagster.cli import maintenance  # noqa: F401  (registers commands)
from pg_backup_dagster.cli import restore  # noqa: F401  (registers commands)

__all__ = ["app", "main"]
