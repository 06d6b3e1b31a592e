"""What one backup step works with: its backup id, the source database, the target storage and staging."""

from __future__ import annotations

from dataclasses import dataclass

from pg_backup_dagster.backup.staging import Staging
from pg_backup_dagster.pg.source import SourceDatabase
from pg_backup_dagster.storage import BackupRepository


@dataclass
class StepContext:
    """The pieces of one backup step, resolved once per step."""

    backup_id: str
    pg: SourceDatabase
    storage: BackupRepository
    staging: Staging
