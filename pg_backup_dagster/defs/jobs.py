"""The jobs of one source: `backup_{source}` (one partition: every tier, check and the manifest),
`retention_{source}` (apply the retention policy) and `restore_{source}` (restore from the UI).

Retention is unpartitioned on purpose: it acts on every backup of the source at once and deletes partition keys
on the run's own instance. The restore target's URL never enters the run config (it would be stored and
shown): the config names an environment variable of the code location that holds it.
"""

from typing import Literal

import dagster as dg
from pydantic import Field

from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.constants import (
    MAX_RUNTIME_TAG,
    SOURCE_TAG,
    backup_job_name,
    restore_job_name,
    retention_job_name,
    target_key,
)
from pg_backup_dagster.defs.resources import BackupTargetResource
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.restore.run import TARGET_ENV, RestoreRequest, parse_table_name, restore_backup
from pg_backup_dagster.retention.apply import run_retention
from pg_backup_dagster.tiers.registry import TIER_NAMES


def backup_job_tags(source: SourceConfig) -> dict[str, str]:
    """The backup job's tags: its source, and its run time limit (a stuck run fails, alerts, frees the pool)."""
    tags = {SOURCE_TAG: source.name}
    if source.max_runtime_minutes is not None:
        tags[MAX_RUNTIME_TAG] = str(int(source.max_runtime_minutes * 60))
    return tags


def build_backup_job(source: SourceConfig):
    """Partitioned like its assets (Dagster infers it from the selection)."""
    return dg.define_asset_job(
        backup_job_name(source),
        selection=dg.AssetSelection.key_prefixes([source.name]),
        description=f"Back up source '{source.name}': roles, full, schema and table tiers, checks, manifest.",
        tags=backup_job_tags(source),
    )



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
        tags={SOURCE_TAG: source.name},
    )
    def retention_job() -> None:
        apply_retention()

    return retention_job


class RestoreConfig(dg.Config):
    """What to restore; `objects` are schema names for tier `schema`, SCHEMA.TABLE for tier `table`."""

    backup_id: str = Field(default="latest", description="Backup id, or 'latest'.")
    tier: Literal[TIER_NAMES] = Field(default="full")  # type: ignore[valid-type]  # the registry names them
    objects: list[str] = Field(default_factory=list, description='Schemas, or SCHEMA.TABLE ("a.b"."c" for dots).')
    target_env: str = Field(default=TARGET_ENV, description="Environment variable holding the target database URL.")
    clean: bool = Field(
        default=False,
        description="Full tier: restore into a new database and switch it in once checked; schema tier: drop and "
        "recreate in one transaction.",
    )
    old_database: Literal["keep", "drop"] = Field(
        default="keep", description="With clean (full tier): keep the replaced database as <name>_before_<id>, or drop it."
    )
    terminate_sessions: bool = Field(
        default=False, description="With clean (full tier): terminate other sessions on the target before the switch."
    )
    jobs: int = Field(default=2, description="Parallel pg_restore jobs.")
    create_db: bool = Field(default=False, description="Create the target database first.")
    force: bool = Field(default=False, description="Allow restoring into the source database itself.")

    def request(self, target_dsn: str) -> RestoreRequest:
        if self.tier in ("schema", "table") and not self.objects:
            raise BackupError(f"tier '{self.tier}' needs at least one name in objects")
        if self.tier in ("full", "roles") and self.objects:
            raise BackupError(f"tier '{self.tier}' takes no objects")
        return RestoreRequest(
            backup_id=self.backup_id,
            target_dsn=target_dsn,
            full=self.tier == "full",
            roles=self.tier == "roles",
            schemas=tuple(self.objects) if self.tier == "schema" else (),
            tables=tuple(parse_table_name(o) for o in self.objects) if self.tier == "table" else (),
            clean=self.clean,
            jobs=self.jobs,
            create_db=self.create_db,
            force=self.force,
            old_database=self.old_database,
            terminate_sessions=self.terminate_sessions,
        )



def build_restore_job(source: SourceConfig) -> dg.JobDefinition:
    """One op that restores and reports what it did."""

    @dg.op(
        name=f"{source.name}__restore",
        out=dg.Out(dg.Nothing),
        description=f"Restore a backup of '{source.name}' (one tier) into the database named by target_env.",
    )
    def restore_op(context: dg.OpExecutionContext, config: RestoreConfig):
        target = dg.EnvVar(config.target_env).get_value()
        if not target:
            raise BackupError(f"environment variable {config.target_env} (the restore target URL) is not set")
        result = restore_backup(source, config.request(target), log=context.log.info)
        for note in result.notes:
            context.log.info(note)
        yield dg.Output(
            None,
            metadata={
                "backup_id": result.backup_id,
                "tier": config.tier,
                "target": result.target,
                "duration_s": round(result.seconds, 3),
                "steps": dg.MetadataValue.md("\n".join(f"- {s}" for s in result.steps) or "nothing"),
                "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in result.notes) or "none"),
            },
        )

    @dg.job(
        name=restore_job_name(source),
        tags={SOURCE_TAG: source.name},
        description=f"Restore a backup of source '{source.name}' by tier (full, schema, table, roles).",
    )
    def restore_job() -> None:
        restore_op()

    return restore_job
