"""Jobs: `backup_{source}` runs every tier, every check and the manifest of one partition."""

from __future__ import annotations

import dagster as dg

from pg_backup_dagster.config import SourceConfig


def backup_job_name(source: SourceConfig) -> str:
    return f"backup_{source.name}"


def build_backup_job(source: SourceConfig) -> dg.UnresolvedAssetJobDefinition:
    """Partitioned like its assets (Dagster infers it from the selection)."""
    return dg.define_asset_job(
        backup_job_name(source),
        selection=dg.AssetSelection.key_prefixes([source.name]),
        description=f"Back up source '{source.name}': roles, full, schema and table tiers, checks, manifest.",
        tags={"pg_backup/source": source.name},
    )
