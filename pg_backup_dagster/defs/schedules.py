"""Per-source schedules, and the freshness policy their cron implies.

A schedule cannot return dynamic-partition requests, so each tick adds its own partition (the tick time as
backup id) to the instance and then requests the run for it; `run_key` = backup id makes a retried tick
idempotent.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise

import dagster as dg

from pg_backup_dagster.backup.backup_id import new_backup_id
from pg_backup_dagster.config import SourceConfig, cron_ticks
from pg_backup_dagster.constants import MANIFEST_ASSET, SOURCE_TAG, TRIGGER_TAG, backup_job_name, schedule_name

MIN_GRACE = timedelta(hours=1)
TICKS_SAMPLED = 60



def build_schedule(source: SourceConfig) -> dg.ScheduleDefinition:
    """The tick adds partition `{backup_id}` and requests `backup_{source}` for it."""

    @dg.schedule(
        name=schedule_name(source),
        cron_schedule=source.schedule,
        execution_timezone=source.timezone,
        job_name=backup_job_name(source),
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Back up '{source.name}' on '{source.schedule}' ({source.timezone}).",
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        backup_id = new_backup_id(context.scheduled_execution_time)
        context.instance.add_dynamic_partitions(source.partitions_name, [backup_id])
        return dg.RunRequest(
            partition_key=backup_id,
            run_key=backup_id,
            tags={SOURCE_TAG: source.name, TRIGGER_TAG: "schedule"},
        )

    return _schedule


def build_schedules(sources: Sequence[SourceConfig]) -> list[dg.ScheduleDefinition]:
    return [build_schedule(s) for s in sources if s.schedule]


def longest_gap(cron: str, timezone: str, now: datetime | None = None) -> timedelta:
    """The longest wait between two consecutive ticks over the next TICKS_SAMPLED (weekday-only crons: 3 days)."""
    ticks = list(islice(cron_ticks(cron, timezone, now or datetime.now(UTC)), TICKS_SAMPLED))
    return max(b - a for a, b in pairwise(ticks))


def freshness_window(source: SourceConfig) -> timedelta | None:
    """How old the last good backup may get: `freshness_hours` if set, else the cron's longest gap plus a grace
    of a quarter of it (at least an hour) for the backup itself to run. None: nothing says how fresh it must be."""
    if source.freshness_hours is not None:
        return timedelta(hours=source.freshness_hours)
    if not source.schedule:
        return None
    gap = longest_gap(source.schedule, source.timezone)
    return gap + max(MIN_GRACE, gap / 4)


def with_freshness(assets: Sequence, sources: Sequence[SourceConfig]) -> list:
    """Put a time-window freshness policy on each source's backup_manifest: it materializes only when a backup
    passed its checks and was published, so its age is the age of the last good backup."""
    windows = {dg.AssetKey([s.name, MANIFEST_ASSET]): freshness_window(s) for s in sources}

    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        window = windows.get(spec.key)
        if window is None:
            return spec
        return spec.replace_attributes(freshness_policy=dg.FreshnessPolicy.time_window(fail_window=window))

    return list(dg.map_asset_specs(apply, assets))
