"""Dagster resources: the source database and the backup target."""

from pg_backup_dagster.resources.postgres import PostgresResource
from pg_backup_dagster.resources.target import BackupTargetResource

__all__ = ["BackupTargetResource", "PostgresResource"]
