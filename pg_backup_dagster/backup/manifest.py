"""manifest.json: the contract between backup, verify, restore and retention. Written last; a backup exists only
when it does. Every file is listed with its tier, identity, size and sha256."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pg_backup_dagster import __version__
from pg_backup_dagster.backup.backup_id import parse_backup_id
from pg_backup_dagster.backup.staging import STATE_DIR, Staging
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.files import sha256_file

FORMAT_VERSION = 1
CHECK_PREFIX = "check_"


def file_identities(staging: Staging) -> dict[str, dict[str, Any]]:
    """Map every relative path the steps produced to its tier and (schema, table) identity."""
    dumps = staging.load("dumps")
    tables = staging.load_or("tables", {"tables": [], "schema_objects": {}, "global_objects": None})
    ids: dict[str, dict[str, Any]] = {
        "roles.sql": {"tier": "roles"}, "RESTORE.md": {"tier": "doc"}, "SHA256SUMS": {"tier": "doc"}
    }
    ids[dumps["full"]["path"]] = {"tier": "full"}
    for item in dumps["schemas"]:
        ids[item["path"]] = {"tier": "schema", "schema": item["schema"]}
    for table in tables["tables"]:
        for kind, rel in table["files"].items():
            ids[rel] = {"tier": "table", "schema": table["schema"], "table": table["table"], "kind": kind}
            if table.get("after"):  # parents a restore must create first (partitions, inheritance)
                ids[rel]["after"] = [list(parent) for parent in table["after"]]
    for schema, rel in tables["schema_objects"].items():
        ids[rel] = {"tier": "schema_objects", "schema": schema}
    for phase in ("global_objects", "global_objects_late"):
        if tables.get(phase):
            ids[tables[phase]] = {"tier": "global_objects", "phase": "late" if "late" in phase else "early"}
    return ids


def staged_files(staging: Staging) -> list[Path]:
    """Every file that will be published: all of staging except internal state and temp files."""
    return sorted(
        p for p in staging.root.rglob("*")
        if p.is_file() and STATE_DIR not in p.relative_to(staging.root).parts and not p.name.startswith(".")
    )


def file_entries(staging: Staging) -> list[dict[str, Any]]:
    identities = file_identities(staging)
    entries = []
    for path in staged_files(staging):
        rel = path.relative_to(staging.root).as_posix()
        if rel not in identities:
            raise BackupError(f"unexpected file {rel} in staging {staging.root}: refusing to publish it")
        entries.append({"path": rel, **identities[rel], "size": path.stat().st_size, "sha256": sha256_file(path)})
    return entries


def check_results(staging: Staging) -> dict[str, Any]:
    """Results the checks left in staging, keyed by check name."""
    results = {}
    for path in sorted((staging.root / STATE_DIR).glob(f"{CHECK_PREFIX}*.json")):
        name = path.stem[len(CHECK_PREFIX):]
        results[name] = staging.load(path.stem)
    return results


def build_manifest(source: str, profile: str, staging: Staging) -> dict[str, Any]:
    """The complete manifest of a staged backup."""
    dumps = staging.load("dumps")
    tables = staging.load_or("tables", {"tables": []})
    checks = check_results(staging)
    split_rows = {(t["schema"], t["table"]): t["rows"] for t in tables["tables"]}
    return {
        "format_version": FORMAT_VERSION,
        "tool": {"name": "pg_backup_dagster", "version": __version__},
        "source": source,
        "profile": profile,
        "backup_id": staging.backup_id,
        "started_at": parse_backup_id(staging.backup_id).isoformat(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "server_major": dumps["server_major"],
        "pg_dump_version": dumps["pg_dump_version"],
        "snapshot": dumps["snapshot"],
        "database_size": dumps.get("database_size"),
        "files": file_entries(staging),
        "tables": [
            {"schema": r["schema"], "table": r["table"], "rows": r["rows"],
             "rows_in_table_files": split_rows.get((r["schema"], r["table"]))}
            for r in dumps["row_counts"]
        ],
        "checks": checks,
        "passed": bool(checks) and all(c.get("passed") for c in checks.values()),
    }
