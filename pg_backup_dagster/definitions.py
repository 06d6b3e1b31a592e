"""The one Definitions object of this code location, built from the configured sources when Dagster asks.

`defs` is lazy (`@dg.definitions`): importing this module reads no config and builds nothing, so the CLI and
tests that only need `build_definitions` do not pay for the whole location twice.
"""

from __future__ import annotations

import dagster as dg

from pg_backup_dagster.config import SourceConfig, load_sources
from pg_backup_dagster.defs.assets import build_backup_assets
from pg_backup_dagster.defs.checks import build_backup_checks
from pg_backup_dagster.defs.jobs import build_backup_job, build_restore_job, build_retention_job
from pg_backup_dagster.defs.partitions import backups_partitions_def
from pg_backup_dagster.defs.resources import source_resources
from pg_backup_dagster.defs.schedules import build_schedules, with_freshness
from pg_backup_dagster.defs.sensors import build_sensors


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


@dg.definitions
def defs() -> dg.Definitions:
    """The code location Dagster loads (workspace.yaml, `dg dev`): every configured source."""
    return build_definitions(load_sources())
