"""Turn what a step measured into Dagster metadata: sizes, durations, throughput, per-schema tables."""

from __future__ import annotations

from collections import defaultdict

import dagster as dg

from pg_backup_dagster.backup.publish import Published
from pg_backup_dagster.backup.staging import Staging
from pg_backup_dagster.backup.state import DumpedFile, DumpsState, TablesState
from pg_backup_dagster.files import human_bytes, throughput


def roles_metadata(staging: Staging, dumped: DumpedFile) -> dict:
    return {
        "path": dg.MetadataValue.path(str(staging.roles_file)),
        "size_bytes": dumped.size,
        "duration_s": round(dumped.seconds, 3),
    }


def dump_metadata(result: DumpsState) -> tuple[dict, dict]:
    """Metadata for the full dump and the schema dumps of one snapshot."""
    full = result.full
    tables_per_schema: dict[str, int] = defaultdict(int)
    rows_per_schema: dict[str, int] = defaultdict(int)
    for item in result.row_counts:
        tables_per_schema[item.schema] += 1
        rows_per_schema[item.schema] += item.rows
    full_meta = {
        "file": full.path,
        "size_bytes": full.size,
        "size": human_bytes(full.size),
        "duration_s": round(full.seconds, 3),
        "throughput_mib_s": throughput(full.size, full.seconds),
        "database_size_bytes": result.database_size,
        "server_major": result.server_major,
        "pg_dump_version": result.pg_dump_version,
        "snapshot": result.snapshot,
        "schemas": len(result.schemas),
        "tables": len(result.row_counts),
        "rows": sum(rows_per_schema.values()),
    }
    records = [
        dg.TableRecord({"schema": s.schema, "tables": tables_per_schema.get(s.schema or "", 0),
                        "rows": rows_per_schema.get(s.schema or "", 0), "bytes": s.size,
                        "duration_s": round(s.seconds, 3)})
        for s in result.schemas
    ]
    schema_meta = {
        "schemas": len(result.schemas),
        "size_bytes": sum(s.size for s in result.schemas),
        "per_schema": dg.MetadataValue.table(
            records,
            schema=dg.TableSchema(columns=[
                dg.TableColumn("schema", "string"), dg.TableColumn("tables", "int"), dg.TableColumn("rows", "int"),
                dg.TableColumn("bytes", "int"), dg.TableColumn("duration_s", "float"),
            ]),
        ),
        "duration_s": round(result.seconds, 3),
    }
    return full_meta, schema_meta


def table_tier_metadata(tier: TablesState, dumps: DumpsState) -> dict:
    """Tables counted as everywhere else: those holding rows, and the partitioned parents apart."""
    holding_rows = {r.key for r in dumps.row_counts}
    parents = sum((t.schema, t.table) not in holding_rows for t in tier.tables)
    return {
        "tables": len(tier.tables) - parents,
        "partitioned_parents": parents,
        "files": tier.files,
        "size_bytes": tier.size,
        "rows": sum(t.rows for t in tier.tables),
        "duration_s": round(tier.seconds, 3),
    }


def published_metadata(published: Published) -> dict:
    """What the manifest step shows: where the backup went, its sizes per tier, throughput, check durations."""
    manifest = published.manifest
    totals = published.totals_by_tier()
    total = sum(totals.values())
    seconds = published.duration_s()
    return {
        "location": dg.MetadataValue.url(published.location) if "://" in published.location
        else dg.MetadataValue.path(published.location),
        "database_size_bytes": manifest.database_size or 0,
        "files": len(manifest.files),
        "files_stored_early": published.stored_early,
        "schemas": len(manifest.entries("schema")),
        "tables": len(manifest.tables),
        "partitioned_parents": len(manifest.partitioned_parents()),
        "total_bytes": total,
        **{f"bytes_{tier}": size for tier, size in totals.items()},
        "duration_s": round(seconds, 1),
        "throughput_mib_s": throughput(total, seconds),
        **{f"check_{name}_s": check.seconds for name, check in manifest.checks.items()},
        "summary": dg.MetadataValue.md(published.summary_markdown()),
    }


def row_counts_table(rows: list[dict]) -> dg.TableMetadataValue:
    """Per-table expected vs restored counts and the content comparison, shown in a check's metadata."""
    return dg.MetadataValue.table(
        [dg.TableRecord({"schema": r["schema"], "table": r["table"], "expected": r["expected"],
                         "restored": r["restored"], "content": r.get("content", "")}) for r in rows],
        schema=dg.TableSchema(columns=[
            dg.TableColumn("schema", "string"), dg.TableColumn("table", "string"),
            dg.TableColumn("expected", "int"), dg.TableColumn("restored", "int"),
            dg.TableColumn("content", "string"),
        ]),
    )
