"""Sensors: "backup now" per source (clicked in the UI, never ticking on its own) and run-failure alerts.

"Backup now" is a sensor because a sensor result can carry a dynamic-partition request together with the run
request: the UI's "Preview tick result" dialog shows both and its "Apply requests" button adds the partition and
launches the run, so nobody types a partition key. It is stopped by default; started, it would back up on every
tick, which is the schedule's job.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Sequence
from typing import Any

import dagster as dg

from pg_backup_dagster.backup.backup_id import new_backup_id
from pg_backup_dagster.config import WEBHOOK_ENV, SourceConfig, setting
from pg_backup_dagster.constants import SOURCE_TAG, TRIGGER_TAG, backup_job_name, now_sensor_name
from pg_backup_dagster.defs.partitions import backups_partitions_def
from pg_backup_dagster.errors import one_line, redact

FAILURE_SENSOR = "backup_failure_webhook"



def build_now_sensor(source: SourceConfig) -> dg.SensorDefinition:
    partitions = backups_partitions_def(source)

    @dg.sensor(
        name=now_sensor_name(source),
        job_name=backup_job_name(source),
        default_status=dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=24 * 3600,
        description=f"Backup now: open, 'Preview tick result', 'Apply requests' backs up '{source.name}' once. "
        "Keep it stopped.",
    )
    def _now(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        backup_id = new_backup_id()
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    partition_key=backup_id,
                    run_key=backup_id,
                    tags={SOURCE_TAG: source.name, TRIGGER_TAG: "now"},
                )
            ],
            dynamic_partitions_requests=[partitions.build_add_request([backup_id])],
        )

    return _now


def failure_payload(context: dg.RunFailureSensorContext) -> dict[str, Any]:
    """What an alert says: which source, backup and run failed, and the failure in one redacted line.
    Built only from run tags and event messages, which never hold secrets; redacted again anyway."""
    run = context.dagster_run
    steps = [e.step_key for e in context.get_step_failure_events()]
    return {
        "event": f"{run.job_name.split('_', 1)[0]}_failed",  # backup_failed, restore_failed, retention_failed
        "source": run.tags.get(SOURCE_TAG),
        "job": run.job_name,
        "backup_id": run.tags.get("dagster/partition"),
        "run_id": run.run_id,
        "failed_steps": steps,
        "message": one_line(redact(context.failure_event.message or "run failed")),
    }


def post_json(url: str, payload: dict[str, Any], timeout: float = 10.0) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status


@dg.run_failure_sensor(
    name=FAILURE_SENSOR,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=f"POSTs a JSON alert to ${WEBHOOK_ENV} when a backup run fails (skips when unset).",
)
def backup_failure_webhook(context: dg.RunFailureSensorContext) -> dg.SkipReason | None:
    if SOURCE_TAG not in context.dagster_run.tags:
        return dg.SkipReason(f"run {context.dagster_run.run_id} is not a backup run")
    url = setting(WEBHOOK_ENV)
    if not url:
        return dg.SkipReason(f"{WEBHOOK_ENV} is not set: no alert sent")
    status = post_json(url, failure_payload(context))
    context.log.info(f"alert for run {context.dagster_run.run_id} posted (HTTP {status})")
    return None


def build_sensors(sources: Sequence[SourceConfig]) -> list[dg.SensorDefinition]:
    return [*(build_now_sensor(s) for s in sources), backup_failure_webhook]
