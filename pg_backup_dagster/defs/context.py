"""What every backup step needs from its Dagster context: the validated backup id, resources, staging."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from pg_backup_dagster.backup.backup_id import validate_backup_id
from pg_backup_dagster.backup.staging import Staging
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.constants import postgres_key, target_key
from pg_backup_dagster.defs.resources import BackupTargetResource, PostgresResource
from pg_backup_dagster.storage import BackupRepository


@dataclass
class StepContext:
    """The pieces of one backup step, resolved once per step."""

    backup_id: str
    pg: PostgresResource
    storage: BackupRepository
    staging: Staging


def step_context(
    context: dg.OpExecutionContext | dg.AssetCheckExecutionContext, source: SourceConfig
) -> StepContext:
    """Validate the partition key before any work and locate this backup's staging folder."""
    op_context = getattr(context, "op_execution_context", context)
    backup_id = validate_backup_id(op_context.partition_key)
    pg: PostgresResource = getattr(context.resources, postgres_key(source))
    target: BackupTargetResource = getattr(context.resources, target_key(source))
    storage = target.open()
    staging_root = storage.staging_dir(source.name, backup_id)
    staging_root.mkdir(parents=True, exist_ok=True)
    return StepContext(backup_id, pg, storage, Staging(staging_root, backup_id))
