"""Tiers derived from the full dump: the per-table tier (catalog, split, restore, compatibility)."""

from pg_backup_dagster.tiers.catalog import TableCatalog, TableInfo, fetch_table_catalog
from pg_backup_dagster.tiers.live_split import split_archive
from pg_backup_dagster.tiers.sql_compat import compatible_lines
from pg_backup_dagster.tiers.table_restore import restore_tables
from pg_backup_dagster.tiers.table_split import SplitResult, TableDump

__all__ = [
    "SplitResult",
    "TableCatalog",
    "TableDump",
    "TableInfo",
    "compatible_lines",
    "fetch_table_catalog",
    "restore_tables",
    "split_archive",
]
