"""Turn what a step measured into Dagster metadata: sizes, durations, throughput, per-schema tables."""

from __future__ import annotations

from collections import defaultdict

import dagster as dg

from pg_backup_dagster.backup.dumps import DumpedFile
from pg_backup_dagster.backup.staging import Staging
from pg_backup_dagster.files import human_bytes


def throughput(size: int, seconds: float) -> float:
    """MiB/s, rounded; 0 for instant steps."""
    return round(size / (1 << 20) / seconds, 2) if seconds > 0 else 0.0


def roles_metadata(staging: Staging, dumped: DumpedFile) -> dict:
    return {
        "path": dg.MetadataValue.path(str(staging.roles_file)),
        "size_bytes": dumped.size,
        "duration_s": round(dumped.seconds, 3),
    }


def dump_metadata(result: dict) -> tuple[dict, dict]:
    """Metadata for the full dump and the schema dumps of one snapshot."""
    full = result["full"]
    tables_per_schema: dict[str, int] = defaultdict(int)
    rows_per_schema: dict[str, int] = defaultdict(int)
    for item in result["row_counts"]:
        tables_per_schema[item["schema"]] += 1
        rows_per_schema[item["schema"]] += item["rows"]
    full_meta = {
        "file": full["path"],
        "size_bytes": full["size"],
        "size": human_bytes(full["size"]),
        "duration_s": round(full["seconds"], 3),
        "throughput_mib_s": throughput(full["size"], full["seconds"]),
        "database_size_bytes": result["database_size"],
        "server_major": result["server_major"],
        "pg_dump_version": result["pg_dump_version"],
        "snapshot": result["snapshot"],
        "schemas": len(result["schemas"]),
        "tables": len(result["row_counts"]),
        "rows": sum(rows_per_schema.values()),
    }
    records = [
        dg.TableRecord({"schema": s["schema"], "tables": tables_per_schema.get(s["schema"], 0),
                        "rows": rows_per_schema.get(s["schema"], 0), "bytes": s["size"],
                        "duration_s": round(s["seconds"], 3)})
        for s in result["schemas"]
    ]
    schema_meta = {
        "schemas": len(result["schemas"]),
        "size_bytes": sum(s["size"] for s in result["schemas"]),
        "per_schema": dg.MetadataValue.table(
            records,
            schema=dg.TableSchema(columns=[
                dg.TableColumn("schema", "string"), dg.TableColumn("tables", "int"), dg.TableColumn("rows", "int"),
                dg.TableColumn("bytes", "int"), dg.TableColumn("duration_s", "float"),
            ]),
        ),
        "duration_s": round(result["seconds"], 3),
    }
    return full_meta, schema_meta


def table_tier_metadata(tier: dict) -> dict:
    return {
        "tables": len(tier["tables"]),
        "files": tier["files"],
        "size_bytes": tier["size"],
        "rows": sum(t["rows"] for t in tier["tables"]),
        "duration_s": round(tier["seconds"], 3),
    }


def row_counts_table(rows: list[dict]) -> dg.TableMetadataValue:
    """Per-table expected vs restored counts, shown in a check's metadata."""
    return dg.MetadataValue.table(
        [dg.TableRecord({"schema": r["schema"], "table": r["table"], "expected": r["expected"],
                         "restored": r["restored"]}) for r in rows],
        schema=dg.TableSchema(columns=[
            dg.TableColumn("schema", "string"), dg.TableColumn("table", "string"),
            dg.TableColumn("expected", "int"), dg.TableColumn("restored", "int"),
        ]),
    )
