"""One DynamicPartitionsDefinition per source: every backup is a partition keyed by its backup id."""

from __future__ import annotations

import dagster as dg

from pg_backup_dagster.config import SourceConfig


def backups_partitions_def(source: SourceConfig) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=source.partitions_name)
