"""Before a run: prove the settings work, so bad input fails in one line with nothing written."""

from __future__ import annotations

from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.constants import postgres_key
from pg_backup_dagster.defs.resources import source_resources
from pg_backup_dagster.errors import BackupError, register_secret
from pg_backup_dagster.storage import open_source_storage


def source_dsn(source: SourceConfig) -> str:
    """The source's connection string, from config or its environment variable."""
    dsn = source.database_url()
    if not dsn:
        raise BackupError(f"{source.dsn_env} is not set: give the database URL of source '{source.name}'")
    return dsn


def preflight(source: SourceConfig) -> None:
    """DSN present, target writable, server reachable with these credentials, pg_dump new enough."""
    resources = source_resources(source, dsn=source_dsn(source))
    open_source_storage(source)
    pg = resources[postgres_key(source)].database()
    register_secret(pg.conn_params().get("password"))
    pg.server_major(f"pg_backup_dagster/preflight/{source.name}")
