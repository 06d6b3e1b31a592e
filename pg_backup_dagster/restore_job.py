"""Job `restore_{source}`: restore a backup from the Dagster UI, so every restore is in the run history.

The target's URL never enters the run config (it would be stored and shown): the config names an
environment variable of the code location that holds it.
"""

from typing import Literal

import dagster as dg
from pydantic import Field

from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.restore import TARGET_ENV, RestoreRequest, parse_table_name, restore_backup


class RestoreConfig(dg.Config):
    """What to restore; `objects` are schema names for tier `schema`, SCHEMA.TABLE for tier `table`."""

    backup_id: str = Field(default="latest", description="Backup id, or 'latest'.")
    tier: Literal["full", "schema", "table", "roles"] = Field(default="full")
    objects: list[str] = Field(default_factory=list, description='Schemas, or SCHEMA.TABLE ("a.b"."c" for dots).')
    target_env: str = Field(default=TARGET_ENV, description="Environment variable holding the target database URL.")
    clean: bool = Field(default=False, description="Drop objects before recreating them (full and schema tiers).")
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
        )


def restore_job_name(source: SourceConfig) -> str:
    return f"restore_{source.name}"


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
        tags={"pg_backup/source": source.name},
        description=f"Restore a backup of source '{source.name}' by tier (full, schema, table, roles).",
    )
    def restore_job() -> None:
        restore_op()

    return restore_job
