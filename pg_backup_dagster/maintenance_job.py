"""Job `retention_{source}`: apply the source's retention policy from Dagster (UI, schedule or CLI launch).

Unpartitioned on purpose: it acts on every backup of the source at once. It opens the same target resource
the backup job uses and deletes partition keys on the run's own instance.
"""

import dagster as dg

from pg_backup_dagster.assets.context import target_key
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.resources import BackupTargetResource
from pg_backup_dagster.retention_run import run_retention


def retention_job_name(source: SourceConfig) -> str:
    return f"retention_{source.name}"


def build_retention_job(source: SourceConfig) -> dg.JobDefinition:
    """One op that plans, deletes, and reports what went and why."""

    @dg.op(
        name=f"{source.name}__retention",
        required_resource_keys={target_key(source)},
        out=dg.Out(dg.Nothing),
        description=f"Delete backups of '{source.name}' that its retention policy no longer keeps.",
    )
    def apply_retention(context: dg.OpExecutionContext):
        target: BackupTargetResource = getattr(context.resources, target_key(source))
        result = run_retention(source, target.open(), context.instance, apply=True)
        for line in result.lines(applied=True):
            context.log.info(line)
        yield dg.Output(
            None,
            metadata={
                "location": result.location,
                "deleted": len(result.deleted),
                "kept": len(result.plan.keep),
                "plan": dg.MetadataValue.md(
                    "\n".join(f"- `{line}`" for line in result.lines(applied=True)) or "no backups"
                ),
            },
        )

    @dg.job(
        name=retention_job_name(source),
        description=f"Apply the retention policy of source '{source.name}' (deletes backups and their partitions).",
        tags={"pg_backup/source": source.name},
    )
    def retention_job() -> None:
        apply_retention()

    return retention_job
