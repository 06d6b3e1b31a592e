"""Dagster resources: the source database (PostgresResource) and the backup target (BackupTargetResource)."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.constants import postgres_key, target_key
from pg_backup_dagster.pg.source import SourceDatabase
from pg_backup_dagster.storage import BackupRepository, open_source_storage


class PostgresResource(dg.ConfigurableResource):
    """One source database, reached with a connection budget (the work is SourceDatabase's, in pg/source.py)."""

    dsn: str
    source: str = "main"
    max_connections: int = 4
    connect_timeout: int = 10
    retry_attempts: int = 5
    retry_max_wait: float = 20.0
    pg_bin: str | None = None
    lock_timeout: float = 60.0

    _database: SourceDatabase | None = PrivateAttr(default=None)

    def database(self) -> SourceDatabase:
        """The step's one SourceDatabase: every connection and tool of the step shares its semaphore."""
        if self._database is None:
            self._database = SourceDatabase(
                dsn=self.dsn, source=self.source, max_connections=self.max_connections,
                connect_timeout=self.connect_timeout, retry_attempts=self.retry_attempts,
                retry_max_wait=self.retry_max_wait, pg_bin=self.pg_bin,
                lock_timeout=self.lock_timeout,
            )
        return self._database


class BackupTargetResource(dg.ConfigurableResource):
    """Opens the storage for one source's target; credentials come from boto3's standard chain.

    Its fields are the source's target settings (same names), so it opens through `open_source_storage`.
    """

    target: str
    sse: str | None = None
    kms_key_id: str | None = None
    storage_class: str | None = None
    part_size: int | None = None
    age_recipients: list[str] = []
    file_mode: int = 0o600
    dir_mode: int = 0o700

    def open(self) -> BackupRepository:
        return open_source_storage(self)


def source_resources(source: SourceConfig, dsn: str | None = None) -> dict[str, dg.ConfigurableResource]:
    """The database and target of one source; the DSN stays an EnvVar until a run needs it."""
    dsn = dsn or (source.dsn if source.dsn is not None else dg.EnvVar(source.dsn_env))
    return {
        postgres_key(source): PostgresResource(
            dsn=dsn, source=source.name, max_connections=source.max_connections,
            retry_attempts=source.retry_attempts, retry_max_wait=source.retry_max_wait, pg_bin=source.pg_bin,
            lock_timeout=source.lock_timeout_seconds,
        ),
        target_key(source): BackupTargetResource(
            target=source.target, sse=source.sse, kms_key_id=source.kms_key_id, storage_class=source.storage_class,
            age_recipients=list(source.age_recipients), part_size=source.part_size,
            file_mode=source.file_mode, dir_mode=source.dir_mode,
        ),
    }
