"""The per-table tier of one backup: split from the full archive, no extra load on the source."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict

from pg_backup_dagster.pgtools import PgTools
from pg_backup_dagster.staging import Staging
from pg_backup_dagster.tiers.catalog import TableCatalog
from pg_backup_dagster.tiers.table_split import split_archive


def clear_table_outputs(staging: Staging) -> None:
    """Forget table files of an earlier try of this backup id so nothing stale is published."""
    for tables_dir in staging.root.glob("*/tables"):
        shutil.rmtree(tables_dir)
    for objects in [*staging.root.glob("*/objects*.sql"), *staging.root.glob("global_objects*.sql")]:
        objects.unlink()


def split_tables(tools: PgTools, staging: Staging) -> dict:
    """Split the full archive into per-table files using the catalog read in the dump's snapshot."""
    dumps = staging.load("dumps")
    catalog = TableCatalog.from_json(dumps["catalog"])
    clear_table_outputs(staging)
    started = time.monotonic()
    result = split_archive(staging.full_dump, staging.root, catalog, pg_restore=tools.path("pg_restore"))
    tables = [asdict(t) for t in result.tables]
    globals_ = [p for p in (result.global_objects, result.global_objects_late) if p]
    paths = [p for t in result.tables for p in t.files.values()] + globals_
    paths += list(result.schema_objects.values())
    return {
        "tables": tables,
        "schema_objects": result.schema_objects,
        "global_objects": result.global_objects,
        "global_objects_late": result.global_objects_late,
        "files": len(paths),
        "size": sum((staging.root / p).stat().st_size for p in paths),
        "seconds": time.monotonic() - started,
    }
