"""The one Definitions object of this code location, built from the configured sources."""

from __future__ import annotations

import dagster as dg

from pg_backup_dagster.assets import build_backup_assets
from pg_backup_dagster.assets.context import postgres_key, target_key
from pg_backup_dagster.checks import build_backup_checks
from pg_backup_dagster.config import SourceConfig, load_sources
from pg_backup_dagster.jobs import build_backup_job
from pg_backup_dagster.maintenance_job import build_retention_job
from pg_backup_dagster.partitions import backups_partitions_def
from pg_backup_dagster.resources import BackupTargetResource, PostgresResource
from pg_backup_dagster.restore_job import build_restore_job
from pg_backup_dagster.schedules import build_schedules, with_freshness
from pg_backup_dagster.sensors import build_sensors


def source_resources(source: SourceConfig, dsn: str | None = None) -> dict[str, dg.ConfigurableResource]:
    """The database and target of one source; the DSN stays an EnvVar until a run needs it."""
    dsn = dsn or (source.dsn if source.dsn is not None else dg.EnvVar(source.dsn_env))
    return {
        postgres_key(source): PostgresResource(
            dsn=dsn, source=source.name, max_connections=source.max_connections,
            retry_attempts=source.retry_attempts, retry_max_wait=source.retry_max_wait, pg_bin=source.pg_bin,
        ),
        target_key(source): BackupTargetResource(
            url=source.target, sse=source.sse, kms_key_id=source.kms_key_id, storage_class=source.storage_class,
            age_recipients=list(source.age_recipients), part_size=source.part_size,
        ),
    }


def build_definitions(sources: list[SourceConfig]) -> dg.Definitions:
    """Assets, checks, jobs, schedules, sensors and resources for every source, in one Definitions."""
    assets, checks, jobs, resources = [], [], [], {}
    for source in sources:
        partitions = backups_partitions_def(source)
        assets += build_backup_assets(source, partitions)
        checks += build_backup_checks(source, partitions)
        jobs += [build_backup_job(source), build_retention_job(source), build_restore_job(source)]
        resources.update(source_resources(source))
    return dg.Definitions(
        assets=with_freshness(assets, sources), asset_checks=checks, jobs=jobs, resources=resources,
        schedules=build_schedules(sources), sensors=build_sensors(sources),
    )


defs = build_definitions(load_sources())
