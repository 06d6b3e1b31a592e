"""Run one backup through Dagster on a real instance: add the partition, run the job, read back the outcome.

Used by `pg-backup-dagster backup` and `demo`; the UI and schedules launch the same job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from pg_backup_dagster.backup.backup_id import new_backup_id, validate_backup_id
from pg_backup_dagster.config import DAGSTER_HOME_ENV, SourceConfig, setting
from pg_backup_dagster.constants import SOURCE_TAG, TRIGGER_TAG, backup_job_name
from pg_backup_dagster.definitions import build_definitions
from pg_backup_dagster.defs.instance import ensure_instance_config, process_tags, reclaim_abandoned_runs
from pg_backup_dagster.errors import one_line, redact


@dataclass
class BackupOutcome:
    """What a backup run did, read from the instance's events."""

    source: str
    backup_id: str
    run_id: str
    success: bool
    materialized: dict[str, dict] = field(default_factory=dict)
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def open_instance(dagster_home: Path | None = None) -> dg.DagsterInstance:
    """The instance in DAGSTER_HOME (created if missing), so runs show up in the UI afterwards."""
    home = dagster_home or Path(setting(DAGSTER_HOME_ENV) or Path.home() / ".pg_backup_dagster" / "dagster_home")
    ensure_instance_config(home)
    os.environ[DAGSTER_HOME_ENV] = str(home.resolve())  # dg.DagsterInstance.get() reads it
    return dg.DagsterInstance.get()


def run_backup(
    source: SourceConfig,
    sources: list[SourceConfig],
    instance: dg.DagsterInstance,
    backup_id: str | None = None,
    log_level: str = "WARNING",
) -> BackupOutcome:
    """Add the partition and execute `backup_{source}` for it in this process (one connection budget)."""
    backup_id = validate_backup_id(backup_id) if backup_id else new_backup_id()
    defs = build_definitions(sources)
    instance.add_dynamic_partitions(source.partitions_name, [backup_id])
    reclaim_abandoned_runs(instance, source.name)
    job = defs.resolve_job_def(backup_job_name(source))
    result = job.execute_in_process(
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        partition_key=backup_id, instance=instance, raise_on_error=False,
        tags={SOURCE_TAG: source.name, TRIGGER_TAG: "cli", **process_tags()},
    )
    outcome = BackupOutcome(source.name, backup_id, result.run_id, result.success)
    for event in result.all_events:
        if event.is_step_materialization:
            mat = event.step_materialization_data.materialization
            outcome.materialized[mat.asset_key.path[-1]] = {k: v.value for k, v in mat.metadata.items()}
        elif event.is_step_failure:
            error = event.step_failure_data.error
            outcome.errors.append(f"{event.step_key}: {_error_line(error)}")
    for evaluation in result.get_asset_check_evaluations():
        warned = evaluation.severity == dg.AssetCheckSeverity.WARN  # a warning (RTO budget), not a failure
        outcome.checks[evaluation.check_name] = (evaluation.passed or warned, evaluation.description or "")
    return outcome


def _error_line(error) -> str:
    """The innermost cause of a step failure, on one redacted line."""
    while error is not None and error.cause is not None:
        error = error.cause
    return one_line(redact(error.message if error else "unknown error"))
