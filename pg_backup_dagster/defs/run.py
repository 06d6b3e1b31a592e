"""Run one backup through Dagster on a real instance: add the partition, run the job, read back the outcome.

Used by `pg-backup-dagster backup` and `demo`; the UI and schedules launch the same job.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from pg_backup_dagster.backup.backup_id import new_backup_id, validate_backup_id
from pg_backup_dagster.config import DAGSTER_HOME_ENV, SourceConfig, setting
from pg_backup_dagster.constants import IN_PROCESS_TAG, PROGRESS_PREFIX, SOURCE_TAG, TRIGGER_TAG, backup_job_name
from pg_backup_dagster.definitions import build_definitions
from pg_backup_dagster.defs import in_process
from pg_backup_dagster.defs.assets import discard_early_upload
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
    unverified: list[str] = field(default_factory=list)  # checks that could not run; published anyway (WARN)
    errors: list[str] = field(default_factory=list)


def instance_home() -> Path:
    """DAGSTER_HOME, or the CLI's own default (a temp home would lose the run history)."""
    return Path(setting(DAGSTER_HOME_ENV) or Path.home() / ".pg_backup_dagster" / "dagster_home")


def open_instance(dagster_home: Path | None = None) -> dg.DagsterInstance:
    """The instance in DAGSTER_HOME (created if missing), so runs show up in the UI afterwards."""
    home = dagster_home or instance_home()
    ensure_instance_config(home)
    os.environ[DAGSTER_HOME_ENV] = str(home.resolve())  # dg.DagsterInstance.get() reads it
    return dg.DagsterInstance.get()


def step_progress() -> Callable[[dg.EventLogEntry], str | None]:
    """A reader of a run's events that turns step starts and ends into one line each (`None` for the others)."""
    started: dict[str, float] = {}

    def line(entry: dg.EventLogEntry) -> str | None:
        event, step = entry.dagster_event, entry.step_key
        if step is None:
            return None
        if event is None:  # a step's own log line: shown when it says it is progress
            message = entry.user_message
            return f"  {step} {message[len(PROGRESS_PREFIX):]}" if message.startswith(PROGRESS_PREFIX) else None
        if event.is_step_start:
            started[step] = time.monotonic()
            return f"  {step} started"
        if event.is_step_success or event.is_step_failure or event.is_step_skipped:
            verdict = "done" if event.is_step_success else "FAILED" if event.is_step_failure else "skipped"
            took = time.monotonic() - started.get(step, time.monotonic())
            return f"  {step} {verdict}" + (f" ({took:.1f} s)" if step in started else "")
        return None

    return line


def run_backup(
    source: SourceConfig,
    sources: list[SourceConfig],
    instance: dg.DagsterInstance,
    backup_id: str | None = None,
    log_level: str = "WARNING",
    on_progress: Callable[[str], None] | None = None,
) -> BackupOutcome:
    """Add the partition and execute `backup_{source}` for it in this process (one connection budget).

    on_progress gets a line as each step starts and ends, while the run goes on (the CLI shows them on a terminal).
    """
    backup_id = validate_backup_id(backup_id) if backup_id else new_backup_id()
    defs = build_definitions(sources)
    instance.add_dynamic_partitions(source.partitions_name, [backup_id])
    reclaim_abandoned_runs(instance, source.name)
    job = defs.resolve_job_def(backup_job_name(source))
    run_id = str(uuid.uuid4())
    if on_progress is not None:
        progress = step_progress()

        def listener(entry: dg.EventLogEntry) -> None:
            if (text := progress(entry)) is not None:
                on_progress(text)

        instance.add_event_listener(run_id, listener)
    result = job.execute_in_process(
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        partition_key=backup_id, instance=instance, raise_on_error=False, run_id=run_id,
        tags={SOURCE_TAG: source.name, TRIGGER_TAG: "cli", IN_PROCESS_TAG: "true", **process_tags()},
    )
    discard_early_upload(result.run_id)  # what a run that did not publish stored early
    in_process.forget(result.run_id)
    outcome = BackupOutcome(source.name, backup_id, result.run_id, result.success)
    for event in result.all_events:
        if event.is_step_materialization:
            mat = event.step_materialization_data.materialization
            outcome.materialized[mat.asset_key.path[-1]] = {k: v.value for k, v in mat.metadata.items()}
        elif event.is_step_failure:
            error = event.step_failure_data.error
            outcome.errors.append(f"{event.step_key}: {_error_line(error)}")
    for evaluation in result.get_asset_check_evaluations():
        description = evaluation.description or ""
        warned = evaluation.severity == dg.AssetCheckSeverity.WARN and not evaluation.passed  # never blocks
        unverified = warned and description.startswith("UNVERIFIED")  # no check server could restore it
        outcome.checks[evaluation.check_name] = (evaluation.passed or (warned and not unverified), description)
        if unverified:
            outcome.unverified.append(evaluation.check_name)
    return outcome


def _error_line(error) -> str:
    """The innermost cause of a step failure, on one redacted line."""
    while error is not None and error.cause is not None:
        error = error.cause
    return one_line(redact(error.message if error else "unknown error"))
